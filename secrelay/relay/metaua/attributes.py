"""Client attributes z_k and the named sums one device contributes.

The device computes its attributes z_k from its own data, weighs its update with
``e_k,l = b_k · exp(θ_α,l · z_k)`` (θ_α downloaded) and contributes the six named
sums of :data:`SUM_NAMES`; nothing else about the device leaves it. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from protocols.errors import InvalidParameterError

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_CLIP",
    "SUM_NAMES",
    "THETA_ALPHA_BOUND",
    "Weighting",
    "client_contribution",
    "normalise_attributes",
]

SUM_NAMES = ("delta_e", "delta_ez", "e", "ez", "grad", "count")
"""The named sums of a round (:func:`client_contribution`), in order."""

ATTRIBUTES: tuple[str, ...] = (
    "sample_count",
    "local_loss",
    "grad_norm",
    "loss_ratio",
    "positive_rate",
    "unique_features",
)
"""The client attributes z1–z6 of the paper, in order:

z1 ``sample_count``     log(1 + n_k), n_k = local training rows;
z2 ``local_loss``       BCE of the downloaded model on the local training rows;
z3 ``grad_norm``        log(1 + ‖∂L_k(train)/∂w‖₂) at the downloaded model;
z4 ``loss_ratio``       local loss after / before local training;
z5 ``positive_rate``    the local CTR (fraction of clicks);
z6 ``unique_features``  log(1 + number of distinct non-padding feature indices).
"""

ATTRIBUTE_CLIP = 10.0
"""Every normalised attribute is clipped into [0, ATTRIBUTE_CLIP] (a bounded
sensitivity for the DP layer; with ``|θ_α| ≤ THETA_ALPHA_BOUND`` it also keeps
``exp(θ_α · z)`` finite in float64)."""

THETA_ALPHA_BOUND = 5.0
"""The server keeps every entry of θ_α in [−THETA_ALPHA_BOUND, THETA_ALPHA_BOUND]."""

Weighting = Literal["samples", "uniform"]
"""The base weight b_k: the device's training row count, or 1."""


def normalise_attributes(raw: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """Map raw client statistics to the attribute vector ``z`` (see :data:`ATTRIBUTES`).

    Counts and norms go through ``log1p`` (heavy-tailed), ratios and rates stay as
    they are; every value is clipped into ``[0, ATTRIBUTE_CLIP]``. No cross-client
    standardisation is needed: softmax is invariant to adding a constant to every
    client's ``θ_α · z``, so only the scale of each attribute matters, and the
    transforms put all six on a scale of about 0–7.

    Examples
    --------
    >>> normalise_attributes({"local_loss": 0.5, "positive_rate": 20.0},
    ...                      ["local_loss", "positive_rate"]).tolist()
    [0.5, 10.0]
    """
    tf = {
        "sample_count": lambda v: np.log1p(v),
        "local_loss": lambda v: v,
        "grad_norm": lambda v: np.log1p(v),
        "loss_ratio": lambda v: v,
        "positive_rate": lambda v: v,
        "unique_features": lambda v: np.log1p(v),
    }
    z = np.array([float(tf[n](float(raw[n]))) for n in names], dtype=np.float64)
    z = np.where(np.isfinite(z), z, ATTRIBUTE_CLIP)
    return np.clip(z, 0.0, ATTRIBUTE_CLIP)


def client_contribution(
    delta: np.ndarray,
    grad: np.ndarray,
    z: np.ndarray,
    theta_alpha: np.ndarray,
    base_weight: float,
    layer_of: np.ndarray,
) -> dict[str, np.ndarray]:
    """The named sums one device contributes (:mod:`secrelay.relay.metaua`).

    Parameters
    ----------
    delta:
        The local update Δw_k, shape ``(d,)``.
    grad:
        The query gradient g_k at the downloaded model, shape ``(d,)``.
    z:
        Normalised attributes, shape ``(m,)``.
    theta_alpha:
        The downloaded θ_α, shape ``(L, m)``.
    base_weight:
        b_k > 0 (sample count or 1).
    layer_of:
        Layer index of every coordinate
        (:meth:`~secrelay.relay.metaua.layers.LayerPartition.layer_of`).

    Returns
    -------
    dict
        The sums of :data:`SUM_NAMES`: ``delta_e`` ``(d,)``, ``delta_ez`` ``(m, d)``,
        ``e`` ``(L,)``, ``ez`` ``(L, m)``, ``grad`` ``(d,)``, ``count`` ``(1,)``.
    """
    z = np.asarray(z, dtype=np.float64)
    e = base_weight * np.exp(np.asarray(theta_alpha, dtype=np.float64) @ z)  # (L,)
    if not np.all(np.isfinite(e)):
        raise InvalidParameterError(f"exp(θ_α · z) overflowed for z={z.tolist()}")
    ed = e[layer_of] * np.asarray(delta, dtype=np.float64)
    return {
        "delta_e": ed,
        "delta_ez": z[:, None] * ed[None, :],
        "e": e,
        "ez": e[:, None] * z[None, :],
        "grad": np.asarray(grad, dtype=np.float64),
        "count": np.ones(1),
    }
