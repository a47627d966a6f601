"""Issue 12: does the ledger claim what a run spends? Four measurements.

    python benchmarks/bench_dp_guarantees.py [--trials 1000] [--json OUT]

1. **Empty Poisson rounds.** Tiny DP-FedAvg runs (12 synthetic users, q = 0.03,
   central noise, 20 rounds, seeds 0-4): does the run finish, with one user-level
   record per round?
2. **Fixed-size adjacency.** 50 fixed-size rounds (25 of 31 devices, z = 1, C = 1):
   the ledger's ε against dp_accounting's PLD under REPLACE_ONE for the noise the sum
   actually added (σ/C), the relation under which fixed-size sampling is DP.
3. **Seed-knowing canary.** One fixed-size central Gaussian release with the
   default ``[privacy]`` config; a canary contributes +C or −C; the attacker knows
   the config, seed included, reruns the sum on a dummy input to predict the noise
   and reads the sign. 95 % Clopper-Pearson lower bound on ε over ``--trials``
   trials per world, against the ledger's ε.
4. **Concurrent ledger writers.** Two processes spend 60 records each on one ledger
   (retrying on ``LedgerConflictError``), 5 times: records on disk out of 120.

It feature-detects the API, so the same command measures the code before issue 12
(``PYTHONPATH=<old checkout> python benchmarks/bench_dp_guarantees.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")


def _has_field(cls: type, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(cls)}


def empty_rounds(seeds: range = range(5), rounds: int = 20) -> list[dict[str, Any]]:
    from protocols.dp import PrivacyLedger
    from secrelay.config import load_config
    from secrelay.experiment import run

    out = []
    for seed in seeds:
        cfg = load_config(
            run={"name": "tiny", "seed": seed, "progress": False},
            data={"name": "synthetic", "options": {"n_users": 12, "samples_per_user": 24}},
            model={"name": "lr", "embedding_dim": 4},
            cloud={"epochs": 1},
            local={"epochs": 1, "batch_size": 16},
            federated={"rounds": rounds, "sampling": "poisson", "sample_rate": 0.03},
            strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
            privacy={"user_level_dp": True, "clipping_norm": 0.5, "noise_multiplier": 1.0},
        )
        rd = Path(tempfile.mkdtemp())
        try:
            res = run(cfg, rd, progress=False, log=lambda _: None)
            done, error = len(res.records) - 1, None
        except Exception as exc:  # the old code aborts the run
            done, error = None, f"{type(exc).__name__}: {str(exc)[:90]}"
        path = rd / "privacy_ledger.jsonl"
        user = (
            [r.round for r in PrivacyLedger.load(path).records if r.unit == "user"]
            if path.exists()
            else []
        )
        empty = 0
        metrics = rd / "metrics.jsonl"
        if metrics.exists():
            recs = [json.loads(line) for line in metrics.read_text().splitlines()[1:]]
            empty = sum(1 for r in recs if r.get("sampled") == 0)
        out.append(
            {
                "seed": seed,
                "rounds_completed": done,
                "error": error,
                "user_records": len(user),
                "one_record_per_round": user == list(range(1, (done or 0) + 1)),
                "empty_rounds": empty,
            }
        )
    return out


def fixed_size_adjacency(rounds: int = 50, n: int = 25, population: int = 31) -> dict[str, Any]:
    import dp_accounting

    from protocols.dp import PrivacyLedger
    from secrelay.federated.aggregation import PlaintextSum
    from secrelay.federated.transcript import Channel
    from secrelay.privacy.user_dp import CentralGaussianSum

    c, z, d = 1.0, 1.0, 2000
    s = CentralGaussianSum(
        PlaintextSum(),
        noise_multiplier=z,
        clipping_norm=c,
        delta=1e-5,
        sampling="fixed",
        population=range(population),
    )
    rng = np.random.default_rng(0)
    contribs = {k: {"delta": rng.normal(size=d) * 1e-3, "weight": np.ones(1)} for k in range(n)}
    true = sum(v["delta"] for v in contribs.values())
    ledger = PrivacyLedger()
    noise_std = float("nan")
    for t in range(1, rounds + 1):
        res = s.aggregate(t, contribs, Channel())
        ledger.spend(list(res.privacy_records))
        noise_std = float((res.sums["delta"] - true).std())
    sigma = ledger.records[0].sigma  # the noise it adds (checked against the measured std)
    assert sigma is not None and abs(noise_std / sigma - 1) < 0.05
    acc = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(dp_accounting.GaussianDpEvent(sigma / c), rounds)
    return {
        "rounds": rounds,
        "noise_std_over_C": sigma / c,
        "measured_noise_std_over_C": noise_std / c,
        "ledger_epsilon": ledger.epsilon(delta=1e-5, unit="user"),
        "dp_accounting_replace_one_epsilon": acc.get_epsilon(1e-5),
        "adjacency": getattr(ledger.records[0], "adjacency", "not recorded"),
    }


def _clopper_pearson_epsilon(hits0: int, hits1: int, trials: int, delta: float) -> float:
    from scipy.stats import beta

    def lower(k: int) -> float:
        return 0.0 if k == 0 else float(beta.ppf(0.05, k, trials - k + 1))

    def upper(k: int) -> float:
        return 1.0 if k == trials else float(beta.ppf(0.95, k + 1, trials - k))

    best = 0.0
    for tp, fp in ((hits0, hits1), (trials - hits1, trials - hits0)):
        if lower(tp) - delta > 0:
            best = max(best, math.log((lower(tp) - delta) / upper(fp)))
    return best


def canary(trials: int) -> dict[str, Any]:
    from protocols.dp import make_accountant
    from secrelay.config import PrivacyConfig
    from secrelay.federated.aggregation import PlaintextSum
    from secrelay.federated.strategies import make_strategy
    from secrelay.federated.transcript import Channel
    from secrelay.privacy.plan import PrivacyPlan

    privacy = PrivacyConfig(user_level_dp=True, clipping_norm=1.0, noise_multiplier=1.0)
    plan = PrivacyPlan(privacy, sampling="fixed", clients_per_round=2, seed=0)

    def release(x: float) -> tuple[float, Any]:
        strategy = make_strategy("fedavg", weighting="uniform")
        strategy.initialize({"global": np.zeros(1, dtype=np.float32)})
        spec = strategy.release_spec(1.0)
        s = plan.private_sum(PlaintextSum(), strategy, spec=spec, population=[0, 1], rounds=1)
        res = s.aggregate(
            1,
            {0: {"delta": np.array([x]), "weight": np.ones(1)},
             1: {"delta": np.zeros(1), "weight": np.ones(1)}},
            Channel(),
        )  # fmt: skip
        return float(res.sums["delta"][0]), res.privacy_records[0]

    hits = []
    record = None
    for sign in (1.0, -1.0):
        said0 = 0
        for _ in range(trials):
            real, record = release(sign)
            predicted, _ = release(0.0)  # the attacker's rerun with the public config
            said0 += real - predicted > 0
        hits.append(said0)
    assert record is not None
    return {
        "trials_per_world": trials,
        "randomness": getattr(privacy, "randomness", "seeded (secure_noise = false)"),
        "empirical_epsilon_lower_bound": _clopper_pearson_epsilon(hits[0], hits[1], trials, 1e-5),
        "ledger_epsilon": make_accountant("prv").compose(record.event).get_epsilon(delta=1e-5),
    }


def _writer(path: str, tag: str, start: Any, results: Any) -> None:
    from protocols.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent
    from protocols.dp.ledger import LedgerConflictError, LedgerRecord, PrivacyLedger

    extra = {"adjacency": "add_remove"} if _has_field(LedgerRecord, "adjacency") else {}

    def record(i: int) -> LedgerRecord:
        return LedgerRecord(
            run_id="run",
            round=i,
            mechanism="dp_sgd",
            event=SelfComposedEvent(PoissonSampledEvent(0.05, GaussianEvent(1.0)), 100),
            unit="example",
            devices=(f"{tag}{i}",),
            delta=1e-5,
            **extra,
        )

    ledger = PrivacyLedger.open(path)
    start.wait(10)
    landed = conflicts = 0
    for i in range(60):
        while True:
            try:
                ledger.spend([record(i)])
                landed += 1
                break
            except LedgerConflictError:
                conflicts += 1
                ledger = PrivacyLedger.load(path)
    results.put((tag, landed, conflicts))


def ledger_writers(trials: int = 5) -> list[dict[str, Any]]:
    from protocols.dp.ledger import PrivacyLedger

    ctx = mp.get_context("fork")
    out = []
    for _ in range(trials):
        d = Path(tempfile.mkdtemp())
        path = d / "ledger.jsonl"
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(str(path), t, start, results)) for t in "pq"]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(60)
        writers = sorted(results.get(timeout=5) for _ in procs)
        out.append(
            {
                "records_on_disk": len(PrivacyLedger.load(path)),
                "spends_that_landed": sum(w[1] for w in writers),
                "conflicts_retried": sum(w[2] for w in writers),
                "files_left": sorted(p.name for p in d.iterdir()),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    t0 = time.perf_counter()
    report["empty_rounds"] = empty_rounds()
    report["fixed_size_adjacency"] = fixed_size_adjacency()
    report["canary"] = canary(args.trials)
    report["ledger_writers"] = ledger_writers()
    report["seconds"] = time.perf_counter() - t0
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
