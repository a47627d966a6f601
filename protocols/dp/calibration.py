"""Calibrate the noise multiplier of Poisson-sampled Gaussian training to a target ε."""

from __future__ import annotations

from collections.abc import Callable

from protocols.dp._validation import check_int, check_real
from protocols.dp.accountants import make_accountant
from protocols.dp.events import GaussianEvent, PoissonSampledEvent
from protocols.errors import InvalidParameterError

__all__ = ["calibrate_noise_multiplier", "epsilon_for", "smallest_noise_within"]


def epsilon_for(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "prv",
) -> float:
    """ε after ``steps`` Poisson-sampled Gaussian steps (the DP-SGD event)."""
    event = PoissonSampledEvent(
        sample_rate=sample_rate, event=GaussianEvent(noise_multiplier=noise_multiplier)
    )
    return make_accountant(accountant).compose(event, count=steps).get_epsilon(delta=delta)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    epsilon_tolerance: float | None = None,
    max_noise_multiplier: float = 1e4,
) -> float:
    """Smallest-found noise multiplier z with ε(z) <= ``target_epsilon``, by bisection.

    The returned z satisfies ``target_epsilon − epsilon_tolerance <= ε(z) <= target_epsilon``
    under the chosen accountant (ε is decreasing in z), so it never overspends.

    Parameters
    ----------
    target_epsilon:
        In (0, inf).
    target_delta:
        In (0, 1).
    sample_rate:
        Poisson sampling rate q in (0, 1].
    steps:
        Number of noisy steps, >= 1.
    accountant:
        Registered accountant name (``"prv"`` default, ``"rdp"``).
    epsilon_tolerance:
        Allowed undershoot of ε, in (0, target_epsilon); default 0.5 % of the target.
    max_noise_multiplier:
        Upper end of the search.

    Raises
    ------
    InvalidParameterError
        If even ``max_noise_multiplier`` cannot reach ``target_epsilon`` (the
        message gives the ε it reaches).

    Examples
    --------
    >>> z = calibrate_noise_multiplier(target_epsilon=2.0, target_delta=1e-5,
    ...     sample_rate=0.01, steps=1000, accountant="rdp")
    >>> 1.9 <= epsilon_for(noise_multiplier=z, sample_rate=0.01, steps=1000,
    ...     delta=1e-5, accountant="rdp") <= 2.0
    True
    """
    eps_t = check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
    delta = check_real(
        "target_delta", target_delta, low=0.0, high=1.0, low_open=True, high_open=True
    )
    q = check_real("sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
    n = check_int("steps", steps, low=1)
    tol = (
        0.005 * eps_t
        if epsilon_tolerance is None
        else check_real(
            "epsilon_tolerance",
            epsilon_tolerance,
            low=0.0,
            high=eps_t,
            low_open=True,
            high_open=True,
        )
    )
    z_max = check_real("max_noise_multiplier", max_noise_multiplier, low=0.0, low_open=True)
    make_accountant(accountant)  # validate the name up front

    def eps(z: float) -> float:
        return epsilon_for(
            noise_multiplier=z, sample_rate=q, steps=n, delta=delta, accountant=accountant
        )

    try:
        return smallest_noise_within(
            eps, target_epsilon=eps_t, tolerance=tol, max_noise_multiplier=z_max
        )
    except InvalidParameterError as exc:
        raise InvalidParameterError(
            f"{exc} (`target_delta` = {delta!r}, `sample_rate` = {q!r}, `steps` = {n})"
        ) from None


def smallest_noise_within(
    epsilon_of: Callable[[float], float],
    *,
    target_epsilon: float,
    tolerance: float | None = None,
    max_noise_multiplier: float = 1e4,
) -> float:
    """The bisection behind every calibration: a noise multiplier z with
    ``target_epsilon − tolerance <= epsilon_of(z) <= target_epsilon``.

    ``epsilon_of`` must be non-increasing in z (true of every mechanism composed
    here: more noise never costs more). The search doubles z from 1 until the target
    is met, then bisects; the result never overspends. ``tolerance`` defaults to
    0.5 % of the target.

    Raises
    ------
    InvalidParameterError
        If even ``max_noise_multiplier`` spends more than ``target_epsilon`` (the
        message gives the ε it reaches).

    Examples
    --------
    >>> z = smallest_noise_within(lambda z: 4.0 / z, target_epsilon=2.0)
    >>> 2.0 - 0.01 <= 4.0 / z <= 2.0
    True
    """
    eps_t = check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
    tol = 0.005 * eps_t if tolerance is None else float(tolerance)
    z_max = check_real("max_noise_multiplier", max_noise_multiplier, low=0.0, low_open=True)
    low, high = 0.0, min(1.0, z_max)
    eps_high = epsilon_of(high)
    while eps_high > eps_t:
        if high >= z_max:
            raise InvalidParameterError(
                f"`target_epsilon` = {eps_t!r} is unreachable: even `noise_multiplier` = "
                f"{high!r} (the `max_noise_multiplier`) spends ε = {eps_high:.6g}"
            )
        low, high = high, min(2.0 * high, z_max)
        eps_high = epsilon_of(high)
    while eps_t - eps_high > tol and high - low > 1e-9 * high:
        mid = 0.5 * (low + high)
        e = epsilon_of(mid)
        if e <= eps_t:
            high, eps_high = mid, e
        else:
            low = mid
    return high
