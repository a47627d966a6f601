"""Issue 12: the ledger claims what is spent.

1. A Poisson round always releases (noise alone when nobody was sampled), with one
   ledger record, and the loop goes on.
2. Fixed-size sampling is accounted under replace-one adjacency (sensitivity 2C),
   cross-checked with dp_accounting; every record and the audit name the adjacency.
3. The randomness behind the guarantee is secret by default (``privacy.randomness``):
   noise, samples, DP-SGD and SecAgg keys do not follow ``run.seed``; a canary on the
   central Gaussian sum gains nothing from knowing the seed.
4. (Concurrent ledger writers: tests/protocols/dp/test_dp_ledger.py.)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from scipy.stats import beta
from typer.testing import CliRunner

import secrelay.experiment as experiment
from protocols.dp import PrivacyLedger, make_accountant
from protocols.errors import ConfigError, InvalidParameterError, ProtocolAbort
from secrelay.audit import REPRODUCIBLE_WARNING, audit
from secrelay.cli import app
from secrelay.config import PrivacyConfig, load_config
from secrelay.experiment import resume, run
from secrelay.federated.aggregation import PlaintextSum
from secrelay.federated.client import DeviceTask
from secrelay.federated.loop import FederatedLoop, RoundConfig, sample_devices
from secrelay.federated.secure import SecureSumSettings
from secrelay.federated.strategies import make_strategy
from secrelay.federated.transcript import Channel
from secrelay.privacy.distributed_dp import DistributedGaussianSum
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.privacy.plan import PrivacyPlan, max_participations
from secrelay.privacy.user_dp import CentralGaussianSum
from secrelay.training import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DELTA = 1e-5
CENTRAL = {"user_level_dp": True, "clipping_norm": 0.5, "noise_multiplier": 1.0}


def _quiet(_: str) -> None:
    pass


def _config(rounds: int = 3, *, n_users: int = 30, seed: int = 5, federated=None, **privacy):
    return load_config(
        run={"name": "guarantees", "seed": seed, "progress": False},
        data={"name": "synthetic", "options": {"n_users": n_users, "samples_per_user": 24}},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={
            "rounds": rounds,
            "sampling": "poisson",
            "sample_rate": 0.2,
            **(federated or {}),
        },
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy=privacy,
    )


def _ledger(rd: Path) -> PrivacyLedger:
    return PrivacyLedger.load(rd / "privacy_ledger.jsonl")


def _fedavg(d: int):
    strategy = make_strategy("fedavg", weighting="uniform")
    strategy.initialize({"global": np.zeros(d, dtype=np.float32)})
    return strategy


def _private_sum(privacy: PrivacyConfig, *, d: int, population, **plan_kw):
    plan = PrivacyPlan(privacy, **plan_kw)
    strategy = _fedavg(d)
    spec = strategy.release_spec(float(privacy.clipping_norm or 1.0))
    assert spec is not None
    return plan.private_sum(PlaintextSum(), strategy, spec=spec, population=population, rounds=1)


def _loop(devices, spec, sum_protocol, *, rate: float, randomness=None, seed: int = 0):
    strategy = _fedavg(spec.num_parameters())
    program = strategy.client_program(spec, _plain())
    return FederatedLoop(
        strategy,
        program,
        devices,
        spec,
        config=RoundConfig(sampling="poisson", sample_rate=rate),
        seed=seed,
        sum_protocol=sum_protocol,
        randomness=randomness,
    )


def _plain():
    from secrelay.federated.client import PlainTrainer

    return PlainTrainer(TrainConfig(epochs=1, batch_size=4, lr=0.1, optimizer="sgd"))


def _central_poisson(spec, population, *, randomness="secure", rate=1e-9):
    from secrelay.privacy.user_dp import fedavg_spec

    return CentralGaussianSum(
        PlaintextSum(),
        noise_multiplier=1.0,
        clipping_norm=0.5,
        delta=DELTA,
        sampling="poisson",
        sample_rate=rate,
        population=population,
        randomness=randomness,
        spec=fedavg_spec(0.5, dimension=spec.num_parameters()),
    )


# --- 1. empty Poisson rounds -------------------------------------------------------------


def test_a_poisson_round_that_samples_nobody_releases_noise_alone(make_devices, tiny_spec):
    """Issue 12.1: it used to raise RoundAborted ("0 devices survived")."""
    devices = make_devices()
    proto = _central_poisson(tiny_spec, sorted(devices))
    loop = _loop(devices, tiny_spec, proto, rate=1e-9)
    before = loop.strategy.models["global"].copy()
    planned = PrivacyPlan.planned_records(loop, 1)
    rec = loop.run_round(1, evaluate=False)
    assert rec.sampled == () and rec.survivors == () and not rec.aborted
    (record,) = rec.privacy_records  # one record, the one the dry run planned
    assert planned == (record,)
    assert record.devices == tuple(str(d) for d in sorted(devices))  # amplified: everyone
    assert record.adjacency == "add_remove"
    # The noise was applied: an empty round does not show as an unchanged model.
    assert not np.array_equal(loop.strategy.models["global"], before)
    loop.run_round(2, evaluate=False)  # and the loop goes on


def test_a_tiny_population_dp_fedavg_run_completes_with_one_record_per_round(tmp_path):
    """Issue 12.1: a DP-FedAvg run on a tiny population with q = 0.03 died at round 1
    (seed 2 samples nobody in round 1 of the seeded schedule)."""
    cfg = _config(rounds=4, n_users=12, seed=2, federated={"sample_rate": 0.03}, **CENTRAL)
    res = run(cfg, tmp_path / "r", progress=False, log=_quiet)
    assert [r["round"] for r in res.records] == [0, 1, 2, 3, 4]
    user = [r for r in _ledger(tmp_path / "r").records if r.unit == "user"]
    assert [r.round for r in user] == [1, 2, 3, 4]


def test_min_survivors_above_one_is_refused_under_central_poisson_dp(tmp_path):
    cfg = _config(federated={"min_survivors": 2}, **CENTRAL)
    with pytest.raises(ConfigError, match=r"federated\.min_survivors = 1"):
        run(cfg, tmp_path / "r", progress=False, log=_quiet)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_secagg_round_with_one_participant_aborts_and_releases_nothing():
    """Under SecAgg participation is public (zero-out): a round SecAgg cannot run
    aborts (the loop's on_abort decides) instead of failing with a bare error."""
    s = DistributedGaussianSum(
        noise_multiplier=1.0, clipping_norm=1.0, delta=DELTA, randomness="reproducible"
    )
    with pytest.raises(ProtocolAbort, match="needs at least 2; nothing was released") as info:
        s.aggregate(3, {7: {"delta": np.ones(4), "weight": np.ones(1)}}, Channel())
    assert info.value.privacy_records == ()


# --- 2. sampling adjacency ---------------------------------------------------------------


def test_fixed_size_rounds_are_accounted_replace_one_as_dp_accounting_says():
    """Issue 12.2: fixed-size rounds were charged at sensitivity C under add/remove.
    With the sample hidden a removed device's slot is refilled, so neighbouring
    populations differ by one replaced device: dp_accounting's REPLACE_ONE relation,
    whose Gaussian of noise multiplier σ/C has sensitivity 2C."""
    c, z, rounds, n, d = 0.5, 1.0, 50, 6, 4000
    privacy = PrivacyConfig(user_level_dp=True, clipping_norm=c, noise_multiplier=z)
    s = _private_sum(privacy, d=d, population=range(20), sampling="fixed", clients_per_round=n)
    rng = np.random.default_rng(0)
    contribs = {k: {"delta": rng.normal(size=d) * 1e-3, "weight": np.ones(1)} for k in range(n)}
    true = sum(v["delta"] for v in contribs.values())
    ledger = PrivacyLedger()
    for t in range(1, rounds + 1):
        res = s.aggregate(t, contribs, Channel())
        ledger.spend(list(res.privacy_records))
    (sigma,) = {r.sigma for r in ledger.records}
    assert sigma is not None
    assert (res.sums["delta"] - true).std() == pytest.approx(sigma, rel=0.05)  # the actual noise
    assert {r.adjacency for r in ledger.records} == {"replace_one"}
    acc = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(dp_accounting.GaussianDpEvent(sigma / c), rounds)
    expected = acc.get_epsilon(DELTA)
    eps = ledger.epsilon(delta=DELTA, unit="user")
    assert eps == pytest.approx(expected, rel=0.02)
    assert eps >= expected * 0.995  # never below the independent accountant


def test_runs_and_the_audit_state_the_adjacency(tmp_path):
    rd = tmp_path / "fixed"
    cfg = _config(federated={"sampling": "fixed", "clients_per_round": 5}, **CENTRAL)
    run(cfg.replace(privacy={"dp_sgd": True, "local_noise_multiplier": 1.0}), rd, log=_quiet)
    report = audit(rd, comparison=None).to_dict()
    assert report["adjacency"] == {"user": "replace_one", "example": "add_remove"}
    assert report["user_level"]["adjacency"] == "replace_one"
    assert {m["adjacency"] for m in report["mechanisms"]} == {"replace_one", "add_remove"}
    assert any("replace-one adjacency at sensitivity 2C" in n for n in report["notes"])
    saved = json.loads((rd / "audit.json").read_text())
    assert saved["adjacency"] == report["adjacency"] and saved["randomness"] == "secure"
    assert "| replace-one |" in (rd / "audit.md").read_text()
    rd2 = tmp_path / "poisson"
    run(_config(**CENTRAL), rd2, log=_quiet)
    assert audit(rd2, write=False).to_dict()["adjacency"]["user"] == "add_remove"


# --- 3. randomness -------------------------------------------------------------------------


def test_default_runs_differ_in_their_noise_and_reproducible_runs_are_identical(tmp_path):
    """Issue 12.3: the noise was regenerable from run.seed (default seed 0)."""
    out = {}
    for name, extra in (("a", {}), ("b", {}), ("c", {"randomness": "reproducible"})):
        out[name] = run(_config(rounds=2, **CENTRAL, **extra), tmp_path / name, log=_quiet)
    out["d"] = run(
        _config(rounds=2, **CENTRAL, randomness="reproducible"), tmp_path / "d", log=_quiet
    )
    assert out["a"].records[0] == out["b"].records[0]  # the cloud phase stays seeded
    assert out["a"].records[1:] != out["b"].records[1:]
    assert out["c"].records == out["d"].records
    ledger = "privacy_ledger.jsonl"
    assert (tmp_path / "c" / ledger).read_bytes() == (tmp_path / "d" / ledger).read_bytes()


def _empirical_epsilon(hits0: int, hits1: int, trials: int, *, delta: float) -> float:
    """A 95 % Clopper-Pearson lower bound on ε from a distinguisher that says "world 0"
    in ``hits0`` of ``trials`` world-0 trials and ``hits1`` of ``trials`` world-1 ones."""

    def lower(k: int) -> float:
        return 0.0 if k == 0 else float(beta.ppf(0.05, k, trials - k + 1))

    def upper(k: int) -> float:
        return 1.0 if k == trials else float(beta.ppf(0.95, k + 1, trials - k))

    best = 0.0
    for tp, fp in ((hits0, hits1), (trials - hits1, trials - hits0)):
        num = lower(tp) - delta
        if num > 0:
            best = max(best, math.log(num / upper(fp)))
    return best


def _canary(randomness: str | None, trials: int) -> tuple[float, float]:
    """The canary device (id 0) contributes +C or −C (replace-one neighbours) to a
    fixed-size central Gaussian sum configured by one public config. The attacker
    knows the config — the seed included — so it reruns the sum on a dummy input to
    predict the noise, subtracts it and reads the sign."""
    extra = {} if randomness is None else {"randomness": randomness}
    privacy = PrivacyConfig(user_level_dp=True, clipping_norm=1.0, noise_multiplier=1.0, **extra)
    kw = {"d": 1, "population": range(2), "sampling": "fixed", "clients_per_round": 2, "seed": 0}
    hits = []
    for sign in (1.0, -1.0):
        said0 = 0
        for _ in range(trials):
            real = _private_sum(privacy, **kw).aggregate(
                1, {0: {"delta": np.array([sign]), "weight": np.ones(1)},
                    1: {"delta": np.zeros(1), "weight": np.ones(1)}}, Channel(),
            )  # fmt: skip
            guess = _private_sum(privacy, **kw).aggregate(
                1, {0: {"delta": np.zeros(1), "weight": np.ones(1)},
                    1: {"delta": np.zeros(1), "weight": np.ones(1)}}, Channel(),
            )  # fmt: skip
            said0 += float(real.sums["delta"][0] - guess.sums["delta"][0]) > 0
        hits.append(said0)
    eps_lb = _empirical_epsilon(hits[0], hits[1], trials, delta=DELTA)
    (record,) = real.privacy_records
    return eps_lb, make_accountant("prv").compose(record.event).get_epsilon(delta=DELTA)


def test_knowing_the_seed_does_not_help_a_canary_under_default_randomness():
    """Issue 12.3: whoever knew the config regenerated the noise exactly (empirical
    canary ε ≥ 6.7, capped by the trials, against 4.4 claimed)."""
    eps_lb, claimed = _canary(None, trials=400)
    assert eps_lb <= claimed
    # The same attack on a reproducible run: the seed gives the noise away.
    eps_lb_seeded, claimed_seeded = _canary("reproducible", trials=400)
    assert eps_lb_seeded > claimed_seeded


def test_secure_samples_are_drawn_once_and_do_not_follow_the_seed(make_devices, tiny_spec):
    devices = make_devices(n_devices=11)
    proto = _central_poisson(tiny_spec, sorted(devices), rate=0.5)
    loop = _loop(devices, tiny_spec, proto, rate=0.5, seed=0)
    assert loop.randomness == "secure"  # follows the DP sum
    planned = PrivacyPlan.planned_records(loop, 1)  # the dry run draws round 1's sample
    assert loop.sample(1) == loop.sample(1)
    rec = loop.run_round(1, evaluate=False)
    assert rec.sampled == tuple(loop.sample(1)) and planned == rec.privacy_records
    # Over 6 rounds of 11 devices at q = 1/2, equal by chance with probability 2^-66.
    drawn = [loop.sample(t) for t in range(1, 7)]
    seeded = [sample_devices(sorted(devices), loop.config, seed=0, round=t) for t in range(1, 7)]
    other = _loop(devices, tiny_spec, proto, rate=0.5, seed=0)
    assert drawn != seeded
    assert [other.sample(t) for t in range(1, 7)] != drawn
    with pytest.raises(InvalidParameterError, match="amplification by sampling"):
        _loop(devices, tiny_spec, proto, rate=0.5, randomness="reproducible")
    repro = _central_poisson(tiny_spec, sorted(devices), randomness="reproducible", rate=0.5)
    assert _loop(devices, tiny_spec, repro, rate=0.5).sample(1) == seeded[0]


def test_secure_dp_sgd_and_secagg_keys_do_not_follow_the_seed(make_devices, dnn_spec):
    data = make_devices(rows=40)[1]
    task = DeviceTask(device_id=1, round=1, models={}, seed=3)

    def train(randomness: str) -> np.ndarray:
        trainer = DPSGDTrainer(
            config=TrainConfig(epochs=1, batch_size=4, lr=0.1),
            max_grad_norm=1.0,
            target_delta=DELTA,
            noise_multiplier=1.0,
            randomness=randomness,
        )
        torch.manual_seed(0)
        model = dnn_spec.build()
        trainer.train_round(
            model, data, generator=torch.Generator().manual_seed(3), reference=None, task=task
        )
        return torch.cat([p.detach().ravel() for p in model.parameters()]).numpy()

    assert not np.array_equal(train("secure"), train("secure"))
    np.testing.assert_array_equal(train("reproducible"), train("reproducible"))
    secure = PrivacyPlan(PrivacyConfig(secure_aggregation=True))
    assert secure.secure_settings().deterministic is False
    assert secure.sum_protocol().settings.deterministic is False  # type: ignore[attr-defined]
    repro = PrivacyPlan(PrivacyConfig(secure_aggregation=True, randomness="reproducible"))
    assert repro.secure_settings().deterministic is True
    with pytest.raises(InvalidParameterError, match="deterministic"):
        DistributedGaussianSum(
            SecureSumSettings(deterministic=True),
            noise_multiplier=1.0,
            clipping_norm=1.0,
            delta=DELTA,
        )


def test_local_participations_without_a_public_schedule_are_bounded_by_the_rounds():
    config = RoundConfig(sampling="poisson", sample_rate=0.1)
    ids = list(range(50))
    for randomness, expected in (
        ("secure", 20),
        ("reproducible", max_participations(ids, config, seed=4, rounds=20)),
    ):
        plan = PrivacyPlan(
            PrivacyConfig(dp_sgd=True, local_target_epsilon=2.0, randomness=randomness)  # type: ignore[arg-type]
        )
        assert plan.participations(ids, config, seed=4, rounds=20) == expected
    assert expected < 20  # the public schedule is tighter, and public


def test_secure_resume_keeps_the_interrupted_rounds_release(tmp_path, monkeypatch):
    """Under secure randomness a replayed round is a fresh release: the interrupted
    round's records stay and the replay is counted again (never lost)."""
    cfg = _config(rounds=3, **CENTRAL)
    original = experiment.save_checkpoint

    def crash_on_round_2(path, state):
        if state["round"] == 2:
            raise KeyboardInterrupt("killed after the ledger write, before the checkpoint")
        original(path, state)

    monkeypatch.setattr(experiment, "save_checkpoint", crash_on_round_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "r", log=_quiet)
    monkeypatch.setattr(experiment, "save_checkpoint", original)
    said: list[str] = []
    resume(tmp_path / "r", progress=False, log=said.append)
    assert any("keeping 1 record(s)" in m for m in said)
    assert [r.round for r in _ledger(tmp_path / "r").records] == [1, 2, 2, 3]


def test_the_audit_marks_reproducible_runs_and_reads_old_run_directories(tmp_path):
    rd = tmp_path / "r"
    run(_config(rounds=1, **CENTRAL, randomness="reproducible"), rd, log=_quiet)
    report = audit(rd).to_dict()
    assert report["randomness"] == "reproducible"
    assert report["warnings"] == [REPRODUCIBLE_WARNING]
    assert (
        "the guarantee holds only against parties who do not know run.seed"
        in (rd / "audit.md").read_text()
    )
    cli = CliRunner().invoke(app, ["audit", str(rd)])
    assert cli.exit_code == 0 and "WARNING: privacy.randomness = 'reproducible'" in " ".join(
        cli.output.split()
    )
    # A run directory written before privacy.randomness recorded secure_noise instead.
    cfg = json.loads((rd / "config.json").read_text())
    cfg["privacy"].pop("randomness")
    cfg["privacy"]["secure_noise"] = False
    (rd / "config.json").write_text(json.dumps(cfg))
    assert audit(rd, write=False).to_dict()["warnings"] == [REPRODUCIBLE_WARNING]
    cfg["privacy"]["secure_noise"] = True
    (rd / "config.json").write_text(json.dumps(cfg))
    assert audit(rd, write=False).to_dict()["randomness"] == "secure"


def test_replaced_key_is_refused_naming_its_replacement():
    with pytest.raises(ConfigError, match=r"privacy\.randomness.*'reproducible'"):
        load_config(privacy={"secure_noise": False})
    with pytest.raises(ConfigError, match=r"privacy\.randomness must be one of"):
        load_config(privacy={"randomness": "seeded"})
    assert dataclasses.asdict(load_config().privacy)["randomness"] == "secure"
