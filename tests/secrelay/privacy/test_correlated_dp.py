"""DP-FTRL / banded MF as user-level DP sums, adaptive clipping and server momentum,
in whole runs: the ledger records, the audit's ε, and the FTRL server step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from protocols.dp import (
    BandedMatrixNoise,
    GaussianEvent,
    PrivacyLedger,
    TreeAggregationNoise,
    make_accountant,
)
from protocols.dp.accountants import _gaussian_epsilon
from protocols.errors import ConfigError, InvalidParameterError
from secrelay.audit import audit
from secrelay.config import load_config
from secrelay.experiment import run
from secrelay.federated.aggregation import PlaintextSum
from secrelay.federated.strategies import FedAvg
from secrelay.federated.transcript import Channel
from secrelay.privacy.correlated_dp import CorrelatedNoiseSum
from secrelay.privacy.user_dp import AdaptiveClipping, CentralGaussianSum, fedavg_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _quiet(_: str) -> None:
    pass


def _config(rounds: int = 4, sampling: str = "fixed", **privacy):
    return load_config(
        run={"name": "ftrl-test", "seed": 3, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 20, "samples_per_user": 24}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={
            "rounds": rounds,
            "sampling": sampling,
            "clients_per_round": 5,
            "sample_rate": 0.25,
        },
        strategy={"name": "fedavg", "params": {"weighting": "uniform", "server_momentum": 0.5}},
        privacy={
            "randomness": "reproducible",
            "user_level_dp": True,
            "clipping_norm": 0.5,
            **privacy,
        },
    )


def _sum(noise, *, z=2.0, population=(0, 1, 2, 3), k=0, b=1):
    return CorrelatedNoiseSum(
        PlaintextSum(),
        mechanism=noise,
        noise_multiplier=z,
        clipping_norm=1.0,
        delta=1e-5,
        participants=2,
        population=population,
        max_participations=k,
        min_separation=b,
        randomness="reproducible",
        spec=fedavg_spec(1.0, 3),
    )


def _contrib(*devices, value=1.0):
    return {d: {"delta": np.full(3, value), "weight": np.ones(1)} for d in devices}


@pytest.mark.parametrize("mechanism", ["dp_ftrl", "banded_mf"])
def test_run_ledger_and_audit_give_the_calibrated_epsilon(tmp_path: Path, mechanism) -> None:
    extra = {"bands": 2} if mechanism == "banded_mf" else {}
    cfg = _config(user_mechanism=mechanism, target_epsilon=4.0, user_epsilon=4.0, **extra)
    rd = tmp_path / "r"
    res = run(cfg, rd, progress=False, log=_quiet)
    ledger = PrivacyLedger.load(rd / "privacy_ledger.jsonl")
    user = [r for r in ledger.records if r.unit == "user"]
    assert [r.round for r in user] == [1, 2, 3, 4]
    prefix = "dp_ftrl[efficient_tree]" if mechanism == "dp_ftrl" else "banded_mf[bands=2]"
    assert {r.mechanism for r in user} == {prefix}
    assert {r.adjacency for r in user} == {"zero_out"}
    eps = ledger.epsilon(delta=1e-5, unit="user")
    # Calibrated to the public schedule's worst device, spent exactly (no dropouts).
    assert 4.0 * 0.99 <= eps <= 4.0
    report = audit(rd)
    assert report.user.epsilon("prv") == pytest.approx(eps, rel=1e-9)
    assert report.user.adjacency == "zero_out"
    assert res.epsilon["user_epsilon"] == pytest.approx(eps, rel=1e-9)


def test_records_compose_to_the_tree_of_the_actual_participation() -> None:
    s = _sum(TreeAggregationNoise(), z=2.0)
    pattern = [(0, 1), (0, 2), (1,), (0, 3), (2,)]
    history: dict[int, list[int]] = {}
    acc = make_accountant("prv")
    for t, devs in enumerate(pattern, start=1):
        planned = s.planned_record(t, list(devs), dimension=3, min_survivors=1, dropouts=False)
        res = s.aggregate(t, _contrib(*devs), Channel())
        assert planned is not None and planned.event == res.privacy_records[0].event
        acc.compose(res.privacy_records[0].event)
        for d in devs:
            history.setdefault(d, []).append(t)
    worst = max(TreeAggregationNoise().sensitivity_squared(r, upto=5) for r in history.values())
    assert s.spent_squared == worst
    assert acc.get_epsilon(delta=1e-5) == pytest.approx(
        _gaussian_epsilon(math.sqrt(worst) / 2.0, 1e-5), rel=1e-9
    )


def test_a_stream_resumed_without_its_state_is_refused() -> None:
    s = _sum(TreeAggregationNoise())
    with pytest.raises(ConfigError, match="no noise state was restored"):
        s.planned_record(3, [0], dimension=3, min_survivors=1, dropouts=False)
    with pytest.raises(ConfigError, match="no noise state was restored"):
        s.aggregate(3, _contrib(0), Channel())
    assert s.noise.round == 0 and not s.history


@pytest.mark.parametrize("noise", [TreeAggregationNoise, lambda: BandedMatrixNoise(bands=3)])
def test_a_restored_stream_releases_what_the_uninterrupted_one_does(noise) -> None:
    a, b = _sum(noise()), _sum(noise())
    for t in (1, 2, 3):
        a.aggregate(t, _contrib(t % 4, 3), Channel())
        if t < 3:
            b.aggregate(t, _contrib(t % 4, 3), Channel())
    c = _sum(noise())
    c.load_state_dict(b.state_dict())  # a resumed run's fresh sum, restored
    out_a = a.aggregate(4, _contrib(0, 1), Channel())
    c.aggregate(3, _contrib(3, 3), Channel())
    out_c = c.aggregate(4, _contrib(0, 1), Channel())
    assert np.array_equal(out_a.sums["delta"], out_c.sums["delta"])
    assert out_a.privacy_records[0].event == out_c.privacy_records[0].event
    assert c.history == a.history and c.spent_squared == a.spent_squared
    with pytest.raises(InvalidParameterError, match="is for"):
        _sum(
            BandedMatrixNoise(bands=2)
            if isinstance(a.noise, TreeAggregationNoise)
            else TreeAggregationNoise()
        ).load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "privacy",
    [
        {"user_mechanism": "dp_ftrl", "noise_multiplier": 2.0, "max_participations": 2},
        {"user_mechanism": "banded_mf", "bands": 2, "noise_multiplier": 2.0},
        {"adaptive_clip": True, "noise_multiplier": 2.0, "clip_count_stddev": 5.0},
    ],
    ids=["dp_ftrl", "banded_mf", "adaptive_clip"],
)
def test_stateful_dp_runs_resume_to_the_same_records(tmp_path: Path, privacy) -> None:
    from secrelay.experiment import resume

    cfg = _config(rounds=4, **privacy)
    full = run(cfg, tmp_path / "full", progress=False, log=_quiet)
    run(cfg, tmp_path / "part", progress=False, log=_quiet, stop_after=2)
    resumed = resume(tmp_path / "part", progress=False, log=_quiet)
    assert resumed.records == full.records
    ledger = [
        r.to_dict() for r in PrivacyLedger.load(tmp_path / "part" / "privacy_ledger.jsonl").records
    ]
    assert ledger == [
        r.to_dict() for r in PrivacyLedger.load(tmp_path / "full" / "privacy_ledger.jsonl").records
    ]


def test_participation_limits_leave_devices_out() -> None:
    s = _sum(BandedMatrixNoise(bands=2), k=2, b=2)
    assert s.aggregate(1, _contrib(0, 1), Channel()).survivors == (0, 1)
    assert s.aggregate(2, _contrib(0, 2), Channel()).survivors == (2,)  # 0: too soon
    assert s.aggregate(3, _contrib(0, 1), Channel()).survivors == (0, 1)
    assert s.aggregate(5, _contrib(0, 3), Channel()).survivors == (3,)  # 0: third time
    bound = BandedMatrixNoise(bands=2).sensitivity_bound(
        steps=4, max_participations=2, min_separation=2
    )
    assert s.spent_squared <= bound


def test_ftrl_server_step_is_initial_plus_noisy_prefix_sum() -> None:
    """FedAvg over the released increments holds w_0 + (η/n)·(noisy prefix sum)."""
    s = _sum(TreeAggregationNoise(efficient=False), z=0.5)
    ref = TreeAggregationNoise(efficient=False)
    strategy = FedAvg(weighting="uniform", server_lr=0.5)
    strategy.initialize({"global": np.zeros(3, dtype=np.float32)})
    truth = np.zeros(3)
    noise_prefix = np.zeros(3)
    for t in range(1, 8):
        res = s.aggregate(t, _contrib(t % 4, value=0.05 * t), Channel())
        strategy.aggregate(t, res)
        truth += np.full(3, 0.05 * t)
        rng = np.random.default_rng(np.random.SeedSequence([0, t, 17]))
        noise_prefix += ref.next_noise(rng, (3,))
        expected = 0.5 / 2 * (truth + 0.5 * noise_prefix)
        np.testing.assert_allclose(strategy.models["global"], expected, atol=1e-5)


def test_server_momentum_is_heavy_ball_and_checkpointed() -> None:
    strategy = FedAvg(weighting="uniform", server_momentum=0.9)
    strategy.initialize({"global": np.zeros(2, dtype=np.float32)})
    g = {"delta": np.array([1.0, 0.0]), "weight": np.array([1.0])}
    strategy.apply(1, g)
    strategy.apply(2, g)
    np.testing.assert_allclose(strategy.models["global"], [1.0 + 1.9, 0.0], rtol=1e-6)
    again = FedAvg(weighting="uniform", server_momentum=0.9)
    again.load_state_dict(strategy.state_dict())
    again.apply(3, g)
    strategy.apply(3, g)
    np.testing.assert_allclose(again.models["global"], strategy.models["global"])
    with pytest.raises(InvalidParameterError, match="server_momentum"):
        FedAvg(server_momentum=1.0)


def test_adaptive_clipping_tracks_the_quantile_and_spends_the_joint_event() -> None:
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.3, count_stddev=1.0)
    s = CentralGaussianSum(
        PlaintextSum(),
        noise_multiplier=0.8,
        clipping_norm=0.1,
        delta=1e-5,
        sampling="fixed",
        population=tuple(range(40)),
        randomness="reproducible",
        spec=fedavg_spec(0.1, 3),
        adaptive=adaptive,
    )
    rng = np.random.default_rng(0)
    for t in range(1, 80):
        norms = rng.lognormal(0.0, 0.3, size=40)
        contrib = {
            d: {"delta": np.array([n, 0.0, 0.0]), "weight": np.ones(1)} for d, n in enumerate(norms)
        }
        res = s.aggregate(t, contrib, Channel())
        assert res.privacy_records[0].event == GaussianEvent(noise_multiplier=0.8)
    assert np.mean(s.clip_history[-20:]) == pytest.approx(1.0, rel=0.15)
    assert s.update_noise_multiplier > 0.8


def test_config_problems_are_reported_first() -> None:
    with pytest.raises(ConfigError, match=r"needs privacy\.user_level_dp"):
        load_config(privacy={"user_mechanism": "dp_ftrl"})
    with pytest.raises(ConfigError, match="bands applies"):
        load_config(
            privacy={
                "user_level_dp": True,
                "clipping_norm": 1.0,
                "noise_multiplier": 1.0,
                "bands": 3,
            }
        )
    with pytest.raises(ConfigError, match="adaptive_clip needs"):
        load_config(
            privacy={
                "user_level_dp": True,
                "clipping_norm": 1.0,
                "noise_multiplier": 1.0,
                "user_mechanism": "dp_ftrl",
                "adaptive_clip": True,
            }
        )
    cfg = _config(user_mechanism="dp_ftrl", target_epsilon=4.0, randomness="secure")
    from secrelay.privacy.plan import PrivacyPlan

    assert any("max_participations" in p for p in PrivacyPlan.from_config(cfg).problems())


def test_dp_ftrl_under_secure_aggregation_reports_its_global_epsilon(tmp_path: Path) -> None:
    cfg = _config(
        rounds=2,
        user_mechanism="dp_ftrl",
        target_epsilon=4.0,
        secure_aggregation=True,
        max_participations=1,
    )
    rd = tmp_path / "r"
    run(cfg, rd, progress=False, log=_quiet)
    user = [r for r in PrivacyLedger.load(rd / "privacy_ledger.jsonl").records if r.unit == "user"]
    assert {r.mechanism for r in user} == {"dp_ftrl[efficient_tree]"}
    report = audit(rd)
    # One participation each over 2 rounds: S = depth(2) = 2, calibrated to ε <= 4.
    z = user[0].noise_multiplier
    assert report.user.epsilon("prv") == pytest.approx(
        _gaussian_epsilon(math.sqrt(2.0) / z, 1e-5), rel=1e-9
    )
    assert 3.96 <= report.user.epsilon("prv") <= 4.0


def test_adaptive_clipping_in_a_poisson_run(tmp_path: Path) -> None:
    cfg = _config(
        rounds=3,
        sampling="poisson",
        target_epsilon=4.0,
        adaptive_clip=True,
        target_quantile=0.5,
        clip_count_stddev=0.2,
    )
    with pytest.raises(ConfigError, match="clip_count_stddev"):
        run(cfg, tmp_path / "bad", progress=False, log=_quiet)
    cfg = cfg.replace(privacy={"clip_count_stddev": 1.0})
    rd = tmp_path / "r"
    run(cfg, rd, progress=False, log=_quiet)
    eps = PrivacyLedger.load(rd / "privacy_ledger.jsonl").epsilon(delta=1e-5, unit="user")
    assert 3.9 <= eps <= 4.0
