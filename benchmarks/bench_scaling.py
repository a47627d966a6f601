"""Scaling of the federated runtime (issue 18): server memory and round time.

Each measurement runs in a fresh subprocess, so its peak RSS (``ru_maxrss``, the
server process only: process-pool workers and Ray actors are other processes) is
its own. Every part takes at most a few minutes on a 2-core machine; the numbers in
docs/results.md ("Scaling") were measured on 2 cores shared with other jobs.

    python benchmarks/bench_scaling.py memory     # server RSS vs population: eager vs lazy data
    python benchmarks/bench_scaling.py rounds     # round time, server RSS vs devices/round x model
    python benchmarks/bench_scaling.py secagg     # SecAgg+ server alone, in n and k (d fixed)
    python benchmarks/bench_scaling.py dp         # user-level DP sums vs plain sums
    python benchmarks/bench_scaling.py run        # 10,000 devices, 100/round, 20 rounds: Ray vs pool

Add ``--json FILE`` to keep the raw rows. Growth rates are least-squares slopes in
log-log space (time ∝ x^b).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --- helpers -------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares exponent b of y ∝ x^b."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def child(which: str, /, **params: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its JSON row."""
    cmd = [sys.executable, os.path.abspath(__file__), "_child", which, json.dumps(params)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{which} {params} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _loop(
    population: int, per_round: int, hidden: list[int], *, lazy: bool, executor: Any
) -> tuple[Any, Any]:
    from secrelay.data.population import SyntheticPopulation
    from secrelay.federated.client import DeviceData, ModelSpec, PlainTrainer
    from secrelay.federated.lazy import PopulationSource, lazy_devices
    from secrelay.federated.loop import FederatedLoop, RoundConfig
    from secrelay.federated.strategies import FedAvg
    from secrelay.federated.transcript import Channel, Transcript
    from secrelay.training import TrainConfig

    pop = SyntheticPopulation(n_devices=population, samples_per_device=40, seed=0)
    spec = ModelSpec("dnn", pop.schema, (("embedding_dim", 8), ("hidden_units", tuple(hidden))))
    if lazy:
        devices = lazy_devices(PopulationSource(pop), pop.device_ids)
    else:  # what a run does today: every device's rows built up front in the server
        devices = {u: DeviceData(u, *pop.device(u)) for u in pop.device_ids}
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = strategy.client_program(
        spec, PlainTrainer(TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam"))
    )
    loop = FederatedLoop(
        strategy,
        program,
        devices,
        spec,
        config=RoundConfig(clients_per_round=per_round, min_survivors=1),
        executor=executor,
        # As a run without `record_transcript`: message metadata only, no payloads.
        channel=Channel(Transcript(keep_payloads=False)),
    )
    return loop, spec


def _executor(kind: str, workers: int = 2) -> Any:
    from secrelay.federated.executor import make_executor

    return make_executor(kind, workers)


# --- children ------------------------------------------------------------------------
def child_memory(population: int, lazy: bool, rounds: int = 3) -> dict[str, Any]:
    import torch

    import secrelay.federated.lazy
    import secrelay.federated.loop
    import secrelay.training  # noqa: F401  (imports outside the measured growth)

    torch.set_num_threads(1)
    warm, _ = _loop(10, 2, [32, 16], lazy=True, executor=_executor("sequential"))
    warm.run_round(1, evaluate=False)  # torch's allocator, the model, the trainer
    warm.close()
    base = current_rss_mb()
    t0 = time.perf_counter()
    loop, _ = _loop(population, 100, [32, 16], lazy=lazy, executor=_executor("sequential"))
    built = time.perf_counter() - t0
    after_setup = current_rss_mb()
    t0 = time.perf_counter()
    for t in range(1, rounds + 1):
        loop.run_round(t, evaluate=False)
    per_round = (time.perf_counter() - t0) / rounds
    loop.close()
    return {
        "population": population,
        "data": "lazy" if lazy else "eager",
        "setup_s": built,
        "round_s": per_round,
        "rss_after_setup_mb": after_setup - base,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base,
    }


def child_rounds(per_round: int, hidden: list[int], rounds: int = 2) -> dict[str, Any]:
    loop, spec = _loop(10_000, per_round, hidden, lazy=True, executor=_executor("process"))
    loop.start()
    loop.run_round(1, evaluate=False)  # warm-up: worker start, imports
    t0 = time.perf_counter()
    for t in range(2, rounds + 2):
        loop.run_round(t, evaluate=False)
    per = (time.perf_counter() - t0) / rounds
    loop.close()
    return {
        "per_round": per_round,
        "hidden": hidden,
        "parameters": spec.num_parameters(),
        "round_s": per,
        "devices_per_s": per_round / per,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_secagg(n: int, k: int | None, d: int) -> dict[str, Any]:
    from protocols.secagg import SecAggConfig, simulate_secure_sum

    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, d) for _ in range(n)]
    cfg = SecAggConfig(n_clients=n, vector_length=d, neighbours=k)
    res = simulate_secure_sum(xs, config=cfg)
    return {
        "n": n,
        "k": cfg.k,
        "d": d,
        "server_s": res.server_seconds,
        "client_s_mean": float(np.mean(list(res.client_seconds.values()))),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_dp(n: int, d: int, secure: bool, dp: bool, repeats: int = 3) -> dict[str, Any]:
    from secrelay.federated.aggregation import PlaintextSum
    from secrelay.federated.secure import SecureSum
    from secrelay.federated.transcript import Channel
    from secrelay.privacy.distributed_dp import DistributedGaussianSum
    from secrelay.privacy.user_dp import CentralGaussianSum, fedavg_spec

    rng = np.random.default_rng(0)
    contributions = {
        i: {"delta": rng.normal(0, 0.1, d), "weight": np.ones(1)} for i in range(1, n + 1)
    }
    spec = fedavg_spec(1.0, d)
    proto: Any
    if secure and dp:
        proto = DistributedGaussianSum(
            SecureSum(), noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, spec=spec
        )
    elif secure:
        proto = SecureSum()
    elif dp:
        proto = CentralGaussianSum(
            PlaintextSum(),
            noise_multiplier=1.0,
            clipping_norm=1.0,
            delta=1e-5,
            sampling="fixed",
            population=list(contributions),
            spec=spec,
        )
    else:
        proto = PlaintextSum()
    times = []
    for r in range(1, repeats + 1):
        t0 = time.perf_counter()
        proto.aggregate(r, contributions, Channel())
        times.append(time.perf_counter() - t0)
    return {
        "n": n,
        "d": d,
        "sum": ("secagg" if secure else "plain") + ("+dp" if dp else ""),
        "seconds": float(np.median(times)),
    }


def child_run(kind: str, rounds: int, population: int, per_round: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    loop, _ = _loop(population, per_round, [32, 16], lazy=True, executor=_executor(kind))
    loop.start()
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    for t in range(1, rounds + 1):
        loop.run_round(t, evaluate=False)
    run_s = time.perf_counter() - t1
    loop.close()
    return {
        "executor": kind,
        "population": population,
        "per_round": per_round,
        "rounds": rounds,
        "start_s": started,
        "run_s": run_s,
        "total_s": time.perf_counter() - t0,
        "devices_per_s": rounds * per_round / run_s,
        "devices_per_s_incl_start": rounds * per_round / (time.perf_counter() - t0),
        "peak_rss_mb": peak_rss_mb(),
    }


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "memory": child_memory,
    "rounds": child_rounds,
    "secagg": child_secagg,
    "dp": child_dp,
    "run": child_run,
}


# --- parts ---------------------------------------------------------------------------
def part_memory() -> list[dict[str, Any]]:
    rows = []
    for pop in (1_000, 10_000, 100_000):
        for lazy in (False, True):
            rows.append(child("memory", population=pop, lazy=lazy))
            r = rows[-1]
            print(
                f"| {pop:,} | {r['data']} | {r['rss_after_setup_mb']:.1f} | "
                f"{r['peak_rss_mb']:.0f} | {r['setup_s']:.1f} | {r['round_s']:.2f} |",
                flush=True,
            )
    for mode in ("eager", "lazy"):
        sel = [r for r in rows if r["data"] == mode]
        b = slope([r["population"] for r in sel], [max(r["rss_after_setup_mb"], 0.1) for r in sel])
        print(f"{mode}: data-held RSS ∝ population^{b:.2f}")
    return rows


def part_rounds() -> list[dict[str, Any]]:
    rows = []
    for hidden in ([16], [128, 64], [512, 256]):
        for n in (10, 100, 1000):
            r = child("rounds", per_round=n, hidden=hidden)
            rows.append(r)
            print(
                f"| {r['parameters']:,} | {n} | {r['round_s']:.2f} | {r['devices_per_s']:.0f} | "
                f"{r['peak_rss_mb']:.0f} |",
                flush=True,
            )
        sel = [r for r in rows if r["hidden"] == hidden]
        print(
            f"  {sel[0]['parameters']:,} parameters: round time ∝ n^"
            f"{slope([r['per_round'] for r in sel], [r['round_s'] for r in sel]):.2f}, "
            f"server RSS ∝ n^{slope([r['per_round'] for r in sel], [r['peak_rss_mb'] for r in sel]):.2f}"
        )
    for n in (10, 100, 1000):
        sel = [r for r in rows if r["per_round"] == n]
        print(
            f"  n = {n}: round time ∝ parameters^"
            f"{slope([r['parameters'] for r in sel], [r['round_s'] for r in sel]):.2f}"
        )
    return rows


def part_secagg(d: int = 10_000) -> list[dict[str, Any]]:
    rows = []
    for n in (25, 50, 100, 200):
        rows.append(child("secagg", n=n, k=None, d=d))
    for k in (8, 16, 32, 64):
        rows.append(child("secagg", n=100, k=k, d=d))
    for r in rows:
        print(
            f"| {r['n']} | {r['k']} | {r['server_s'] * 1e3:.0f} | {r['client_s_mean'] * 1e3:.1f} |"
        )
    default = rows[:4]
    fixed_n = rows[4:]
    print(
        f"server ∝ n^{slope([r['n'] for r in default], [r['server_s'] for r in default]):.2f} "
        f"(default k = O(log n)); at n = 100: server ∝ k^"
        f"{slope([r['k'] for r in fixed_n], [r['server_s'] for r in fixed_n]):.2f}"
    )
    return rows


def part_dp(d: int = 10_000) -> list[dict[str, Any]]:
    rows = []
    for n in (10, 50, 100):
        for secure in (False, True):
            for dp in (False, True):
                rows.append(child("dp", n=n, d=d, secure=secure, dp=dp))
    for n in (10, 50, 100):
        sel = {r["sum"]: r["seconds"] for r in rows if r["n"] == n}
        print(
            f"| {n} | {sel['plain'] * 1e3:.1f} | {sel['plain+dp'] * 1e3:.1f} | "
            f"{sel['secagg'] * 1e3:.0f} | {sel['secagg+dp'] * 1e3:.0f} | "
            f"{(sel['secagg+dp'] / sel['secagg'] - 1) * 100:+.0f} % |"
        )
    return rows


def part_run(rounds: int = 20) -> list[dict[str, Any]]:
    rows = []
    for kind in ("process", "ray"):
        r = child("run", kind=kind, rounds=rounds, population=10_000, per_round=100)
        rows.append(r)
        print(
            f"| {kind} | {r['start_s']:.1f} | {r['run_s']:.1f} | {r['devices_per_s']:.0f} | "
            f"{r['devices_per_s_incl_start']:.0f} | {r['peak_rss_mb']:.0f} |",
            flush=True,
        )
    return rows


PARTS = {
    "memory": part_memory,
    "rounds": part_rounds,
    "secagg": part_secagg,
    "dp": part_dp,
    "run": part_run,
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_child":
        params = json.loads(argv[2])
        print(json.dumps(CHILDREN[argv[1]](**params)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--json", default=None, help="write the raw rows here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = PARTS[args.part]()
    print(f"({args.part}: {time.perf_counter() - t0:.0f} s, {os.cpu_count()} CPUs)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)
    assert all(math.isfinite(float(v)) for r in rows for v in r.values() if isinstance(v, float))


if __name__ == "__main__":
    main()
