"""Quantile-based adaptive clipping (Andrew et al. 2021)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.dp import (
    joint_noise_multiplier,
    noisy_clipped_fraction,
    quantile_clip_update,
    update_noise_multiplier,
)
from protocols.dp.accountants import _gaussian_epsilon
from protocols.errors import InvalidParameterError


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_clip_converges_to_the_target_quantile(quantile):
    rng = np.random.default_rng(0)
    clip = 0.05
    trail = []
    for _ in range(600):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=100)
        frac = noisy_clipped_fraction(
            norms, clipping_norm=clip, count_stddev=5.0, participants=100, generator=rng
        )
        clip = quantile_clip_update(
            clip, clipped_fraction=frac, target_quantile=quantile, learning_rate=0.2
        )
        trail.append(clip)
    truth = math.exp(0.5 * float(np.quantile(rng.standard_normal(200_000), quantile)))
    assert np.mean(trail[-200:]) == pytest.approx(truth, rel=0.08)


def test_joint_noise_multiplier_is_the_papers_formula():
    z, sb = 1.1, 1.25
    zd = update_noise_multiplier(noise_multiplier=z, count_stddev=sb)
    assert zd == pytest.approx((z**-2 - (2 * sb) ** -2) ** -0.5, rel=1e-15)
    assert joint_noise_multiplier(update_noise_multiplier=zd, count_stddev=sb) == pytest.approx(z)
    # The pair (sum: sensitivity C, noise z_Δ·C; centred count: sensitivity 1/2, noise σ_b)
    # is one Gaussian with μ² = 1/z_Δ² + (1/2)²/σ_b² = 1/z²: the same ε as plain DP-FedAvg.
    mu_pair = math.sqrt(zd**-2 + (0.5 / sb) ** 2)
    assert _gaussian_epsilon(mu_pair, 1e-5) == pytest.approx(_gaussian_epsilon(1 / z, 1e-5))
    assert zd > z  # the update pays for the count with a little more noise


def test_bad_input():
    with pytest.raises(InvalidParameterError, match="count_stddev"):
        update_noise_multiplier(noise_multiplier=2.0, count_stddev=1.0)
    with pytest.raises(InvalidParameterError, match="target_quantile"):
        quantile_clip_update(1.0, clipped_fraction=0.5, target_quantile=1.0, learning_rate=0.2)
    with pytest.raises(InvalidParameterError, match="norms"):
        noisy_clipped_fraction(
            [1.0, float("nan")],
            clipping_norm=1.0,
            count_stddev=1.0,
            participants=2,
            generator=np.random.default_rng(0),
        )
