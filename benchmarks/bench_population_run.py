"""Server peak memory of ``secrelay run`` on a lazy population (issue 18).

Runs ``secrelay run examples/population_fedavg.toml`` (FedAvg, 100 devices a round,
3 rounds, evaluation on a fixed sample of 1,000 devices, process-pool executor with 2
workers) at 10³, 10⁴ and 10⁵ devices, each in a fresh interpreter, and reports that
process's peak RSS (``ru_maxrss`` of the server alone: the pool's workers are other
processes) and wall time::

    python benchmarks/bench_population_run.py            # 1000 10000 100000
    python benchmarks/bench_population_run.py 1000 100000
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "population_fedavg.toml"


def _child(n_devices: int) -> dict[str, float]:
    from secrelay.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        text = re.sub(r"n_devices = \d+", f"n_devices = {n_devices}", CONFIG.read_text())
        cfg = Path(tmp) / "population.toml"
        cfg.write_text(text)
        t0 = time.perf_counter()
        app(["run", str(cfg), "--out", str(Path(tmp) / "run")], standalone_mode=False)
        seconds = time.perf_counter() - t0
        last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "population": n_devices,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "run_s": seconds,
        "eval_devices": last["eval_devices"],
        "gauc": last["gauc"],
    }


def main(argv: Sequence[str]) -> None:
    sizes = [int(a) for a in argv] or [1_000, 10_000, 100_000]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "_child", str(n)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"population {n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("| devices | server peak RSS (MiB) | run (s) | eval devices | final gAUC |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['population']:,} | {r['peak_rss_mib']:.0f} | {r['run_s']:.1f} "
            f"| {r['eval_devices']} | {r['gauc']:.3f} |"
        )
    if len(rows) > 1:
        b = np.polyfit(
            np.log([r["population"] for r in rows]), np.log([r["peak_rss_mib"] for r in rows]), 1
        )[0]
        print(f"growth: peak RSS ∝ devices^{b:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(_child(int(sys.argv[2]))), flush=True)
    else:
        main(sys.argv[1:])
