"""Hyperparameter sweeps on the validation split (issue 17's tuning protocol).

Every cell runs the base config with ``[split] evaluate_on = "validation"`` (the test
rows never enter the run), one cell per combination of the grid's values, for each
seed; the table gives the last round's validation gAUC / AUC / logloss as mean ± std
over seeds. Choose on this table, then report the chosen cell on the test split
(``--test``) with at least three seeds.

    python benchmarks/sweep.py examples/relayrec_ml100k.toml \\
        --set method.options.num_categories=2,8,18 --set method.options.num_clusters=2,4 \\
        --seeds 0 --rounds 20 --out runs/sweep-relayrec

Cells already finished in ``--out`` are read back, not rerun; a cell stopped midway
(killed sweep, a process-pool worker killed) continues from its last checkpoint, and a
cell whose worker pool broke is resumed once more before the sweep gives up.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import statistics
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from secrelay.config import RunConfig, load_run_config, read_toml
from secrelay.experiment import resume, run


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as adagrad


def _grid(sets: list[str]) -> list[tuple[str, list[Any]]]:
    out = []
    for s in sets:
        key, _, values = s.partition("=")
        if not values or key.count(".") < 1:
            raise SystemExit(f"--set {s!r}: expected section.key=v1,v2 (e.g. federated.rounds=5)")
        out.append((key, [_value(v) for v in values.split(",")]))
    return out


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def _cell_name(combo: tuple[tuple[str, Any], ...], seed: int) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in combo]
    return "_".join([*parts, f"seed={seed}"]).replace("/", "-") or f"seed={seed}"


def _run_cell(config: RunConfig, rd: Path, *, retries: int = 1) -> None:
    """Run one cell into ``rd``: continue its checkpoint when one is there (a sweep
    stopped midway; its config must be this cell's), else start it; a broken
    process pool (a worker killed) resumes from the last checkpoint ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            if (rd / "checkpoint.pt").exists():
                if load_run_config(rd).to_json() != config.to_json():
                    raise SystemExit(
                        f"{rd} holds a checkpoint of another config; remove it or choose "
                        "another --out"
                    )
                resume(rd, progress=False, log=lambda _: None)
            else:
                run(config, rd, progress=False, log=lambda _: None)
            return
        except BrokenProcessPool:
            if attempt == retries:
                raise
            print(f"{rd.name}: a worker process died; resuming from the checkpoint", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], help="section.key=v1,v2,...")
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds")
    ap.add_argument("--rounds", type=int, default=None, help="override federated.rounds")
    ap.add_argument("--test", action="store_true", help="evaluate on the test split")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    base = read_toml(Path(args.config))
    grid = _grid(args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    rows = []
    keys = [k for k, _ in grid]
    for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
        combo = tuple(zip(keys, values, strict=True))
        finals = []
        for seed in seeds:
            data = json.loads(json.dumps(base))
            for k, v in combo:
                _apply(data, k, v)
            _apply(data, "run.seed", seed)
            _apply(data, "run.progress", False)
            _apply(data, "split.evaluate_on", "test" if args.test else "validation")
            if args.rounds is not None:
                _apply(data, "federated.rounds", args.rounds)
            rd = out / _cell_name(combo, seed)
            summary = rd / "summary.json"
            if not summary.exists():
                t0 = time.perf_counter()
                _run_cell(RunConfig.from_dict(data), rd)
                print(f"{rd.name}: {time.perf_counter() - t0:.0f} s", flush=True)
            finals.append(json.loads(summary.read_text())["final"])
        rows.append((combo, finals))

    split = "test" if args.test else "validation"
    header = [*(k.rsplit(".", 1)[-1] for k in keys), f"{split} gAUC", "AUC", "logloss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for combo, finals in rows:
        cells = [str(v) for _, v in combo]
        for metric in ("gauc", "auc", "logloss"):
            xs = [float(f[metric]) for f in finals if f.get(metric) is not None]
            sd = f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else ""
            cells.append(f"{statistics.mean(xs):.4f}{sd}" if xs else "—")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "sweep.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
