"""Issue 17 part A's RelayRec levers: FedAdagrad per cluster and a cluster-balanced
selector."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import ConfigError, InvalidParameterError
from secrelay.federated.aggregation import SumResult
from secrelay.federated.clustered import ClusteredStrategy
from secrelay.relay.relayrec import RelayRecOptions, train_selector
from secrelay.relay.relayrec.selector import class_weights
from secrelay.relay.relayrec.strategy import _make_strategy


def _sums(delta, weight, count):  # type: ignore[no-untyped-def]
    return SumResult(
        {
            "delta": np.asarray(delta, dtype=np.float64),
            "weight": np.asarray(weight, dtype=np.float64),
            "count": np.asarray(count, dtype=np.float64),
        },
        (0,),
    )


def test_adagrad_per_cluster_keeps_one_accumulator_per_key():
    s = ClusteredStrategy(server_optimizer="adagrad", server_lr=0.1, tau=1e-3)
    s.initialize({"a": np.zeros(2), "b": np.ones(2)})
    # Round 1: a's mean update (1, -2); b has no device and must not move or accumulate.
    s.aggregate(1, _sums([[2.0, -4.0], [0.0, 0.0]], [2.0, 0.0], [2.0, 0.0]))
    step1 = 0.1 * np.array([1.0, -2.0]) / (np.abs([1.0, -2.0]) + 1e-3)
    np.testing.assert_allclose(s.models["a"], step1, rtol=1e-6)
    np.testing.assert_array_equal(s.models["b"], [1.0, 1.0])
    assert "b" not in s.v
    # Round 2: a's v grows to 1² + 1² (first coordinate): its step shrinks by √2.
    s.aggregate(2, _sums([[1.0, 0.0], [3.0, 3.0]], [1.0, 1.0], [1.0, 1.0]))
    v = np.array([2.0, 4.0])
    np.testing.assert_allclose(
        s.models["a"], step1 + 0.1 * np.array([1.0, 0.0]) / (np.sqrt(v) + 1e-3), rtol=1e-6
    )
    np.testing.assert_allclose(s.models["b"], 1.0 + 0.1 * 3.0 / (3.0 + 1e-3), rtol=1e-6)
    # The accumulators survive a checkpoint.
    t = ClusteredStrategy(server_optimizer="adagrad", server_lr=0.1)
    t.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(t.v["a"], s.v["a"])


def test_sgd_server_step_is_unchanged_by_default():
    s = ClusteredStrategy()
    s.initialize({"a": np.zeros(1)})
    s.aggregate(1, _sums([[3.0]], [2.0], [2.0]))
    np.testing.assert_allclose(s.models["a"], [1.5])
    assert s.v == {}


def test_class_weights_balance_cluster_sizes():
    w = class_weights(np.array([0] * 90 + [1] * 10), 3)
    np.testing.assert_allclose(w, [100 / (2 * 90), 100 / (2 * 10), 0.0])


def test_balanced_selector_stops_sending_everyone_to_the_big_cluster():
    rng = np.random.default_rng(0)
    n_big, n_small = 950, 50
    x = np.concatenate([rng.normal(0.0, 1.0, (n_big, 4)), rng.normal(0.5, 1.0, (n_small, 4))])
    y = np.array([0] * n_big + [1] * n_small)
    plain, _ = train_selector(x, y, 2, epochs=200, seed=0)
    balanced, _ = train_selector(x, y, 2, epochs=200, seed=0, balance=True)

    def small_recall(w) -> float:  # type: ignore[no-untyped-def]
        from secrelay.relay.relayrec.selector import selector_logits

        return float((selector_logits(w, x[n_big:]).argmax(axis=1) == 1).mean())

    assert small_recall(plain) < 0.2
    assert small_recall(balanced) > 0.7


def test_relayrec_options_build_the_per_cluster_optimizer():
    opts = RelayRecOptions.from_mapping({"server_optimizer": "adagrad"})
    strat = _make_strategy(opts)
    assert isinstance(strat, ClusteredStrategy)
    assert strat.server_optimizer == "adagrad" and strat.server_lr == 0.01
    assert RelayRecOptions.from_mapping({}).effective_server_lr == 1.0
    with pytest.raises(ConfigError, match="server_optimizer applies to the clustered"):
        RelayRecOptions.from_mapping({"server_optimizer": "adagrad", "collaboration": "fedavg"})
    with pytest.raises(ConfigError, match="server_lr must be > 0"):
        RelayRecOptions.from_mapping({"server_lr": 0.0})
    with pytest.raises(InvalidParameterError, match="server_optimizer"):
        ClusteredStrategy(server_optimizer="adam")  # type: ignore[arg-type]


def test_server_momentum_per_cluster_is_heavy_ball_and_resumes():
    s = ClusteredStrategy(server_lr=0.5, server_momentum=0.5)
    s.initialize({"a": np.zeros(1), "b": np.zeros(1)})
    s.aggregate(1, _sums([[2.0], [0.0]], [1.0, 0.0], [1.0, 0.0]))  # a: Δ = 2; b empty
    np.testing.assert_allclose(s.models["a"], [1.0])  # m = 2, w = 0.5·2
    assert "b" not in s.v and s.models["b"][0] == 0.0  # an empty key's velocity is not advanced
    # Resume from a checkpoint half-way: the velocity comes back with the models.
    t = ClusteredStrategy(server_lr=0.5, server_momentum=0.5)
    t.load_state_dict(s.state_dict())
    for strat in (s, t):
        strat.aggregate(2, _sums([[2.0], [4.0]], [1.0, 1.0], [1.0, 1.0]))
    # a: m = 0.5·2 + 2 = 3, w = 1 + 1.5; b's first update: m = 4, w = 2.
    np.testing.assert_allclose(s.models["a"], [2.5])
    np.testing.assert_allclose(s.models["b"], [2.0])
    np.testing.assert_array_equal(t.models["a"], s.models["a"])
    np.testing.assert_array_equal(t.v["a"], s.v["a"])


def test_server_momentum_is_refused_where_it_does_not_apply():
    opts = RelayRecOptions.from_mapping({"server_momentum": 0.9, "server_lr": 0.1})
    strat = _make_strategy(opts)
    assert isinstance(strat, ClusteredStrategy) and strat.server_momentum == 0.9
    for bad in (
        {"server_momentum": 1.0},
        {"server_momentum": -0.1},
        {"server_momentum": 0.5, "server_optimizer": "adagrad"},
        {"server_momentum": 0.5, "collaboration": "fedprox"},
    ):
        with pytest.raises(ConfigError, match="server_momentum"):
            RelayRecOptions.from_mapping(bad)
    with pytest.raises(InvalidParameterError, match="server_momentum"):
        ClusteredStrategy(server_optimizer="adagrad", server_momentum=0.5)
