"""Parameter plumbing for federated and secure aggregation.

A model's *flat layout* is the concatenation, in ``model.state_dict()`` order, of
every floating-point tensor of its state dict (parameters and floating buffers;
integer buffers such as the embedding offsets are not part of it), each
flattened in row-major order. The layout depends only on the model's
architecture, so two models built from the same registry name, schema and
keyword arguments always agree on it; :func:`flat_parameter_slices` names each
block. A model wrapped by Opacus (``GradSampleModule`` or its ghost-clipping
variant) is unwrapped first, so the layout and the names are the same before and
after ``PrivacyEngine.make_private``.

Loading (:func:`load_flat_parameters`, :func:`numpy_dict_to_parameters`)
checks the whole input first (shape, names, finiteness) and only then writes, so
a malformed aggregate is rejected without being half-applied.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from opacus.grad_sample import AbstractGradSampleModule
from torch import nn

from protocols.errors import InvalidParameterError

__all__ = [
    "count_parameters",
    "flat_parameter_slices",
    "flatten_parameters",
    "load_flat_parameters",
    "numpy_dict_to_parameters",
    "parameters_to_numpy_dict",
]


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, AbstractGradSampleModule):
        inner = model._module
        if not isinstance(inner, nn.Module):  # pragma: no cover - Opacus invariant
            break
        model = inner
    return model


def _floating_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The floating tensors of the state dict, in order (sharing storage with the model)."""
    return [(k, v) for k, v in _unwrap(model).state_dict().items() if v.is_floating_point()]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once).

    Parameters
    ----------
    model:
        Any module.
    trainable_only:
        Count only parameters with ``requires_grad``.

    Examples
    --------
    >>> count_parameters(torch.nn.Linear(3, 2))
    8
    """
    return sum(
        p.numel() for p in _unwrap(model).parameters() if p.requires_grad or not trainable_only
    )


def flat_parameter_slices(model: nn.Module) -> dict[str, slice]:
    """Where each state-dict entry lies in :func:`flatten_parameters`'s vector.

    Examples
    --------
    >>> flat_parameter_slices(torch.nn.Linear(3, 2))
    {'weight': slice(0, 6, None), 'bias': slice(6, 8, None)}
    """
    out: dict[str, slice] = {}
    start = 0
    for name, t in _floating_state(model):
        out[name] = slice(start, start + t.numel())
        start += t.numel()
    return out


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    """All floating state of ``model`` as one new 1-D tensor (the flat layout).

    The result is a copy, detached from autograd, on the model's device, with
    the dtype of the model's tensors (``torch.cat`` promotion if they differ).

    Examples
    --------
    >>> lin = torch.nn.Linear(3, 2)
    >>> flatten_parameters(lin).shape
    torch.Size([8])
    """
    tensors = [t.detach().reshape(-1) for _, t in _floating_state(model)]
    if not tensors:
        return torch.zeros(0)
    return torch.cat(tensors).clone()


def load_flat_parameters(model: nn.Module, vec: torch.Tensor | np.ndarray) -> None:
    """Write a flat vector (the layout of :func:`flatten_parameters`) into ``model``.

    Parameters
    ----------
    model:
        The module to overwrite in place.
    vec:
        1-D tensor or array with exactly :func:`count_parameters`-many entries of
        the flat layout; all finite.

    Raises
    ------
    InvalidParameterError
        If ``vec`` is not 1-D, has the wrong length or holds NaN/inf; the model
        is then unchanged.

    Examples
    --------
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> load_flat_parameters(b, flatten_parameters(a))
    >>> bool(torch.equal(a.weight, b.weight))
    True
    """
    flat = torch.as_tensor(vec)
    state = _floating_state(model)
    total = sum(t.numel() for _, t in state)
    if flat.ndim != 1 or flat.numel() != total:
        raise InvalidParameterError(
            f"`vec` must be a 1-D vector of {total} values (the model's flat layout); "
            f"got shape {tuple(flat.shape)}"
        )
    if not flat.is_floating_point():
        raise InvalidParameterError(f"`vec` must hold floating-point values; got {flat.dtype}")
    if not bool(torch.isfinite(flat).all()):
        raise InvalidParameterError("`vec` holds NaN or infinite values; the model is unchanged")
    start = 0
    with torch.no_grad():
        for _, t in state:
            n = t.numel()
            t.copy_(flat[start : start + n].view(t.shape))
            start += n


def parameters_to_numpy_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies of the floating state of ``model`` as numpy arrays, keyed by state-dict name.

    The dict preserves the flat-layout order.

    Examples
    --------
    >>> {k: v.shape for k, v in parameters_to_numpy_dict(torch.nn.Linear(3, 2)).items()}
    {'weight': (2, 3), 'bias': (2,)}
    """
    return {k: t.detach().cpu().numpy().copy() for k, t in _floating_state(model)}


def numpy_dict_to_parameters(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays from :func:`parameters_to_numpy_dict` (or an aggregate) into ``model``.

    Parameters
    ----------
    model:
        The module to overwrite in place.
    arrays:
        Exactly the names of ``parameters_to_numpy_dict(model)``, each with the
        same shape and finite values.

    Raises
    ------
    InvalidParameterError
        Listing every missing or unexpected name, shape mismatch and non-finite
        entry; the model is then unchanged.
    """
    state = _floating_state(model)
    names = [k for k, _ in state]
    problems: list[str] = []
    missing = [k for k in names if k not in arrays]
    unexpected = sorted(set(arrays) - set(names))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    converted: dict[str, np.ndarray] = {}
    for k, t in state:
        if k not in arrays:
            continue
        a = np.asarray(arrays[k])
        if a.shape != tuple(t.shape):
            problems.append(f"{k!r} has shape {a.shape}, expected {tuple(t.shape)}")
        elif not np.issubdtype(a.dtype, np.floating):
            problems.append(f"{k!r} has dtype {a.dtype}, expected floating point")
        elif not np.isfinite(a).all():
            problems.append(f"{k!r} holds NaN or infinite values")
        else:
            converted[k] = a
    if problems:
        raise InvalidParameterError(
            "cannot load parameters (the model is unchanged): " + "; ".join(problems)
        )
    with torch.no_grad():
        for k, t in state:
            t.copy_(torch.from_numpy(np.ascontiguousarray(converted[k])).to(t.dtype))
