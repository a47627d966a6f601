"""DP-FTRL tree aggregation: noise, sensitivity and accounting against dp_accounting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from protocols.dp import (
    GaussianEvent,
    PoissonSampledEvent,
    PRVAccountant,
    RDPAccountant,
    TreeAggregationEvent,
    TreeAggregationNoise,
    gaussian_increment,
    make_accountant,
    stream_sensitivity_squared,
    tree_depth,
)
from protocols.dp.accountants import DEFAULT_RDP_ORDERS, _gaussian_epsilon
from protocols.errors import InvalidParameterError, UnsupportedEventError

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp  # noqa: E402


def _dpa_epsilon(event: object, delta: float) -> float:
    # dp_accounting states tree aggregation under "replace special" (zero-out: the
    # record replaced by a special one), the relation the FTRL sum records.
    acc = dpa_rdp.RdpAccountant(
        list(DEFAULT_RDP_ORDERS),
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL,
    )
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 8, 50, 64, 1000])
def test_single_participation_depth_matches_dp_accounting(steps):
    z = 3.0
    ours = TreeAggregationEvent(noise_multiplier=z, steps=steps)
    assert ours.sensitivity_squared == tree_depth(steps)
    orders = np.asarray(DEFAULT_RDP_ORDERS)
    reference = dpa_rdp._compute_rdp_single_epoch_tree_aggregation(z, steps, orders)
    mu2 = 1.0 / ours.gaussian_equivalent().noise_multiplier ** 2
    np.testing.assert_allclose(orders * mu2 / 2.0, reference, rtol=1e-12)
    ev = dp_event.SingleEpochTreeAggregationDpEvent(z, steps)
    mine = RDPAccountant().compose(ours).get_epsilon(delta=1e-5)
    assert mine == pytest.approx(_dpa_epsilon(ev, 1e-5), rel=1e-6)


@pytest.mark.parametrize(("epochs", "per_epoch"), [(2, 8), (5, 10), (3, 33)])
def test_restarts_match_self_composed_single_epoch_trees(epochs, per_epoch):
    z = 4.0
    ours = TreeAggregationEvent(
        noise_multiplier=z,
        steps=epochs * per_epoch,
        max_participations=epochs,
        min_separation=per_epoch,
        restart_every=per_epoch,
    )
    assert ours.sensitivity_squared == epochs * tree_depth(per_epoch)
    ref = dp_event.SelfComposedDpEvent(
        dp_event.SingleEpochTreeAggregationDpEvent(z, per_epoch), epochs
    )
    mine = RDPAccountant().compose(ours).get_epsilon(delta=1e-5)
    assert mine == pytest.approx(_dpa_epsilon(ref, 1e-5), rel=1e-6)


def _brute_force(tree: TreeAggregationNoise, steps: int, k: int, b: int) -> float:
    best = 0.0
    for n in range(1, k + 1):
        for pattern in itertools.combinations(range(1, steps + 1), n):
            if all(y - x >= b for x, y in itertools.pairwise(pattern)):
                best = max(best, tree.sensitivity_squared(pattern, upto=steps))
    return best


@pytest.mark.parametrize("steps", [5, 8, 12])
@pytest.mark.parametrize(("k", "b"), [(1, 1), (2, 1), (2, 3), (3, 2), (3, 4)])
@pytest.mark.parametrize("restart", [None, 4])
def test_bound_covers_every_pattern_and_is_exact_for_one(steps, k, b, restart):
    tree = TreeAggregationNoise(restart_every=restart)
    exact = _brute_force(tree, steps, k, b)
    bound = tree.sensitivity_bound(steps=steps, max_participations=k, min_separation=b)
    assert bound >= exact
    if k == 1:
        assert bound == exact


def test_pattern_sensitivity_counts_completed_nodes():
    tree = TreeAggregationNoise()
    # Round 3 sits in [3], [3,4], [1..4], [1..8]; by round 4 the first three are complete.
    assert tree.sensitivity_squared([3], upto=3) == 1.0
    assert tree.sensitivity_squared([3], upto=4) == 3.0
    assert tree.sensitivity_squared([3], upto=8) == 4.0
    # Twice in one node of two: c = 2 there.
    assert tree.sensitivity_squared([1, 2], upto=2) == 1 + 1 + 4


def _prefix_noise(tree: TreeAggregationNoise, steps: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    inc = np.stack([tree.next_noise(rng, (n,)) for _ in range(steps)])
    return np.cumsum(inc, axis=0)


def test_honest_prefix_variance_is_popcount():
    prefix = _prefix_noise(TreeAggregationNoise(), 16, 40_000, 0)
    for t in (1, 3, 7, 8, 11, 15, 16):
        assert prefix[t - 1].var() == pytest.approx(bin(t).count("1"), rel=0.05)


def test_efficient_tree_lowers_variance_as_predicted():
    honest = _prefix_noise(TreeAggregationNoise(), 16, 40_000, 1)
    eff = _prefix_noise(TreeAggregationNoise(efficient=True), 16, 40_000, 1)
    for t in (8, 16):  # one completed node: its estimate's variance
        level = t.bit_length() - 1
        v = TreeAggregationNoise.node_variance(level, efficient=True)
        assert eff[t - 1].var() == pytest.approx(v, rel=0.05)
        assert eff[t - 1].var() < 0.7 * honest[t - 1].var()


def test_restart_freezes_old_prefix_and_starts_a_new_tree():
    prefix = _prefix_noise(TreeAggregationNoise(restart_every=4), 8, 40_000, 2)
    # t = 4: one root node; t = 5: frozen root + a fresh leaf; t = 8: two roots.
    assert prefix[3].var() == pytest.approx(1.0, rel=0.05)
    assert prefix[4].var() == pytest.approx(2.0, rel=0.05)
    assert prefix[7].var() == pytest.approx(2.0, rel=0.05)


def test_state_dict_continues_the_stream():
    a, b = TreeAggregationNoise(efficient=True), TreeAggregationNoise(efficient=True)
    rng = np.random.default_rng(3)
    for _ in range(5):
        a.next_noise(rng, (3,))
    b.load_state_dict(a.state_dict())
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(6):
        np.testing.assert_array_equal(a.next_noise(r1, (3,)), b.next_noise(r2, (3,)))


def test_ledger_increments_compose_to_the_whole_stream():
    rng = np.random.default_rng(4)
    tree = TreeAggregationNoise()
    z, steps = 2.0, 40
    participation: dict[int, list[int]] = {}
    events, before = [], 0.0
    for t in range(1, steps + 1):
        for u in rng.choice(30, size=5, replace=False):
            participation.setdefault(int(u), []).append(t)
        after = stream_sensitivity_squared(tree, participation, upto=t)
        events.append(gaussian_increment(noise_multiplier=z, before=before, after=after))
        before = after
    acc = PRVAccountant()
    for e in events:
        acc.compose(e)
    expected = _gaussian_epsilon(np.sqrt(before) / z, 1e-5)
    assert acc.get_epsilon(delta=1e-5) == pytest.approx(expected, rel=1e-9)
    worst = max(tree.sensitivity_squared(r, upto=steps) for r in participation.values())
    assert before == worst


def test_no_amplification_and_bad_input():
    tree_event = TreeAggregationEvent(noise_multiplier=1.0, steps=4)
    with pytest.raises(UnsupportedEventError, match="amplification"):
        make_accountant("prv").compose(PoissonSampledEvent(sample_rate=0.5, event=tree_event))
    for kwargs in ({"noise_multiplier": 0.0, "steps": 4}, {"noise_multiplier": 1.0, "steps": 0}):
        with pytest.raises(InvalidParameterError):
            TreeAggregationEvent(**kwargs)
    with pytest.raises(InvalidParameterError, match="restart_every"):
        TreeAggregationNoise(restart_every=0)
    with pytest.raises(InvalidParameterError, match="shrink"):
        gaussian_increment(noise_multiplier=1.0, before=2.0, after=1.0)
    assert gaussian_increment(noise_multiplier=1.0, before=2.0, after=2.0).to_dict() == {
        "type": "noop"
    }
    assert GaussianEvent(noise_multiplier=1.0) == gaussian_increment(
        noise_multiplier=1.0, before=0.0, after=1.0
    )
