"""Clipping and the Gaussian mechanism on sums (float domain).

Privacy unit: whoever contributes one clipped vector — an example inside DP-SGD
(``max_grad_norm``) or a whole device/user update (``clipping_norm``).

Accepts torch tensors without importing torch: a value can only be a
``torch.Tensor`` if its caller has already imported torch, so tensors are recognised
through ``sys.modules`` and handled with their own methods.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.dp._validation import check_real
from protocols.dp.events import GaussianEvent
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch
    from typing_extensions import TypeIs

__all__ = ["clip_by_l2_norm", "clip_update", "gaussian_mechanism", "l2_norm"]

_T = TypeVar("_T", NDArray[np.float64], NDArray[np.float32], "torch.Tensor")


def _is_tensor(v: object) -> TypeIs[torch.Tensor]:
    """``isinstance(v, torch.Tensor)``, without importing torch when nobody has."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(v, torch_module.Tensor)


def l2_norm(values: Mapping[str, NDArray[np.floating] | torch.Tensor] | ArrayLike) -> float:
    """Global L2 norm of an array or of all tensors in a mapping, in float64 (no overflow)."""
    if isinstance(values, Mapping):
        norms = [_norm_of(v) for v in values.values()]
        top = max(norms, default=0.0)
        if top == 0.0 or not math.isfinite(top):
            return top
        return top * math.sqrt(math.fsum((n / top) ** 2 for n in norms))
    return _norm_of(values)


def _norm_of(v: object) -> float:
    if _is_tensor(v):
        return _robust_norm(v.detach().double().cpu().numpy())
    return _robust_norm(np.asarray(v, dtype=np.float64))


def clip_by_l2_norm(vector: ArrayLike, *, clipping_norm: float) -> NDArray[np.float64]:
    """Scale ``vector`` down so its L2 norm is at most ``clipping_norm``.

    ``x · min(1, C / ‖x‖₂)``; vectors already within the bound are returned
    unchanged (as float64). Non-finite input is rejected, since a NaN or inf would
    escape any bound.

    Examples
    --------
    >>> clip_by_l2_norm([3.0, 4.0], clipping_norm=1.0).tolist()
    [0.6000000000000001, 0.8]
    """
    c = check_real("clipping_norm", clipping_norm, low=0.0, low_open=True)
    x = np.array(vector, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InvalidParameterError("`vector` must be finite; got NaN or inf entries")
    norm = _robust_norm(x)
    if norm > c:
        x = (x / float(np.max(np.abs(x)))) * (c / (norm / float(np.max(np.abs(x)))))
        # Rounding can leave the norm a few ulps above C; shrink until it is not.
        while _robust_norm(x) > c:
            x *= 1.0 - 2.0**-50
    return x


def _robust_norm(x: NDArray[np.float64]) -> float:
    """L2 norm without overflow for entries up to the float64 maximum."""
    if x.size == 0:
        return 0.0
    m = float(np.max(np.abs(x)))
    if m == 0.0:
        return 0.0
    return m * float(np.linalg.norm((x / m).reshape(-1)))


def clip_update(update: Mapping[str, _T], *, clipping_norm: float) -> dict[str, _T]:
    """Clip a per-user update (e.g. a model delta keyed by parameter name) jointly.

    All tensors are scaled by the same factor ``min(1, C / ‖update‖₂)`` where the
    norm is taken over every entry of every tensor (flat clipping), so the user's
    whole contribution has L2 norm <= ``clipping_norm``. Works on numpy arrays and
    torch tensors; returns new objects of the same kinds.
    """
    c = check_real("clipping_norm", clipping_norm, low=0.0, low_open=True)
    if not isinstance(update, Mapping) or not update:
        raise InvalidParameterError("`update` must be a non-empty mapping of arrays/tensors")
    for name, v in update.items():
        finite = bool(v.isfinite().all()) if _is_tensor(v) else bool(np.all(np.isfinite(v)))
        if not finite:
            raise InvalidParameterError(f"`update[{name!r}]` has NaN or inf entries")
    norm = l2_norm(update)
    if norm <= c:
        return {k: _scale(v, 1.0) for k, v in update.items()}
    factor = c / norm
    scaled = {k: _scale(v, factor) for k, v in update.items()}
    # float32 rounding can leave the norm slightly above C; shrink until it is not.
    while l2_norm(scaled) > c:
        factor *= 1.0 - 2.0**-20
        scaled = {k: _scale(v, factor) for k, v in update.items()}
    return scaled


def _scale(v: _T, factor: float) -> _T:
    if _is_tensor(v):
        return v.detach() * factor
    return np.asarray(v) * factor


def gaussian_mechanism(
    total: ArrayLike,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    generator: RandomGenerator,
) -> tuple[NDArray[np.float64], GaussianEvent]:
    """Release a sum of clipped contributions with Gaussian noise σ = z·C.

    Parameters
    ----------
    total:
        Sum of contributions each clipped to L2 norm ``clipping_norm``.
    noise_multiplier:
        ``z`` in (0, inf).
    clipping_norm:
        ``C`` (the L2 sensitivity under add/remove of one contributor), in (0, inf).
    generator:
        Source of noise; a :class:`~protocols.dp.rng.SecureGenerator` gives
        floating-point-hardened noise.

    Returns
    -------
    The noisy sum and the :class:`~protocols.dp.events.GaussianEvent` it spent.
    """
    z = check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=True)
    c = check_real("clipping_norm", clipping_norm, low=0.0, low_open=True)
    x = np.asarray(total, dtype=np.float64)
    noise = np.asarray(generator.standard_normal(size=x.shape), dtype=np.float64)
    return x + (z * c) * noise, GaussianEvent(noise_multiplier=z)
