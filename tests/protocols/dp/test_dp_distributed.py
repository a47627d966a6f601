"""Distributed discrete Gaussian: exact sampler, integer encoding, dropout-aware accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from protocols.dp.accountants import PRVAccountant, RDPAccountant
from protocols.dp.distributed import (
    DistributedDiscreteGaussianPlan,
    discrete_gaussian,
    discrete_gaussian_pmf,
    from_modular,
    quantize,
    rounded_l2_bound,
    to_modular,
)
from protocols.dp.events import GaussianEvent
from protocols.dp.rng import SecureGenerator, make_generator
from protocols.errors import InvalidParameterError


def chi_square_pvalue(samples: np.ndarray, variance: float) -> float:
    values, counts = np.unique(samples, return_counts=True)
    half = int(max(np.abs(values).max(), math.ceil(8 * math.sqrt(variance))))
    support = np.arange(-half, half + 1)
    expected = discrete_gaussian_pmf(support, variance=variance) * samples.size
    observed = np.zeros(support.size)
    observed[values + half] = counts
    # Pool the tails so every bin expects >= 5.
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
        obs[-1] += observed[~keep].sum()
        exp[-1] += expected[~keep].sum()
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("variance", [0.3, 1.0, 2.5, 17.3])
def test_sampler_matches_pmf(variance):
    x = discrete_gaussian(variance=variance, size=100_000, generator=make_generator(11))
    assert x.dtype == np.int64
    assert chi_square_pvalue(x, variance) > 1e-3


def test_chi_square_has_power():
    # The same test rejects a 10 % wider discrete Gaussian, and a rounded continuous one at σ² = 0.3.
    x = discrete_gaussian(variance=1.1 * 2.5, size=100_000, generator=make_generator(12))
    assert chi_square_pvalue(x, 2.5) < 1e-6
    rounded = np.rint(make_generator(13).normal(0, math.sqrt(0.3), 100_000)).astype(np.int64)
    assert chi_square_pvalue(rounded, 0.3) < 1e-6


def test_sampler_large_variance_and_secure_generator():
    x = discrete_gaussian(variance=1e10, size=50_000, generator=make_generator(3))
    assert np.var(x) == pytest.approx(1e10, rel=0.03)
    assert abs(np.mean(x)) < 5 * 1e5 / math.sqrt(50_000)
    y = discrete_gaussian(variance=9.0, size=(100, 50), generator=SecureGenerator())
    assert y.shape == (100, 50) and chi_square_pvalue(y.ravel(), 9.0) > 1e-4


def test_sampler_reproducible_by_seed():
    a = discrete_gaussian(variance=7.0, size=1000, generator=make_generator(5))
    b = discrete_gaussian(variance=7.0, size=1000, generator=make_generator(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidParameterError, match="`variance`"):
        discrete_gaussian(variance=0.0, size=3, generator=make_generator(0))


def test_sum_of_shares_has_configured_variance():
    plan = DistributedDiscreteGaussianPlan(
        noise_multiplier=0.8, clipping_norm=1.0, scale=20.0, dimension=4000, min_survivors=10
    )
    g = make_generator(21)
    total = sum(
        discrete_gaussian(variance=plan.per_device_variance, size=plan.dimension, generator=g)
        for _ in range(10)
    )
    target = plan.target_variance
    # Sample variance of 4000 normals: relative sd sqrt(2/4000) = 2.2 %; allow 5 sd.
    assert np.var(total) == pytest.approx(target, rel=5 * math.sqrt(2 / 4000))
    assert plan.total_variance(num_survivors=10) == pytest.approx(target)


def test_encode_decode_round_trip_through_modular_sum():
    plan = DistributedDiscreteGaussianPlan(
        noise_multiplier=1.0, clipping_norm=1.0, scale=2.0**10, dimension=64, min_survivors=8
    )
    bits = plan.required_modulus_bits(num_devices=8)
    assert bits <= 32
    g = make_generator(2)
    updates = [g.normal(size=64) * 0.05 for _ in range(8)]
    shares = [plan.encode(u, generator=g) for u in updates]
    modular = np.zeros(64, dtype=np.int64)
    for s in shares:  # what secure aggregation computes
        modular = (modular + to_modular(s, modulus_bits=bits)) % (1 << bits)
    decoded = plan.decode(from_modular(modular, modulus_bits=bits))
    exact = np.sum([u for u in updates], axis=0)
    noise_sd = math.sqrt(plan.target_variance) / plan.scale
    assert np.max(np.abs(decoded - exact)) < 6 * noise_sd + 8 / plan.scale


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.int64, st.integers(1, 50), elements=st.integers(-(2**40), 2**40)),
    st.integers(42, 62),
)
def test_modular_round_trip(values, bits):
    m = to_modular(values, modulus_bits=bits)
    assert m.min() >= 0 and m.max() < (1 << bits)
    np.testing.assert_array_equal(from_modular(m, modulus_bits=bits), values)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(-1.0, 1.0)),
    st.floats(1.0, 1e4),
)
def test_conditional_rounding_meets_bound(x, scale):
    x = x / max(1.0, float(np.linalg.norm(x)))  # clipped to norm 1
    bound = rounded_l2_bound(l2_norm=scale, dimension=x.size, beta=math.exp(-0.5))
    out = quantize(x, scale=scale, generator=make_generator(0), l2_bound=bound)
    assert np.linalg.norm(out) <= bound
    assert np.all(np.abs(out - x * scale) < 1.0)


def test_randomized_rounding_is_unbiased():
    x = np.array([0.3, -1.7, 2.25])
    g = make_generator(9)
    mean = np.mean([quantize(x, scale=1.0, generator=g) for _ in range(20_000)], axis=0)
    np.testing.assert_allclose(mean, x, atol=0.02)


def test_dropouts_fewer_shares_cost_more_epsilon():
    plan = DistributedDiscreteGaussianPlan(
        noise_multiplier=1.0, clipping_norm=1.0, scale=100.0, dimension=1000, min_survivors=20
    )
    eps = {
        n: RDPAccountant().compose(plan.event(num_survivors=n), count=10).get_epsilon(delta=1e-5)
        for n in (20, 15, 10)
    }
    assert eps[20] < eps[15] < eps[10]
    # With all 20 survivors the total noise is on target: ε matches a Gaussian with z = 1.
    ref = RDPAccountant().compose(GaussianEvent(1.0), count=10).get_epsilon(delta=1e-5)
    assert eps[20] == pytest.approx(ref, rel=1e-6)
    # The actual survivors are accounted: 10 survivors = half the variance = z of 1/√2.
    ref_10 = (
        RDPAccountant().compose(GaussianEvent(1 / math.sqrt(2)), count=10).get_epsilon(delta=1e-5)
    )
    assert eps[10] == pytest.approx(ref_10, rel=1e-6)


def test_guaranteed_minimum_survivors_and_colluders():
    # Scale per-device noise up for a guaranteed minimum of 12 survivors, 2 of them colluding.
    plan = DistributedDiscreteGaussianPlan(
        noise_multiplier=1.0,
        clipping_norm=1.0,
        scale=100.0,
        dimension=1000,
        min_survivors=12,
        num_colluders=2,
    )
    assert plan.per_device_variance == pytest.approx(plan.target_variance / 10)
    target = PRVAccountant().compose(GaussianEvent(1.0)).get_epsilon(delta=1e-5)
    for survivors in (12, 16, 25):  # any completed round is at least as private as targeted
        e = PRVAccountant().compose(plan.event(num_survivors=survivors)).get_epsilon(delta=1e-5)
        assert e <= target * 1.15  # RDP conversion of the zCDP bound vs exact Gaussian
        assert plan.event(num_survivors=survivors).num_shares == survivors - 2
    with pytest.raises(InvalidParameterError, match="`num_survivors` must exceed"):
        plan.event(num_survivors=2)


def test_plan_validation():
    with pytest.raises(InvalidParameterError, match="below 1/4"):
        DistributedDiscreteGaussianPlan(
            noise_multiplier=0.01, clipping_norm=1.0, scale=1.0, dimension=1, min_survivors=100
        )
    with pytest.raises(InvalidParameterError, match="`num_colluders`"):
        DistributedDiscreteGaussianPlan(
            noise_multiplier=1.0,
            clipping_norm=1.0,
            scale=10.0,
            dimension=4,
            min_survivors=3,
            num_colluders=3,
        )
    plan = DistributedDiscreteGaussianPlan(
        noise_multiplier=1.0, clipping_norm=1.0, scale=10.0, dimension=4, min_survivors=3
    )
    with pytest.raises(InvalidParameterError, match="4 coordinates"):
        plan.encode(np.zeros(5), generator=make_generator(0))


def test_encode_clips_adversarial_update():
    plan = DistributedDiscreteGaussianPlan(
        noise_multiplier=1.0, clipping_norm=1.0, scale=50.0, dimension=16, min_survivors=1
    )
    g = make_generator(1)
    samples = np.array([plan.encode(np.full(16, 1e9), generator=g) for _ in range(2000)])
    # Mean of the encoded share is the clipped, scaled update: norm C·scale = 50.
    assert np.linalg.norm(samples.mean(axis=0)) == pytest.approx(50.0, rel=0.05)
