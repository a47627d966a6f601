"""User-level DP beyond FedAvg: the :class:`ReleaseSpec` packing (bounds, public
counts, copies), RelayRec's cluster-keyed release (noised update *and* counts) and
MetaUA's sums (noised g_k and attribute terms), and both methods in whole runs with
their ledger, budget and refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from protocols.dp import PrivacyLedger
from protocols.errors import BudgetExceededError, ConfigError, InvalidParameterError
from secrelay.audit import audit
from secrelay.config import load_config
from secrelay.experiment import resume, run
from secrelay.federated.aggregation import PlaintextSum
from secrelay.federated.client import ModelSpec
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.secure import SecureSumSettings
from secrelay.federated.strategies import ClusteredStrategy, FedAvg
from secrelay.federated.transcript import Channel
from secrelay.privacy.distributed_dp import DistributedGaussianSum
from secrelay.privacy.user_dp import (
    PACKED_NAME,
    CentralGaussianSum,
    pack_contributions,
    unpack_sum,
)
from secrelay.relay.metaua import MetaUAOptions, MetaUAStrategy, client_contribution

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

K, D, C = 3, 40, 0.5


def _clustered(d: int = D, k: int = K) -> ClusteredStrategy:
    s = ClusteredStrategy(weighting="uniform")
    s.initialize({f"cluster/{i}": np.zeros(d, dtype=np.float32) for i in range(k)})
    return s


def _slot(choice: int, delta: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    out = np.zeros((k, delta.size))
    out[choice] = delta
    onehot = np.zeros(k)
    onehot[choice] = 1.0
    return {"delta": out, "weight": onehot.copy(), "count": onehot}


def _slot_contribs(n: int, *, seed: int = 0, scale: float = 0.02) -> dict[int, dict]:
    rng = np.random.default_rng(seed)
    return {i: _slot(int(rng.integers(K)), rng.normal(size=D) * scale) for i in range(n)}


# --- the spec -------------------------------------------------------------------------


def test_release_spec_rejects_inconsistent_statements() -> None:
    with pytest.raises(InvalidParameterError, match="at least one noised"):
        ReleaseSpec(noised=())
    with pytest.raises(InvalidParameterError, match="finite number > 0"):
        ReleaseSpec(noised=(("delta", 0.0),))
    with pytest.raises(InvalidParameterError, match="twice"):
        ReleaseSpec(noised=(("delta", 1.0),), public_counts=("delta",))
    with pytest.raises(InvalidParameterError, match="must copy a noised name"):
        ReleaseSpec(noised=(("delta", 1.0),), copies=(("weight", "count"),))
    with pytest.raises(InvalidParameterError, match="shape of every noised name"):
        ReleaseSpec(noised=(("delta", 1.0), ("count", 1.0)), shapes=(("delta", (3,)),))


def test_strategies_state_their_release() -> None:
    assert FedAvg(weighting="samples").release_spec(C) is None  # sample sizes are data
    fedavg = FedAvg(weighting="uniform")
    fedavg.initialize({"global": np.zeros(7, dtype=np.float32)})
    spec = fedavg.release_spec(C)
    assert spec is not None and spec.bounds == {"delta": C} and spec.public_counts == ("weight",)
    assert spec.dimension == 7 and spec.sensitivity(C) == C  # DP-FedAvg exactly
    clustered = _clustered().release_spec(C)
    assert clustered is not None and clustered.dimension == K * D + K
    assert clustered.sensitivity(C) == pytest.approx(C * math.sqrt(1 + 0.25**2))
    assert clustered.noise_std(1.0)["count"] == pytest.approx(math.sqrt(1 + 0.25**2) / 0.25)
    equal = ClusteredStrategy(weighting="uniform", count_share=1.0)
    equal.initialize({"a": np.zeros(3, dtype=np.float32)})
    spec_equal = equal.release_spec(C)
    assert spec_equal is not None and spec_equal.sensitivity(C) == pytest.approx(C * math.sqrt(2))
    s = ClusteredStrategy(weighting="samples")
    s.initialize({"a": np.zeros(3, dtype=np.float32)})
    assert s.release_spec(C) is None


def test_pack_then_unpack_is_the_plain_sum_within_bounds() -> None:
    strategy = _clustered()
    spec = strategy.release_spec(C)
    assert spec is not None
    contribs = _slot_contribs(9)
    packed, shapes = pack_contributions(contribs, spec, C)
    assert all(set(c) == {PACKED_NAME} for c in packed.values())
    total = sum(c[PACKED_NAME] for c in packed.values())
    sums = unpack_sum(total, spec, C, shapes, participants=123.0)
    true = PlaintextSum().aggregate(1, contribs, Channel()).sums
    np.testing.assert_allclose(sums["delta"], true["delta"], atol=1e-12)
    np.testing.assert_allclose(sums["count"], true["count"], atol=1e-12)
    np.testing.assert_array_equal(sums["weight"], sums["count"])  # the copy, never sent


def test_an_adversarial_device_moves_each_block_by_at_most_its_bound() -> None:
    spec = _clustered().release_spec(C)
    assert spec is not None
    honest = _slot_contribs(6, seed=3)
    evil = {**honest, 99: {"delta": np.full((K, D), 1e6), "weight": np.full(K, 1e6),
                           "count": np.full(K, 1e6)}}  # fmt: skip
    evil[99]["weight"] = evil[99]["count"].copy()
    a, shapes = pack_contributions(evil, spec, C)
    b, _ = pack_contributions(honest, spec, C)
    diff = sum(c[PACKED_NAME] for c in a.values()) - sum(c[PACKED_NAME] for c in b.values())
    assert np.linalg.norm(diff) <= spec.sensitivity(C) * (1 + 1e-12)
    moved = unpack_sum(diff, spec, C, shapes, participants=0.0)
    assert np.linalg.norm(moved["delta"]) <= C * (1 + 1e-12)
    assert np.linalg.norm(moved["count"]) <= 1.0 + 1e-12
    # In the packed space the count block moves by at most its share of C.
    assert np.linalg.norm(diff[K * D :]) <= 0.25 * C * (1 + 1e-12)


def test_names_outside_the_spec_or_inconsistent_copies_are_refused() -> None:
    spec = _clustered().release_spec(C)
    assert spec is not None
    contribs = _slot_contribs(3)
    leaky = {d: {**c, "loss": np.ones(1)} for d, c in contribs.items()}
    with pytest.raises(InvalidParameterError, match=r"\['loss'\] would be released without"):
        pack_contributions(leaky, spec, C)
    weighted = {d: {**c, "weight": 17.0 * c["count"]} for d, c in contribs.items()}
    with pytest.raises(InvalidParameterError, match=r"copy of 'count'.*weighting = 'uniform'"):
        pack_contributions(weighted, spec, C)
    wrong = {d: {**c, "delta": c["delta"][:, :5]} for d, c in contribs.items()}
    with pytest.raises(InvalidParameterError, match="planned for"):
        pack_contributions(wrong, spec, C)


# --- the noise of a cluster-keyed release -------------------------------------------------


def test_central_noise_on_slots_and_counts_has_the_stated_std() -> None:
    d = 4000
    strategy = _clustered(d=d)
    spec = strategy.release_spec(C)
    assert spec is not None
    rng = np.random.default_rng(1)
    contribs = {i: _slot(i % K, rng.normal(size=d) * 1e-3) for i in range(12)}
    s = CentralGaussianSum(
        PlaintextSum(), noise_multiplier=1.3, clipping_norm=C, delta=1e-5, sampling="fixed",
        population=list(contribs), spec=spec,
    )  # fmt: skip
    res = s.aggregate(1, contribs, Channel())
    true = PlaintextSum().aggregate(1, contribs, Channel()).sums
    std = s.noise_std()
    root = math.sqrt(1 + 0.25**2)
    # Fixed-size sampling: replace-one adjacency, sensitivity and noise doubled.
    assert std["delta"] == pytest.approx(2 * 1.3 * root * C)
    assert std["count"] == pytest.approx(2 * 1.3 * root / 0.25)
    assert (res.sums["delta"] - true["delta"]).std() == pytest.approx(std["delta"], rel=0.03)
    np.testing.assert_array_equal(res.sums["weight"], res.sums["count"])
    rec = res.privacy_records[0]
    assert rec.sensitivity == pytest.approx(2 * C * root)
    assert rec.sigma == pytest.approx(2 * 1.3 * C * root)
    assert rec.adjacency == "replace_one"
    assert rec.unit == "user" and rec.devices == tuple(str(i) for i in sorted(contribs))


def test_distributed_noise_on_slots_decodes_to_the_noisy_sum() -> None:
    spec = _clustered().release_spec(C)
    assert spec is not None
    contribs = _slot_contribs(8, seed=4)
    s = DistributedGaussianSum(
        SecureSumSettings(),  # keys from the seed: reproducible randomness
        noise_multiplier=0.8,
        clipping_norm=C,
        delta=1e-5,
        spec=spec,
        randomness="reproducible",
    )
    res = s.aggregate(2, contribs, Channel())
    true = PlaintextSum().aggregate(2, contribs, Channel()).sums
    assert res.sums["delta"].shape == (K, D) and res.sums["count"].shape == (K,)
    # Noise on the update sums ≈ z·√(1 + w²)·C per coordinate, all shares alive.
    noise = (res.sums["delta"] - true["delta"]).ravel()
    root = math.sqrt(1 + 0.25**2)
    assert noise.std() == pytest.approx(0.8 * root * C, rel=0.15)
    assert s.last_plan is not None and s.last_plan.dimension == K * D + K
    assert res.privacy_records[0].sensitivity == pytest.approx(C * root)
    assert res.privacy_records[0].adjacency == "zero_out"


def test_a_cluster_whose_noisy_count_is_too_small_keeps_its_model() -> None:
    s = _clustered(d=3, k=2)
    s.set_release_noise({"delta": 1.0, "count": 2.0})
    assert s.min_count == 6.0
    before = {k: v.copy() for k, v in s.models.items()}
    sums = {
        "delta": np.array([[1.0, 1.0, 1.0], [50.0, -50.0, 9.0]]),
        "count": np.array([10.0, 1.7]),  # slot 1: one device's worth of noise, ~0 devices
        "weight": np.array([10.0, 1.7]),
    }
    s.apply(1, sums)
    np.testing.assert_allclose(s.models["cluster/0"], before["cluster/0"] + 0.1)
    np.testing.assert_array_equal(s.models["cluster/1"], before["cluster/1"])


# --- MetaUA's release -------------------------------------------------------------------


def _metaua(weighting: str = "uniform") -> MetaUAStrategy:
    from secrelay.data.synthetic import make_synthetic

    ds = make_synthetic(n_users=6, samples_per_user=5, seed=0)
    spec = ModelSpec("lr", ds.schema, {})
    s = MetaUAStrategy(spec, MetaUAOptions(weighting=weighting))  # type: ignore[arg-type]
    s.initialize({"global": np.zeros(s.partition.size, dtype=np.float32)})
    return s


def test_metaua_release_covers_every_sum_and_keeps_the_count_public() -> None:
    assert _metaua("samples").release_spec(C) is None
    s = _metaua()
    spec = s.release_spec(C)
    assert spec is not None
    d, n_layers = s.partition.size, s.partition.num_layers
    contribution = client_contribution(
        np.full(d, 0.01), np.full(d, 0.02), np.array([0.6]), np.zeros((n_layers, 1)), 1.0,
        s.partition.layer_of(),
    )  # fmt: skip
    assert set(spec.names) == set(contribution)
    assert dict(spec.shapes) == {k: v.shape for k, v in contribution.items() if k != "count"}
    assert spec.public_counts == ("count",)
    # An honest device at θ_α = 0 (e = 1) with ‖Δ‖ <= C, ‖g‖ <= G, z <= Z is not clipped.
    packed, shapes = pack_contributions({0: contribution}, spec, C)
    back = unpack_sum(packed[0][PACKED_NAME], spec, C, shapes, participants=1.0)
    for name, value in contribution.items():
        np.testing.assert_allclose(back[name], value, atol=1e-12)


def test_metaua_divides_by_a_floored_noisy_weight_sum() -> None:
    s = _metaua()
    s.set_release_noise({"e": 0.5})
    assert s.e_floor == 1.5
    d, n_layers = s.partition.size, s.partition.num_layers
    sums = {
        "delta_e": np.full(d, 0.3),
        "delta_ez": np.zeros((1, d)),
        "e": np.full(n_layers, -0.2),  # noise drove it below 0
        "ez": np.zeros((n_layers, 1)),
        "grad": np.zeros(d),
        "count": np.array([4.0]),
    }
    stats = s.apply(1, sums)
    assert np.all(np.isfinite(s.models["global"])) and math.isfinite(stats["update_norm"])


# --- whole runs -------------------------------------------------------------------------


def _quiet(_: str) -> None:
    pass


def _relayrec(rounds: int = 2, collaboration: str = "clustered_fedprox", **privacy):
    return load_config(
        run={"name": "rr-dp", "seed": 1, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 30, "samples_per_user": 24, "n_items": 40}},
        split={"mode": "random", "alpha": 0.25},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1, "batch_size": 64},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": rounds, "sampling": "poisson", "sample_rate": 0.3},
        method={
            "name": "relayrec",
            "options": {
                "server_model_options": {"cin_layer_sizes": [4], "hidden_units": [8]},
                "meta_epochs": 1,
                "selector_epochs": 20,
                "num_clusters": 2,
                "collaboration": collaboration,
            },
        },
        privacy=privacy,
    )  # fmt: skip


USER = {"user_level_dp": True, "clipping_norm": 0.5, "noise_multiplier": 1.0}


def test_relayrec_under_user_and_example_dp_records_every_release(tmp_path: Path) -> None:
    cfg = _relayrec(**USER, dp_sgd=True, local_noise_multiplier=1.0)
    res = run(cfg, tmp_path / "r", progress=False, log=_quiet)
    ledger = PrivacyLedger.load(tmp_path / "r" / "privacy_ledger.jsonl")
    user = [r for r in ledger.records if r.unit == "user"]
    assert [r.round for r in user] == [1, 2]
    assert all(r.sensitivity == pytest.approx(0.5 * math.sqrt(1 + 0.25**2)) for r in user)
    example = [r for r in ledger.records if r.unit == "example"]
    assert len(example) == sum(rec["sampled"] - rec["dropped"] for rec in res.records[1:])
    assert all(r.mechanism.startswith("dp_sgd") for r in example)
    report = audit(tmp_path / "r", comparison=None, write=False).to_dict()
    assert report["user_level"]["clipping_norm"] == 0.5
    assert report["user_level"]["sensitivity"] == [pytest.approx(0.5 * math.sqrt(1 + 0.25**2))]


def test_relayrec_budget_refuses_and_resume_does_not_double_count(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    run(_relayrec(rounds=3, **USER), rd, progress=False, log=_quiet, stop_after=1)
    one = PrivacyLedger.load(rd / "privacy_ledger.jsonl")
    assert len(one) == 1
    resume(rd, progress=False, log=_quiet)
    assert [r.round for r in PrivacyLedger.load(rd / "privacy_ledger.jsonl").records] == [1, 2, 3]
    eps1 = one.epsilon(delta=1e-5, unit="user")
    with pytest.raises(BudgetExceededError, match="refused round 2"):
        run(_relayrec(rounds=3, **USER, user_epsilon=eps1 * 1.01), rd, overwrite=True,
            progress=False, log=_quiet)  # fmt: skip


def test_relayrec_shared_update_ablation_runs_under_user_dp(tmp_path: Path) -> None:
    run(_relayrec(collaboration="fedavg", **USER), tmp_path / "a", progress=False, log=_quiet)
    ledger = PrivacyLedger.load(tmp_path / "a" / "privacy_ledger.jsonl")
    assert [r.sensitivity for r in ledger.records] == [0.5, 0.5]  # DP-FedAvg: C
    with pytest.raises(ConfigError, match="releases none"):
        run(_relayrec(collaboration="standalone", **USER), tmp_path / "b", progress=False,
            log=_quiet)  # fmt: skip


def test_relayrec_weighting_option_and_dp_choose_the_strategy_weights() -> None:
    from types import SimpleNamespace

    from secrelay.relay.relayrec import RelayRecMethod, RelayRecOptions

    def weighting(options: dict, **privacy) -> str:
        m = RelayRecMethod.__new__(RelayRecMethod)
        m.options = RelayRecOptions.from_mapping(options)
        m.ctx = SimpleNamespace(config=load_config(None, privacy=privacy))  # type: ignore[assignment]
        return m._strategy().weighting  # type: ignore[attr-defined,no-any-return]

    assert weighting({}) == "samples"
    assert weighting({"weighting": "uniform"}) == "uniform"
    assert weighting({"collaboration": "fedavg", "weighting": "uniform"}) == "uniform"
    assert weighting({}, **USER) == "uniform"  # user-level DP: sample counts are data


def _metaua_config(**privacy):
    return load_config(
        run={"name": "mu-dp", "seed": 2, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 24, "samples_per_user": 20}},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.05},
        federated={"rounds": 2, "sampling": "poisson", "sample_rate": 0.4},
        method={"name": "metaua", "options": {"weighting": "uniform"}},
        privacy=privacy,
    )


def test_metaua_under_dp_records_user_and_example_releases(tmp_path: Path) -> None:
    cfg = _metaua_config(**USER, dp_sgd=True, local_noise_multiplier=1.0)
    run(cfg, tmp_path / "m", progress=False, log=_quiet)
    ledger = PrivacyLedger.load(tmp_path / "m" / "privacy_ledger.jsonl")
    user = [r for r in ledger.records if r.unit == "user"]
    assert [r.round for r in user] == [1, 2]
    assert all(r.sensitivity == pytest.approx(0.5 * math.sqrt(2 + 3 * 0.5**2)) for r in user)
    assert any(r.unit == "example" for r in ledger.records)


def test_metaua_refuses_dp_sgd_alone_and_sample_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="g_k and the attributes z_k"):
        run(_metaua_config(dp_sgd=True, local_noise_multiplier=1.0), tmp_path / "a",
            progress=False, log=_quiet)  # fmt: skip
    cfg = _metaua_config(**USER)
    cfg = cfg.replace(method={"name": "metaua", "options": {"weighting": "samples"}})
    with pytest.raises(ConfigError, match=r"method\.options\.weighting = 'uniform'"):
        run(cfg, tmp_path / "b", progress=False, log=_quiet)


def test_relay_methods_under_secure_aggregation_add_distributed_noise(tmp_path: Path) -> None:
    # Reproducible: a secure draw of fewer than 2 devices would abort the SecAgg round.
    secure = {**USER, "secure_aggregation": True, "randomness": "reproducible"}
    run(_relayrec(**secure), tmp_path / "r", progress=False, log=_quiet)
    records = PrivacyLedger.load(tmp_path / "r" / "privacy_ledger.jsonl").records
    assert [r.round for r in records] == [1, 2]
    assert {r.mechanism for r in records} == {"dp_fedavg[distributed_discrete_gaussian]"}
    assert all(r.sensitivity == pytest.approx(0.5 * math.sqrt(1 + 0.25**2)) for r in records)
    assert all(r.sample_rate is None for r in records)  # no amplification against the server
    run(_metaua_config(**secure), tmp_path / "m", progress=False, log=_quiet)
    records = PrivacyLedger.load(tmp_path / "m" / "privacy_ledger.jsonl").records
    assert {r.mechanism for r in records} == {"dp_fedavg[distributed_discrete_gaussian]"}
    assert all(r.sensitivity == pytest.approx(0.5 * math.sqrt(2.75)) for r in records)
