"""Clipping bounds contributions; Gaussian mechanism noise; LDP estimators unbiased."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.dp.events import GaussianEvent, RandomizedResponseEvent
from protocols.dp.ldp import gaussian_report, randomized_response, randomized_response_estimate
from protocols.dp.mechanisms import clip_by_l2_norm, clip_update, gaussian_mechanism, l2_norm
from protocols.dp.rng import SecureGenerator, make_generator
from protocols.errors import InvalidParameterError

_vectors = hnp.arrays(
    np.float64,
    st.integers(1, 64),
    elements=st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(_vectors, st.floats(1e-6, 1e6))
def test_clip_bounds_norm_even_for_adversarial_values(x, c):
    out = clip_by_l2_norm(x, clipping_norm=c)
    assert l2_norm(out) <= c
    if l2_norm(x) <= c:
        np.testing.assert_array_equal(out, x)
    else:  # direction preserved
        i = int(np.argmax(np.abs(x)))
        assert np.sign(out[i]) == np.sign(x[i])


def test_clipping_bounds_adversarial_update_in_a_sum():
    g = make_generator(0)
    honest = [g.normal(size=100) * 0.01 for _ in range(9)]
    attacker = np.full(100, 1e12)
    clipped = [clip_by_l2_norm(v, clipping_norm=1.0) for v in [*honest, attacker]]
    with_attacker = np.sum(clipped, axis=0)
    without = np.sum(clipped[:-1], axis=0)
    assert l2_norm(with_attacker - without) <= 1.0 + 1e-12  # float summation rounding


def test_clip_rejects_non_finite_and_bad_norm():
    with pytest.raises(InvalidParameterError, match="finite"):
        clip_by_l2_norm([1.0, math.inf], clipping_norm=1.0)
    with pytest.raises(InvalidParameterError, match="`clipping_norm` must be in"):
        clip_by_l2_norm([1.0], clipping_norm=0.0)


def test_clip_update_is_joint_over_tensors_numpy_and_torch():
    upd = {"w": torch.full((10, 10), 3.0), "b": torch.full((10,), -4.0)}
    out = clip_update(upd, clipping_norm=2.0)
    assert isinstance(out["w"], torch.Tensor)
    assert l2_norm(out) <= 2.0
    ratio = (out["w"] / upd["w"]).unique()
    assert len(ratio) == 1 and torch.allclose(out["b"] / upd["b"], ratio)
    small = {"w": np.ones(3) * 0.1}
    np.testing.assert_array_equal(clip_update(small, clipping_norm=1.0)["w"], small["w"])
    half = {"w": np.full(4, 1e30, dtype=np.float32), "b": np.full(2, -1e30, dtype=np.float32)}
    assert l2_norm(clip_update(half, clipping_norm=1.0)) <= 1.0
    with pytest.raises(InvalidParameterError, match=r"`update\['x'\]`"):
        clip_update({"x": torch.tensor([math.nan])}, clipping_norm=1.0)


def test_gaussian_mechanism_noise_scale_and_event():
    total = np.zeros(200_000)
    noisy, event = gaussian_mechanism(
        total, noise_multiplier=1.5, clipping_norm=2.0, generator=make_generator(1)
    )
    assert event == GaussianEvent(1.5)
    assert noisy.std() == pytest.approx(3.0, rel=0.01)
    noisy_s, _ = gaussian_mechanism(
        np.zeros(50_000), noise_multiplier=1.0, clipping_norm=1.0, generator=SecureGenerator()
    )
    assert noisy_s.std() == pytest.approx(1.0, rel=0.03)


def test_secure_generator_refuses_seed():
    with pytest.raises(InvalidParameterError, match="`seed` must be None"):
        make_generator(3, secure=True)


@pytest.mark.parametrize("value", [0.0, 0.03, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_randomized_response_estimate_is_unbiased(value, epsilon):
    n = 200_000
    reports, event = randomized_response(
        np.full(n, value), epsilon=epsilon, generator=make_generator(7)
    )
    assert event == RandomizedResponseEvent.from_epsilon(epsilon)
    assert event.epsilon == pytest.approx(epsilon)
    est = randomized_response_estimate(reports, epsilon=epsilon)
    f = 1 / (1 + math.exp(epsilon))
    # sd of one estimate: sqrt(Var(y))/(1 - 2f) with Var(y) <= 1/4
    se = 0.5 / (1 - 2 * f) / math.sqrt(n)
    assert abs(float(est.mean()) - value) < 5 * se


def test_randomized_response_mixture_mean():
    values = make_generator(3).random(100_000)
    reports, _ = randomized_response(values, epsilon=1.0, generator=make_generator(4))
    est = randomized_response_estimate(reports, epsilon=1.0)
    assert abs(float(est.mean()) - float(values.mean())) < 0.02


def test_gaussian_report_unbiased_and_validated():
    out, event = gaussian_report(
        np.full(100_000, 0.2), noise_multiplier=2.0, generator=make_generator(5)
    )
    assert event == GaussianEvent(2.0)
    assert abs(float(out.mean()) - 0.2) < 5 * 2.0 / math.sqrt(100_000)
    with pytest.raises(InvalidParameterError, match=r"`values` must lie in \[0, 1\]"):
        gaussian_report([1.2], noise_multiplier=1.0, generator=make_generator(0))
    with pytest.raises(InvalidParameterError, match="`epsilon` must be in"):
        randomized_response([0.5], epsilon=0.0, generator=make_generator(0))
    with pytest.raises(InvalidParameterError, match="bits"):
        randomized_response_estimate([0.5], epsilon=1.0)
