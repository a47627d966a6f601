"""DP-SGD step cost of DeepFM as the vocabulary grows: non-private vs Opacus vs sparse.

One optimizer step (forward, backward, clipping, noise, update) of DeepFM (embedding
16, MLP 128-64, batch 256) on a synthetic schema whose shared table has V rows in
total, V in {10^3, 10^5, 10^6}: a user id (V/4 rows), one huge item id, a
multi-valued tag field and two small context fields. Methods, all with SGD (lr 0.05),
z = 1, C = 1:

``plain``               non-private, the model as built (dense ``V × d`` embedding grads)
``plain-sparse``        non-private with ``nn.Embedding(sparse=True)`` (the cheapest step)
``opacus-hooks``        Opacus ``grad_sample_mode="hooks"`` (per-example grads, B × V × d)
``opacus-ghost``        Opacus ``grad_sample_mode="ghost"`` (ghost clipping, dense noise)
``sparse-dense-noise``  :class:`secrelay.privacy.dp_embedding.SparseEmbeddingDPSGD`,
                        ``noise="dense"`` (DP-SGD noise on all V rows every step)
``sparse-lazy-noise``   the same with ``noise="lazy"`` (deferred noise; ``extra_info``
                        holds the one-off ``flush()`` time)

Steps cycle over a pool of distinct random batches, so lazy noise has rows to catch
up and every method sees the same data. Hooks mode is skipped where its per-example
embedding gradients (B × Σ V·d float32) exceed half the available memory; the
size is reported instead.

Peak memory: each configuration also runs in a fresh subprocess (this file with
``--memory V METHOD``), which builds the model, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), takes the steps and reports the RSS before the first
step, the peak RSS (``VmHWM``) during the steps minus that, the same after the lazy
flush, and the whole process's peak. torch's CPU allocator returns large blocks to the
OS, so this high-water mark sees every transient tensor (``tracemalloc`` sees none
of them); ``ru_maxrss`` is not used because Linux carries it over ``exec`` from the
parent process.

Run everything in one session and print the table (median and fastest step, ratios
to ``plain`` and ``plain-sparse``, memory)::

    nice python benchmarks/bench_dpsgd.py [--json out.json]
    nice python benchmarks/bench_dpsgd.py --table out.json  # reprint

or through pytest directly::

    nice python -m pytest benchmarks/bench_dpsgd.py --benchmark-only \
        --benchmark-json=out.json

Environment: ``BENCH_DPSGD_THREADS`` (torch threads, default 1: the machine is
shared), ``BENCH_DPSGD_VOCABS`` (comma-separated V, default ``1000,100000,1000000``),
``BENCH_DPSGD_BUDGET_S`` (seconds of timed steps per configuration, default 4; at
least 5 and at most 400 steps).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from secrelay.data.schema import Field, FieldRole, Schema
from secrelay.models import CTRModel, make_model
from secrelay.privacy.dp_embedding import SparseEmbeddingDPSGD

THREADS = int(os.environ.get("BENCH_DPSGD_THREADS", "1"))
VOCABS = tuple(
    int(v) for v in os.environ.get("BENCH_DPSGD_VOCABS", "1000,100000,1000000").split(",")
)
BUDGET_S = float(os.environ.get("BENCH_DPSGD_BUDGET_S", "4"))
METHODS = (
    "plain",
    "plain-sparse",
    "opacus-hooks",
    "opacus-ghost",
    "sparse-dense-noise",
    "sparse-lazy-noise",
)
BATCH = 256
DIM = 16
LR = 0.05
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
POOL = 16  # distinct batches cycled through
MEMORY_STEPS = 4
MAX_ROUNDS = 400
SMALL_FIELDS: tuple[tuple[str, FieldRole, int, int], ...] = (
    ("tags", "item", 21, 3),
    ("hour", "context", 25, 1),
    ("device", "context", 6, 1),
)
GRID = [(v, m) for v in VOCABS for m in METHODS]

torch.set_num_threads(THREADS)


def make_schema(total_vocab: int) -> Schema:
    """User id (V/4 rows), item id (the rest) and small fields: Σ vocab = ``total_vocab``."""
    small = sum(vocab for _, _, vocab, _ in SMALL_FIELDS)
    users = total_vocab // 4
    items = total_vocab - users - small
    if items < 2:
        raise ValueError(f"total_vocab={total_vocab} is too small for the schema")
    fields = [Field("user_id", "user", users), Field("item_id", "item", items)]
    fields += [Field(n, r, v, max_len=k) for n, r, v, k in SMALL_FIELDS]
    return Schema(tuple(fields), user_id_field="user_id", item_id_field="item_id")


def make_batches(schema: Schema, *, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``POOL`` batches of ``BATCH`` uniformly drawn feature values and 25 % clicks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(POOL):
        cols = [
            torch.randint(1, f.vocab_size, (BATCH,), generator=g)
            for f in schema.fields
            for _ in range(f.max_len)
        ]
        y = (torch.rand(BATCH, generator=g) < 0.25).float()
        out.append((torch.stack(cols, dim=1), y))
    return out


def hooks_grad_sample_bytes(model: nn.Module) -> int:
    """Bytes of the per-example embedding gradients hooks mode materialises."""
    rows = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return BATCH * rows * 4


def available_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def _bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")


@dataclass
class Setup:
    """A ready-to-time step and what to clean up."""

    step: Callable[[], None]
    model: CTRModel
    finish: Callable[[], None] | None = None  # e.g. the lazy flush


def build(total_vocab: int, method: str) -> Setup:
    """Model, data and one-step closure for ``method`` (skips infeasible hooks runs)."""
    schema = make_schema(total_vocab)
    model = make_model("deepfm", schema, embedding_dim=DIM, seed=0)
    batches = make_batches(schema)
    counter = iter(range(1 << 62))

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return batches[next(counter) % POOL]

    if method in ("plain", "plain-sparse"):
        if method == "plain-sparse":
            for m in model.modules():
                if isinstance(m, nn.Embedding):
                    m.sparse = True
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)

        def plain_step() -> None:
            x, y = batch()
            optimizer.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()  # type: ignore[no-untyped-call]
            optimizer.step()

        return Setup(plain_step, model)

    if method in ("opacus-hooks", "opacus-ghost"):
        if method == "opacus-hooks":
            need = hooks_grad_sample_bytes(model)
            if need > available_bytes() // 2:
                pytest.skip(
                    f"hooks mode needs {need / 2**30:.1f} GiB of per-example embedding "
                    f"gradients at V={total_vocab}; {available_bytes() / 2**30:.1f} GiB available"
                )
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        x0, y0 = batches[0]
        loader = DataLoader(TensorDataset(x0, y0), batch_size=BATCH)
        common: dict[str, Any] = {
            "module": model,
            "optimizer": torch.optim.SGD(model.parameters(), lr=LR),
            "data_loader": loader,
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "poisson_sampling": False,
            "noise_generator": torch.Generator().manual_seed(1),
        }
        criterion: Callable[..., Any]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine()
            if method == "opacus-ghost":
                module, dp_opt, criterion, _ = engine.make_private(
                    criterion=nn.BCEWithLogitsLoss(), grad_sample_mode="ghost", **common
                )
            else:
                module, dp_opt, _ = engine.make_private(grad_sample_mode="hooks", **common)
                criterion = nn.BCEWithLogitsLoss()

        def opacus_step() -> None:
            x, y = batch()
            dp_opt.zero_grad()
            criterion(module(x), y).backward()
            dp_opt.step()

        return Setup(opacus_step, model)

    if method in ("sparse-dense-noise", "sparse-lazy-noise"):
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        dense = [p for p in model.parameters() if id(p) not in tables]
        trainer = SparseEmbeddingDPSGD(
            model,
            torch.optim.SGD(dense, lr=LR),
            loss_fn=_bce,
            embedding_lr=LR,
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            expected_batch_size=BATCH,
            generator=torch.Generator().manual_seed(1),
            noise="lazy" if method == "sparse-lazy-noise" else "dense",
        )

        def sparse_step() -> None:
            trainer.step(*batch())

        lazy = method == "sparse-lazy-noise"
        return Setup(sparse_step, model, finish=trainer.flush if lazy else None)

    raise ValueError(f"unknown method {method!r}")


# ------------------------------------------------------------------ memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_memory(total_vocab: int, method: str) -> dict[str, float]:
    """Run in a fresh process: RSS before the steps and the peak while taking them.

    ``VmHWM`` is the kernel's peak-RSS mark of this process (a new address space
    after ``exec``, unlike ``ru_maxrss``, which Linux carries over ``exec`` from the
    parent and so would report the pytest process's peak).
    """
    setup = build(total_vocab, method)
    gc.collect()
    setup_peak = _status_kib("VmHWM")
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    for _ in range(MEMORY_STEPS):
        setup.step()
    step_peak = _status_kib("VmHWM")
    if setup.finish is not None:
        setup.finish()
    end_peak = _status_kib("VmHWM")
    return {
        "rss_before_steps_mib": before / 1024,
        "step_peak_over_rss_mib": max(0, step_peak - before) / 1024,
        "flush_peak_over_rss_mib": max(0, end_peak - before) / 1024,
        "process_peak_mib": max(setup_peak, end_peak) / 1024,
        "hwm_reset": float(reset),
    }


def memory_in_subprocess(total_vocab: int, method: str) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory", str(total_vocab), method]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory worker failed: {res.stderr[-2000:]}")
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------ benchmark


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("vocab", "method"), GRID, ids=[f"V{v}-{m}" for v, m in GRID])
def test_dpsgd_step(benchmark: Any, vocab: int, method: str) -> None:
    setup = build(vocab, method)  # skips hooks mode where it cannot fit
    memory = memory_in_subprocess(vocab, method)
    setup.step()  # warm-up (first-call allocations, Opacus hook setup)
    t0 = time.perf_counter()
    setup.step()
    estimate = time.perf_counter() - t0
    rounds = max(5, min(MAX_ROUNDS, round(BUDGET_S / max(estimate, 1e-4))))
    benchmark.pedantic(setup.step, rounds=rounds, iterations=1, warmup_rounds=1)
    flush_s = None
    if setup.finish is not None:
        t0 = time.perf_counter()
        setup.finish()
        flush_s = time.perf_counter() - t0
    for name, p in setup.model.named_parameters():
        assert torch.isfinite(p).all(), name
    benchmark.extra_info.update(
        vocab=vocab,
        method=method,
        batch=BATCH,
        embedding_dim=DIM,
        threads=THREADS,
        hooks_grad_sample_gib=hooks_grad_sample_bytes(setup.model) / 2**30,
        flush_s=flush_s,
        **memory,
    )


# ------------------------------------------------------------------ table


def table(results: dict[str, Any]) -> str:
    """Markdown table from a pytest-benchmark JSON of this file.

    Ratios are given for the median step and for the fastest step: on a shared
    machine other jobs only ever add time, so the minimum is the least disturbed
    estimate of a step's own cost and the median is the typical one.
    """
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for b in results["benchmarks"]:
        info = b["extra_info"]
        rows[(info["vocab"], info["method"])] = {
            "median": b["stats"]["median"],
            "min": b["stats"]["min"],
            "rounds": b["stats"]["rounds"],
            **info,
        }
    lines = [
        "| V | method | step ms median (min) | × plain median (min) "
        "| × plain-sparse median (min) | RSS before steps MiB | step peak over it MiB "
        "| process peak MiB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(r: dict[str, Any], base: dict[str, Any] | None) -> str:
        if base is None:
            return "–"
        return f"{r['median'] / base['median']:.2f} ({r['min'] / base['min']:.2f})"

    for vocab in sorted({v for v, _ in rows}):
        plain = rows.get((vocab, "plain"))
        sparse = rows.get((vocab, "plain-sparse"))
        for method in METHODS:
            r = rows.get((vocab, method))
            if r is None:
                note = "not run"
                if method == "opacus-hooks" and plain is not None:
                    note = (
                        f"skipped: needs {plain['hooks_grad_sample_gib']:.1f} GiB of per-example "
                        "embedding gradients"
                    )
                lines.append(f"| {vocab:,} | {method} | – | – | – | – | – | – | {note} |")
                continue
            note = f"{r['rounds']} steps timed"
            if r.get("flush_s") is not None:
                note += (
                    f"; one-off flush {r['flush_s'] * 1e3:.0f} ms, peak over RSS with flush "
                    f"{r['flush_peak_over_rss_mib']:.0f} MiB"
                )
            lines.append(
                f"| {vocab:,} | {method} | {r['median'] * 1e3:.2f} ({r['min'] * 1e3:.2f}) "
                f"| {ratio(r, plain)} | {ratio(r, sparse)} "
                f"| {r['rss_before_steps_mib']:.0f} | {r['step_peak_over_rss_mib']:.0f} "
                f"| {r['process_peak_mib']:.0f} | {note} |"
            )
    machine = results.get("machine_info", {})
    lines.append("")
    lines.append(
        f"threads={next(iter(rows.values()))['threads']}, python {machine.get('python_version')}, "
        f"{machine.get('cpu', {}).get('brand_raw', 'cpu ?')}, {results.get('datetime', '')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--memory", nargs=2, metavar=("V", "METHOD"), help="memory worker")
    parser.add_argument("--table", metavar="JSON", help="print the table of an earlier run")
    parser.add_argument("--json", metavar="JSON", help="where to keep this run's JSON")
    args = parser.parse_args(argv)
    if args.memory:
        print(json.dumps(measure_memory(int(args.memory[0]), args.memory[1])))
        return 0
    if args.table:
        print(table(json.loads(Path(args.table).read_text(encoding="utf-8"))))
        return 0
    path = Path(args.json) if args.json else Path(tempfile.mkdtemp()) / "bench_dpsgd.json"
    code = pytest.main(
        [str(Path(__file__).resolve()), "--benchmark-only", f"--benchmark-json={path}", "-q"]
    )
    if path.exists():
        print(table(json.loads(path.read_text(encoding="utf-8"))))
        print(f"\nraw results: {path}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
