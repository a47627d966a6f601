"""Strategy maths against hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import InvalidParameterError
from secrelay.federated.aggregation import SumResult
from secrelay.federated.client import DeviceTask, LocalResult
from secrelay.federated.strategies import (
    ClusteredStrategy,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedNova,
    SlotRule,
    make_strategy,
)


def _result(delta, n, steps=1, key="global"):
    d = np.asarray(delta, dtype=np.float32)
    return LocalResult(key, np.zeros_like(d), d, n, steps, 0.0)


def _task():
    return DeviceTask(device_id=0, round=1, models={}, seed=0)


def _sum(strategy, results):
    rule = strategy.contribution_rule()
    contribs = [rule.contribute(r, _task()) for r in results]
    sums = {k: np.sum([c[k] for c in contribs], axis=0) for k in contribs[0]}
    return SumResult(sums, tuple(range(len(results))))


def test_fedavg_weighted_mean_of_three_updates():
    s = FedAvg()
    s.initialize({"global": np.array([1.0, 1.0])})
    results = [_result([1, 0], 1), _result([0, 3], 2), _result([3, 3], 3)]
    s.aggregate(1, _sum(s, results))
    # (1*[1,0] + 2*[0,3] + 3*[3,3]) / 6 = [10/6, 15/6]
    np.testing.assert_allclose(s.models["global"], [1 + 10 / 6, 1 + 15 / 6], rtol=1e-6)


def test_fedavg_uniform_weighting_and_server_lr():
    s = FedAvg(server_lr=0.5, weighting="uniform")
    s.initialize({"global": np.zeros(2)})
    s.aggregate(1, _sum(s, [_result([2, 0], 1), _result([0, 4], 100)]))
    np.testing.assert_allclose(s.models["global"], [0.5, 1.0])


def test_fednova_normalises_by_local_steps():
    s = FedNova()
    s.initialize({"global": np.zeros(1)})
    # p = (1/2, 1/2); a = (1, 4); tau_eff = 2.5; d = (2/1, 4/4) -> mean 1.5 -> 3.75
    s.aggregate(1, _sum(s, [_result([2.0], 5, steps=1), _result([4.0], 5, steps=4)]))
    np.testing.assert_allclose(s.models["global"], [3.75])


def test_fedadagrad_first_step_hand_computed():
    s = FedAdagrad(server_lr=0.1, tau=0.01)
    s.initialize({"global": np.zeros(2)})
    s.aggregate(1, _sum(s, [_result([0.2, -0.4], 1)]))
    # m = delta; v = delta^2; step = 0.1 * delta / (|delta| + 0.01)
    expected = 0.1 * np.array([0.2, -0.4]) / (np.array([0.2, 0.4]) + 0.01)
    np.testing.assert_allclose(s.models["global"], expected, rtol=1e-5)
    s.aggregate(2, _sum(s, [_result([0.2, -0.4], 1)]))
    v = 2 * np.array([0.04, 0.16])
    expected2 = expected + 0.1 * np.array([0.2, -0.4]) / (np.sqrt(v) + 0.01)
    np.testing.assert_allclose(s.models["global"], expected2, rtol=1e-5)


def test_fedadam_uses_momentum_and_ema():
    s = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    s.initialize({"global": np.zeros(1)})
    s.aggregate(1, _sum(s, [_result([1.0], 1)]))
    m, v = 0.1, 0.01
    np.testing.assert_allclose(s.models["global"], [0.1 * m / (np.sqrt(v) + 1e-3)], rtol=1e-5)
    state = s.state_dict()
    t = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    t.initialize({"global": np.zeros(1)})
    t.load_state_dict(state)
    s.aggregate(2, _sum(s, [_result([1.0], 1)]))
    t.aggregate(2, _sum(t, [_result([1.0], 1)]))
    np.testing.assert_array_equal(s.models["global"], t.models["global"])


def test_clustered_never_mixes_clusters():
    s = ClusteredStrategy()
    s.initialize({"a": np.zeros(2), "b": np.full(2, 10.0)})
    results = [
        _result([1, 1], 1, key="a"),
        _result([3, 3], 3, key="a"),
        _result([-5, 5], 2, key="b"),
    ]
    stats = s.aggregate(1, _sum(s, results))
    np.testing.assert_allclose(s.models["a"], [2.5, 2.5])
    np.testing.assert_allclose(s.models["b"], [5.0, 15.0])
    assert stats["count/a"] == 2 and stats["count/b"] == 1


def test_clustered_slot_rule_hides_choice_in_zero_slots():
    rule = SlotRule(("a", "b", "c"))
    c = rule.contribute(_result([1.0, 2.0], 4, key="b"), _task())
    assert c["delta"].shape == (3, 2)
    np.testing.assert_array_equal(c["delta"][0], 0)
    np.testing.assert_array_equal(c["delta"][2], 0)
    np.testing.assert_array_equal(c["weight"], [0, 4, 0])


def test_empty_cluster_with_quantisation_noise_keeps_its_model():
    # Regression: under SecAgg an empty slot's weight sums to ~1e-4, not 0.
    s = ClusteredStrategy()
    s.initialize({"a": np.zeros(1), "b": np.ones(1)})
    sums = {
        "delta": np.array([[0.5], [3e-4]]),
        "weight": np.array([1.0, 2e-4]),
        "count": np.array([1.0, 1e-4]),
    }
    s.aggregate(1, SumResult(sums, (0,)))
    np.testing.assert_array_equal(s.models["b"], [1.0])
    np.testing.assert_allclose(s.models["a"], [0.5])


def test_cluster_without_devices_keeps_its_model():
    s = ClusteredStrategy()
    s.initialize({"a": np.zeros(1), "b": np.ones(1)})
    s.aggregate(1, _sum(s, [_result([1.0], 1, key="a")]))
    np.testing.assert_array_equal(s.models["b"], [1.0])


def test_make_strategy_errors_name_the_problem():
    with pytest.raises(InvalidParameterError, match="unknown strategy 'fedfoo'"):
        make_strategy("fedfoo")
    with pytest.raises(InvalidParameterError, match="server_lr"):
        make_strategy("fedavg", server_lr=0.0)
    with pytest.raises(InvalidParameterError, match="strategy 'fedavg'"):
        make_strategy("fedavg", nonsense=1)
