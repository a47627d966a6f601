"""Adaptive clipping at a target quantile of the update norms (Andrew, Thakkar, McMahan
& Ramaswamy, NeurIPS 2021, "Differentially Private Learning with Adaptive Clipping",
arXiv:1905.03871).

Each round every participant also reports b_k = 1[‖Δ_k‖ <= C]; the server releases the
noisy count Σ b_k + N(0, σ_b²) and moves C geometrically towards the γ-quantile of the
norms:  C ← C · exp(−η_C (b̄ − γ)),  b̄ = noisy count / (public number of participants).

Privacy. The count is a second Gaussian release in the same round. Centring the bit
(b_k − ½, sensitivity ½ under add/remove of a user) makes the pair (update sum with
noise z_Δ·C, count with noise σ_b) one Gaussian mechanism with

    z^{-2} = z_Δ^{-2} + (2 σ_b)^{-2}        (Andrew et al. 2021, Thm. 1),

so a run calibrated to a noise multiplier z spends exactly what plain DP-FedAvg at z
spends when the update noise uses z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}
(:func:`update_noise_multiplier`). That needs 2σ_b > z; the paper suggests
σ_b = (expected participants)/20. The ledger therefore records the round with the
joint z, as before.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from protocols.dp._validation import check_real
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

__all__ = [
    "joint_noise_multiplier",
    "noisy_clipped_fraction",
    "quantile_clip_update",
    "update_noise_multiplier",
]


def update_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}: the update noise that, with the count noised
    at ``count_stddev`` σ_b, spends what one Gaussian at ``noise_multiplier`` z spends.

    Raises
    ------
    InvalidParameterError
        If 2σ_b <= z (the count alone would spend more than the budget).

    Examples
    --------
    >>> round(update_noise_multiplier(noise_multiplier=1.0, count_stddev=1.25), 4)
    1.0911
    """
    z = check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=True)
    sb = check_real("count_stddev", count_stddev, low=0.0, low_open=True)
    rest = z**-2 - (2.0 * sb) ** -2
    if rest <= 0.0:
        raise InvalidParameterError(
            f"`count_stddev` must exceed noise_multiplier / 2 = {z / 2:g} so that the clipped "
            f"count does not use the whole budget; got {count_stddev!r}"
        )
    return float(rest**-0.5)


def joint_noise_multiplier(*, update_noise_multiplier: float, count_stddev: float) -> float:
    """z = (z_Δ^{-2} + (2σ_b)^{-2})^{-1/2}: the one Gaussian the round is accounted as."""
    zd = check_real("update_noise_multiplier", update_noise_multiplier, low=0.0, low_open=True)
    sb = check_real("count_stddev", count_stddev, low=0.0, low_open=True)
    return float((zd**-2 + (2.0 * sb) ** -2) ** -0.5)


def noisy_clipped_fraction(
    norms: ArrayLike,
    *,
    clipping_norm: float,
    count_stddev: float,
    participants: float,
    generator: RandomGenerator,
    centred: bool = False,
) -> float:
    """b̄ = (Σ 1[‖Δ_k‖ <= C] + N(0, σ_b²)) / ``participants`` (a public number, > 0).

    With ``centred`` the bits are released as b_k − ½ (sensitivity ½ under add/remove,
    where the number of participants is not public) and b̄ = (Σ (b_k − ½) + noise) /
    ``participants`` + ½ (Andrew et al. 2021, Alg. 1).
    """
    c = check_real("clipping_norm", clipping_norm, low=0.0, low_open=True)
    sb = check_real("count_stddev", count_stddev, low=0.0, low_open=True)
    n = check_real("participants", participants, low=0.0, low_open=True)
    x = np.asarray(norms, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise InvalidParameterError("`norms` must be finite and >= 0")
    bits = (x <= c).astype(np.float64) - (0.5 if centred else 0.0)
    count = float(np.sum(bits)) + sb * float(np.asarray(generator.standard_normal(size=())))
    return count / n + (0.5 if centred else 0.0)


def quantile_clip_update(
    clipping_norm: float, *, clipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """The geometric update C · exp(−η (b̄ − γ)) of Andrew et al. 2021 (Alg. 1).

    Examples
    --------
    >>> round(quantile_clip_update(1.0, clipped_fraction=1.0, target_quantile=0.5,
    ...     learning_rate=0.2), 4)
    0.9048
    """
    c = check_real("clipping_norm", clipping_norm, low=0.0, low_open=True)
    b = check_real("clipped_fraction", clipped_fraction)  # noisy: may leave [0, 1]
    g = check_real(
        "target_quantile", target_quantile, low=0.0, high=1.0, low_open=True, high_open=True
    )
    eta = check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    out = c * math.exp(-eta * (b - g))
    if not (math.isfinite(out) and out > 0.0):
        raise InvalidParameterError(f"the clipping norm update left (0, inf): {out!r}")
    return out
