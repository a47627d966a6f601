"""Local DP for a scalar in [0, 1] (e.g. a device's local CTR) with unbiased estimators.

The privacy unit is the reporting device: each report is ε-LDP (randomized
response, pure) or (ε, δ)-LDP (Gaussian) under the replace-one relation, whatever
the server does with it.

* :func:`randomized_response` — the value is first rounded *randomly* to a bit
  b ~ Bernoulli(x) (so E[b] = x), then binary randomized response keeps b with
  probability e^ε / (1 + e^ε) (Warner 1965). :func:`randomized_response_estimate`
  inverts it: (y − f)/(1 − 2f) with f = 1/(1 + e^ε) is unbiased for x.
* :func:`gaussian_report` — x + N(0, z²): sensitivity 1 on [0, 1], unbiased as is.

Examples
--------
>>> import numpy as np
>>> g = np.random.default_rng(0)
>>> reports, event = randomized_response(np.full(100_000, 0.3), epsilon=1.0, generator=g)
>>> est = randomized_response_estimate(reports, epsilon=1.0)
>>> abs(float(est.mean()) - 0.3) < 0.02, round(event.epsilon, 6)
(True, 1.0)
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.dp._validation import check_real
from protocols.dp.events import GaussianEvent, RandomizedResponseEvent
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

__all__ = [
    "gaussian_report",
    "randomized_response",
    "randomized_response_estimate",
]


def _unit_interval(values: ArrayLike) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)) or (x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0)):
        lo = float(np.nanmin(x)) if x.size else 0.0
        hi = float(np.nanmax(x)) if x.size else 0.0
        raise InvalidParameterError(f"`values` must lie in [0, 1]; got range [{lo!r}, {hi!r}]")
    return x


def _flip_probability(epsilon: float) -> float:
    return 1.0 / (1.0 + math.exp(epsilon))


def randomized_response(
    values: ArrayLike, *, epsilon: float, generator: RandomGenerator
) -> tuple[NDArray[np.int8], RandomizedResponseEvent]:
    """One ε-LDP bit per value in [0, 1]; returns the bits and the per-report event.

    Parameters
    ----------
    values:
        Scalars in [0, 1], one per device.
    epsilon:
        Per-report ε in (0, 50].
    generator:
        Source of randomness.
    """
    eps = check_real("epsilon", epsilon, low=0.0, high=50.0, low_open=True)
    x = _unit_interval(values)
    bit = generator.random(size=x.shape) < x
    flip = generator.random(size=x.shape) < _flip_probability(eps)
    out = np.logical_xor(bit, flip).astype(np.int8)
    return out, RandomizedResponseEvent.from_epsilon(eps, num_buckets=2)


def randomized_response_estimate(reports: ArrayLike, *, epsilon: float) -> NDArray[np.float64]:
    """Unbiased per-report estimates of the original values: (y − f)/(1 − 2f).

    Individual estimates lie outside [0, 1]; average them (the mean is unbiased
    with variance f(1 − f)/(1 − 2f)² per report plus the value's own variance).
    """
    eps = check_real("epsilon", epsilon, low=0.0, high=50.0, low_open=True)
    y = np.asarray(reports, dtype=np.float64)
    if y.size and not np.all((y == 0.0) | (y == 1.0)):
        raise InvalidParameterError("`reports` must be bits (0 or 1)")
    f = _flip_probability(eps)
    out: NDArray[np.float64] = (y - f) / (1.0 - 2.0 * f)
    return out


def gaussian_report(
    values: ArrayLike, *, noise_multiplier: float, generator: RandomGenerator
) -> tuple[NDArray[np.float64], GaussianEvent]:
    """Values in [0, 1] plus N(0, z²) (sensitivity 1); unbiased, (ε, δ)-LDP per report."""
    z = check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=True)
    x = _unit_interval(values)
    noise = np.asarray(generator.standard_normal(size=x.shape), dtype=np.float64)
    return x + z * noise, GaussianEvent(noise_multiplier=z)
