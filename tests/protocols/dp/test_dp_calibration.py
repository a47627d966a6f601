"""Noise calibration hits its target from below, within tolerance."""

from __future__ import annotations

import pytest

from protocols.dp.calibration import calibrate_noise_multiplier, epsilon_for
from protocols.errors import InvalidParameterError


@pytest.mark.parametrize(
    ("target", "q", "steps", "accountant"),
    [
        (1.0, 0.02, 200, "prv"),
        (3.0, 0.1, 50, "prv"),
        (2.0, 0.01, 1000, "rdp"),
        (0.5, 1.0, 5, "prv"),
    ],
)
def test_calibration_hits_target(target, q, steps, accountant):
    z = calibrate_noise_multiplier(
        target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps, accountant=accountant
    )
    eps = epsilon_for(
        noise_multiplier=z, sample_rate=q, steps=steps, delta=1e-5, accountant=accountant
    )
    # The bisection stops within 0.5 % of the target, or earlier where the PRV's
    # refined error band (<= 1 % of ε) makes ε(z) step rather than slide.
    assert target * (1 - 0.01) <= eps <= target
    # A slightly smaller z overspends: the answer is (nearly) the smallest safe one.
    assert (
        epsilon_for(
            noise_multiplier=z * 0.98, sample_rate=q, steps=steps, delta=1e-5, accountant=accountant
        )
        > target
    )


def test_unreachable_target_says_why():
    with pytest.raises(InvalidParameterError, match=r"unreachable.*max_noise_multiplier"):
        calibrate_noise_multiplier(
            target_epsilon=0.01,
            target_delta=1e-5,
            sample_rate=1.0,
            steps=100,
            max_noise_multiplier=50.0,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, "`target_epsilon` must be in (0, inf); got 0.0"),
        ({"target_delta": 1.0}, "`target_delta` must be in (0, 1); got 1.0"),
        ({"sample_rate": 0.0}, "`sample_rate` must be in (0, 1]; got 0.0"),
        ({"steps": 0}, "`steps` must be an integer in [1, inf); got 0"),
        ({"accountant": "gdp"}, "`accountant` must be one of"),
    ],
)
def test_arguments_validated(kwargs, message):
    args = {"target_epsilon": 1.0, "target_delta": 1e-5, "sample_rate": 0.01, "steps": 10}
    args.update(kwargs)
    with pytest.raises(InvalidParameterError) as info:
        calibrate_noise_multiplier(**args)
    assert message in str(info.value)


def test_keyword_only():
    with pytest.raises(TypeError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, 10)  # type: ignore[misc]
