"""MetaUA: sums-based aggregate and meta-gradient vs per-client autograd, finite
differences, θ_s ∈ (0, 1), the device contribution, options, and an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.data import Field, Schema
from secrelay.data.dataset import CTRDataset
from secrelay.experiment import run
from secrelay.federated.aggregation import PlaintextSum
from secrelay.federated.client import DeviceData, ModelSpec, PlainTrainer
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import FedAvg
from secrelay.federated.transcript import Channel
from secrelay.relay.metaua import (
    ATTRIBUTE_CLIP,
    ATTRIBUTES,
    GLOBAL_KEY,
    THETA_ALPHA_KEY,
    LayerPartition,
    MetaUAOptions,
    MetaUAStrategy,
    MetaUASums,
    aggregate_from_sums,
    client_contribution,
    direct_meta_gradient,
    meta_gradient_from_sums,
    normalise_attributes,
    server_step,
)
from secrelay.training import TrainConfig

OPTS = {
    "sgd": {"optimizer": "sgd", "lr": 0.7, "beta1": 0.0, "beta2": 0.99, "tau": 1e-3},
    "adagrad": {"optimizer": "adagrad", "lr": 0.05, "beta1": 0.0, "beta2": 0.99, "tau": 1e-2},
    "adam": {"optimizer": "adam", "lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-2},
}


def _problem(seed: int = 0, k: int = 5, m: int = 3):
    rng = np.random.default_rng(seed)
    layer_of = np.repeat(np.arange(3), [4, 6, 2])
    d = layer_of.size
    deltas = rng.normal(size=(k, d))
    zs = rng.uniform(0, 2, size=(k, m))
    base = rng.integers(5, 50, size=k).astype(float)
    theta_alpha = rng.normal(scale=0.5, size=(3, m))
    theta_s = rng.normal(size=3)
    w_prev = rng.normal(size=d)
    g = rng.normal(size=d)
    state = {"m": rng.normal(scale=0.1, size=d), "v": rng.uniform(0.1, 1.0, size=d)}
    return layer_of, deltas, zs, base, theta_alpha, theta_s, w_prev, g, state


def _sums(layer_of, deltas, zs, base, theta_alpha, grads=None):
    total: dict[str, np.ndarray] = {}
    for i in range(len(deltas)):
        g = np.zeros(deltas.shape[1]) if grads is None else grads[i]
        c = client_contribution(deltas[i], g, zs[i], theta_alpha, base[i], layer_of)
        for name, v in c.items():
            total[name] = total.get(name, 0) + v
    return total


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_sums_based_aggregate_and_meta_gradient_equal_direct(optimizer):
    layer_of, deltas, zs, base, ta, ts, w_prev, g, state = _problem()
    partition = LayerPartition(("a", "b", "c"), ((0, 4), (4, 10), (10, 12)))
    np.testing.assert_array_equal(partition.layer_of(), layer_of)
    sums = MetaUASums.from_sums(_sums(layer_of, deltas, zs, base, ta), partition, zs.shape[1])
    w_direct, gs_direct, ga_direct = direct_meta_gradient(
        deltas, zs, base, g, ts, ta, w_prev, state, layer_of, **OPTS[optimizer]
    )
    import torch

    delta = aggregate_from_sums(sums, ts, layer_of)
    step, _ = server_step(torch.as_tensor(delta), state, **OPTS[optimizer])
    np.testing.assert_allclose(w_prev + step.numpy(), w_direct, rtol=1e-10, atol=1e-12)
    gs, ga = meta_gradient_from_sums(sums, g, ts, ta, w_prev, state, layer_of, **OPTS[optimizer])
    np.testing.assert_allclose(gs, gs_direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ga, ga_direct, rtol=1e-9, atol=1e-12)
    assert np.abs(ga).sum() > 0 and np.abs(gs).sum() > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_meta_gradient_matches_finite_differences(optimizer):
    layer_of, deltas, zs, base, ta, ts, w_prev, g, state = _problem(seed=3)
    partition = LayerPartition(("a", "b", "c"), ((0, 4), (4, 10), (10, 12)))
    sums = MetaUASums.from_sums(_sums(layer_of, deltas, zs, base, ta), partition, zs.shape[1])
    gs, ga = meta_gradient_from_sums(sums, g, ts, ta, w_prev, state, layer_of, **OPTS[optimizer])

    def loss(s, a):
        w, _, _ = direct_meta_gradient(
            deltas, zs, base, g, s, a, w_prev, state, layer_of, **OPTS[optimizer]
        )
        return float(g @ w)

    h = 1e-6
    for i in range(ts.size):
        e = np.zeros_like(ts)
        e[i] = h
        fd = (loss(ts + e, ta) - loss(ts - e, ta)) / (2 * h)
        assert fd == pytest.approx(gs[i], rel=1e-5, abs=1e-8)
    for idx in np.ndindex(ta.shape):
        e = np.zeros_like(ta)
        e[idx] = h
        fd = (loss(ts, ta + e) - loss(ts, ta - e)) / (2 * h)
        assert fd == pytest.approx(ga[idx], rel=1e-5, abs=1e-8)


def test_meta_gradient_is_finite_where_adagrad_state_is_zero():
    layer_of, deltas, zs, base, ta, ts, w_prev, g, _ = _problem()
    deltas[:, 0] = 0.0  # an untouched coordinate (e.g. an unseen embedding row)
    partition = LayerPartition(("a", "b", "c"), ((0, 4), (4, 10), (10, 12)))
    sums = MetaUASums.from_sums(_sums(layer_of, deltas, zs, base, ta), partition, zs.shape[1])
    gs, ga = meta_gradient_from_sums(sums, g, ts, ta, w_prev, {}, layer_of, **OPTS["adagrad"])
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(ga))


def test_zero_theta_alpha_is_sample_weighted_fedavg():
    layer_of, deltas, zs, base, _, _, _, _, _ = _problem()
    partition = LayerPartition(("a", "b", "c"), ((0, 4), (4, 10), (10, 12)))
    ta = np.zeros((3, zs.shape[1]))
    sums = MetaUASums.from_sums(_sums(layer_of, deltas, zs, base, ta), partition, zs.shape[1])
    agg = aggregate_from_sums(sums, np.zeros(3), layer_of)  # θ_s = 0.5
    np.testing.assert_allclose(agg, 0.5 * (base[:, None] * deltas).sum(0) / base.sum())


def test_sums_validation_names_the_problem():
    partition = LayerPartition(("a",), ((0, 4),))
    good = client_contribution(
        np.ones(4), np.ones(4), np.ones(2), np.zeros((1, 2)), 1.0, partition.layer_of()
    )
    with pytest.raises(InvalidParameterError, match="missing"):
        MetaUASums.from_sums({k: v for k, v in good.items() if k != "ez"}, partition, 2)
    with pytest.raises(InvalidParameterError, match="delta_ez"):
        MetaUASums.from_sums({**good, "delta_ez": np.ones((3, 4))}, partition, 2)


def test_normalised_attributes_are_bounded():
    raw = {
        "sample_count": 1e3,
        "local_loss": float("inf"),
        "grad_norm": 0.0,
        "loss_ratio": 0.5,
        "positive_rate": 0.25,
        "unique_features": 99.0,
    }
    z = normalise_attributes(raw, ATTRIBUTES)
    assert np.all((z >= 0) & (z <= ATTRIBUTE_CLIP))
    assert z[0] == pytest.approx(np.log1p(1e3)) and z[1] == ATTRIBUTE_CLIP
    assert z[3] == 0.5 and z[4] == 0.25 and z[5] == pytest.approx(np.log1p(99))
    assert normalise_attributes({"sample_count": 1e9}, ["sample_count"])[0] == ATTRIBUTE_CLIP


def test_options_validation_names_keys():
    with pytest.raises(ConfigError, match=r"method\.options\.attributes"):
        MetaUAOptions.from_mapping({"attributes": ["shoe_size"]})
    with pytest.raises(ConfigError, match=r"method\.options\.meta_lr"):
        MetaUAOptions.from_mapping({"meta_lr": 0})
    with pytest.raises(ConfigError, match=r"method\.options\.server_scale_init"):
        MetaUAOptions.from_mapping({"server_scale_init": 1.0})
    with pytest.raises(ConfigError, match=r"method\.options\.bogus"):
        MetaUAOptions.from_mapping({"bogus": 1})
    assert MetaUAOptions.from_mapping({"attributes": "positive_rate"}).attributes == (
        "positive_rate",
    )


# --- the strategy on a tiny federation --------------------------------------------------


def _schema() -> Schema:
    return Schema(
        (Field("user_id", "user", 12), Field("item_id", "item", 9), Field("cat", "item", 4)),
        user_id_field="user_id",
    )


def _devices(n: int = 6, rows: int = 16, seed: int = 0) -> dict[int, DeviceData]:
    rng = np.random.default_rng(seed)
    out = {}
    for d in range(n):
        x = np.stack(
            [np.full(rows, d + 1), rng.integers(1, 9, rows), rng.integers(1, 4, rows)], axis=1
        )
        y = (rng.random(rows) < 0.2 + 0.1 * d).astype(np.float32)
        y[:2] = [0.0, 1.0]
        ds = CTRDataset(_schema(), x, y, np.full(rows, d), np.arange(rows))
        out[d] = DeviceData(d, ds.subset(np.arange(12)), ds.subset(np.arange(12, rows)))
    return out


def _metaua_loop(options: MetaUAOptions, *, model: str = "dnn", seed: int = 0):
    spec = ModelSpec(model, _schema(), (("embedding_dim", 4), ("hidden_units", (8,))))
    if model == "lr":
        spec = ModelSpec("lr", _schema(), (("embedding_dim", 4),))
    strategy = MetaUAStrategy(spec, options)
    init = np.random.default_rng(1).normal(scale=0.1, size=spec.num_parameters())
    strategy.initialize({GLOBAL_KEY: init.astype(np.float32)})
    trainer = PlainTrainer(TrainConfig(epochs=1, batch_size=4, lr=0.1, optimizer="sgd"))
    program = strategy.client_program(spec, trainer)
    loop = FederatedLoop(
        strategy,
        program,
        _devices(),
        spec,
        config=RoundConfig(clients_per_round=4),
        seed=seed,
        channel=Channel(),
    )
    return loop, spec, init


def test_theta_s_stays_in_open_unit_interval_under_large_meta_steps():
    opts = MetaUAOptions(
        attributes=("local_loss", "positive_rate"),
        meta_lr=1e4,
        server_optimizer="sgd",
        server_lr=1.0,
    )
    loop, _, _ = _metaua_loop(opts)
    moved = False
    for t in range(1, 6):
        rec = loop.run_round(t, evaluate=False)
        scale = loop.strategy.server_scale
        assert np.all(scale > 0) and np.all(scale < 1), scale
        moved |= "meta_grad_norm_s" in rec.server and rec.server["meta_grad_norm_s"] > 0
    assert moved
    assert not np.allclose(loop.strategy.server_scale, 0.5)
    assert np.all(np.abs(loop.strategy.theta_alpha) <= 5.0)


def test_devices_send_only_the_named_sums_and_server_state_is_from_sums():
    opts = MetaUAOptions(attributes=("local_loss", "sample_count"))
    loop, spec, _ = _metaua_loop(opts)
    loop.run_round(1, evaluate=False)
    from secrelay.federated.messages import ContributionUpload, ModelDownload

    ups = loop.channel.transcript.messages(kind=ContributionUpload, round=1)
    assert ups and all(
        set(m.contribution) == {"delta_e", "delta_ez", "e", "ez", "grad", "count"} for m in ups
    )
    downs = loop.channel.transcript.messages(kind=ModelDownload, round=1)
    assert set(downs[0].models) == {GLOBAL_KEY, THETA_ALPHA_KEY}
    # Replaying the server on the summed uploads gives the same model.
    strategy2 = MetaUAStrategy(spec, opts)
    strategy2.initialize({GLOBAL_KEY: downs[0].models[GLOBAL_KEY]})
    total = {k: sum(np.asarray(m.contribution[k]) for m in ups) for k in ups[0].contribution}
    strategy2.apply(1, total)
    np.testing.assert_array_equal(strategy2.models[GLOBAL_KEY], loop.strategy.models[GLOBAL_KEY])


def test_metaua_without_learning_equals_fedavg():
    """θ_α = 0, θ_s = 0.5 fixed, SGD server lr 2 = sample-weighted FedAvg (lr 1)."""
    opts = MetaUAOptions(
        learn_weights=False,
        learn_server_scale=False,
        server_optimizer="sgd",
        server_lr=2.0,
        server_scale_init=0.5,
    )
    loop, spec, init = _metaua_loop(opts)
    fedavg = FedAvg()
    fedavg.initialize({GLOBAL_KEY: init.astype(np.float32)})
    trainer = PlainTrainer(TrainConfig(epochs=1, batch_size=4, lr=0.1, optimizer="sgd"))
    ref = FederatedLoop(
        fedavg,
        fedavg.client_program(spec, trainer),
        _devices(),
        spec,
        config=RoundConfig(clients_per_round=4),
        seed=0,
        channel=Channel(),
        sum_protocol=PlaintextSum(),
    )
    for t in (1, 2, 3):
        loop.run_round(t, evaluate=False)
        ref.run_round(t, evaluate=False)
    np.testing.assert_allclose(
        loop.strategy.models[GLOBAL_KEY], ref.strategy.models[GLOBAL_KEY], rtol=1e-5, atol=1e-6
    )


def test_end_to_end_run_and_resume(tmp_path):
    cfg = RunConfig.from_dict(
        {
            "run": {"name": "metaua-tiny", "seed": 0, "progress": False},
            "data": {"name": "synthetic", "options": {"n_users": 30, "samples_per_user": 20}},
            "model": {"name": "dcnv2", "embedding_dim": 4, "options": {"hidden_units": [8]}},
            "cloud": {"epochs": 1, "batch_size": 64},
            "local": {"epochs": 1, "batch_size": 15, "lr": 0.01, "optimizer": "sgd"},
            "federated": {"rounds": 3, "clients_per_round": 4},
            "method": {
                "name": "metaua",
                "options": {"attributes": ["local_loss", "positive_rate"], "server_lr": 0.01},
            },
            # resume equals uninterrupted only with reproducible device samples
            "privacy": {"randomness": "reproducible"},
        }
    )
    res = run(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    assert [r["round"] for r in res.records] == [0, 1, 2, 3]
    assert 0 < res.final["final"]["server/theta_s_mean"] < 1
    assert np.isfinite(res.final["final"]["gauc"])
    # Resume from round 1 reproduces the uninterrupted run.
    run(cfg, tmp_path / "b", progress=False, log=lambda s: None, stop_after=1)
    from secrelay.experiment import resume

    res_b = resume(tmp_path / "b", progress=False, log=lambda s: None)
    assert res_b.records[-1]["gauc"] == pytest.approx(res.records[-1]["gauc"], abs=1e-9)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["method"] == "metaua"


def test_query_reduction_sum_scales_the_meta_step_by_the_client_count():
    steps = {}
    for reduction in ("mean", "sum"):
        opts = MetaUAOptions(
            attributes=("local_loss",), server_optimizer="sgd", query_reduction=reduction
        )
        loop, _, _ = _metaua_loop(opts)
        s0 = loop.strategy.theta_s.copy()
        loop.run_round(1, evaluate=False)
        loop.run_round(2, evaluate=False)
        steps[reduction] = loop.strategy.theta_s - s0
    assert np.abs(steps["mean"]).sum() > 0
    np.testing.assert_allclose(steps["sum"], 4 * steps["mean"], rtol=1e-6)
    with pytest.raises(ConfigError, match=r"method\.options\.query_reduction"):
        MetaUAOptions.from_mapping({"query_reduction": "max"})
