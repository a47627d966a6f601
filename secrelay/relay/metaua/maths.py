"""The server's maths, from the round's sums only: aggregate and meta-gradient.

Pure functions of arrays (numpy in, numpy out; torch for autograd), so the tests
call them directly: :func:`aggregate_from_sums` and :func:`meta_gradient_from_sums`
are what :class:`~secrelay.relay.metaua.strategy.MetaUAStrategy` runs;
:func:`direct_meta_gradient` is the per-client reference they are compared with.
``docs/metaua.md`` derives the formulas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from protocols.errors import InvalidParameterError
from secrelay.relay.metaua.attributes import SUM_NAMES
from secrelay.relay.metaua.layers import LayerPartition

__all__ = [
    "MetaUASums",
    "ServerOptimizer",
    "aggregate_from_sums",
    "direct_meta_gradient",
    "meta_gradient_from_sums",
    "server_step",
]

ServerOptimizer = Literal["sgd", "adagrad", "adam"]


@dataclass(frozen=True)
class MetaUASums:
    """One round's sums, validated against the layer partition and attribute count."""

    delta_e: np.ndarray
    delta_ez: np.ndarray
    e: np.ndarray
    ez: np.ndarray
    grad: np.ndarray
    count: float

    @classmethod
    def from_sums(
        cls, sums: Mapping[str, np.ndarray], partition: LayerPartition, m: int
    ) -> MetaUASums:
        """Check every name of :data:`SUM_NAMES` is there with its shape and ``e > 0``."""
        missing = [k for k in SUM_NAMES if k not in sums]
        if missing:
            raise InvalidParameterError(f"MetaUA sums are missing {missing}; got {sorted(sums)}")
        d, n_layers = partition.size, partition.num_layers
        expected = {
            "delta_e": (d,),
            "delta_ez": (m, d),
            "e": (n_layers,),
            "ez": (n_layers, m),
            "grad": (d,),
            "count": (1,),
        }
        arrays = {k: np.asarray(sums[k], dtype=np.float64) for k in SUM_NAMES}
        bad = {k: a.shape for k, a in arrays.items() if a.shape != expected[k]}
        if bad:
            raise InvalidParameterError(
                f"MetaUA sums have shapes {bad}; expected { ({k: expected[k] for k in bad}) }"
            )
        if not np.all(arrays["e"] > 0):
            raise InvalidParameterError(f"MetaUA sum `e` must be > 0; got {arrays['e']}")
        return cls(
            arrays["delta_e"],
            arrays["delta_ez"],
            arrays["e"],
            arrays["ez"],
            arrays["grad"],
            float(arrays["count"][0]),
        )


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) derivative where v == 0."""
    pos = v > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v)
    )


def server_step(
    delta: torch.Tensor,
    state: Mapping[str, np.ndarray],
    *,
    optimizer: ServerOptimizer,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The server optimizer's step for pseudo-gradient ``delta`` (differentiable).

    ``sgd``: η·Δ; ``adagrad``: v' = v + Δ², η·Δ/(√v' + τ); ``adam``:
    m' = β1·m + (1 − β1)·Δ, v' = β2·v + (1 − β2)·Δ², η·m'/(√v' + τ) (Reddi et al.
    2021, no bias correction, as :class:`~secrelay.federated.strategies.FedAdam`).
    ``state`` (``m``, ``v``) is the state *before* the step and is a constant.

    Examples
    --------
    >>> step, state = server_step(torch.tensor([3.0]), {}, optimizer="adagrad",
    ...                           lr=0.5, beta1=0.0, beta2=0.99, tau=0.0)
    >>> step.tolist(), state["v"].tolist()
    ([0.5], [9.0])
    """
    d = delta.shape[0]
    dtype = delta.dtype
    m0 = torch.as_tensor(np.asarray(state.get("m", np.zeros(d))), dtype=dtype)
    v0 = torch.as_tensor(np.asarray(state.get("v", np.zeros(d))), dtype=dtype)
    if optimizer == "sgd":
        return lr * delta, {"m": m0, "v": v0}
    if optimizer == "adagrad":
        v = v0 + delta**2
        return lr * delta / (_safe_sqrt(v) + tau), {"m": m0, "v": v}
    m1 = beta1 * m0 + (1 - beta1) * delta
    v = beta2 * v0 + (1 - beta2) * delta**2
    return lr * m1 / (_safe_sqrt(v) + tau), {"m": m1, "v": v}


def aggregate_from_sums(
    sums: MetaUASums, theta_s_logit: np.ndarray, layer_of: np.ndarray
) -> np.ndarray:
    """Δw = θ_s,l · Σ_k α_k,l Δw_k,l = sigmoid(s_l) · delta_e / e_l (per coordinate)."""
    scale = 1.0 / (1.0 + np.exp(-np.asarray(theta_s_logit, dtype=np.float64)))
    out: np.ndarray = scale[layer_of] * sums.delta_e / sums.e[layer_of]
    return out


def meta_gradient_from_sums(
    sums: MetaUASums,
    mean_grad: np.ndarray,
    theta_s_logit: np.ndarray,
    theta_alpha: np.ndarray,
    w_prev: np.ndarray,
    state: Mapping[str, np.ndarray],
    layer_of: np.ndarray,
    **opt: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """∂(ḡ · w^t)/∂(s, θ_α) at the θ of the round that produced ``w^t``, from sums.

    ``w^t = w_prev + server_step(Δw(θ))``. Autograd runs through a surrogate of
    the sums that equals them at the devices' θ_α and has the exact first
    derivatives there (``∂ delta_e/∂θ_α,l = delta_ez`` on layer ``l``,
    ``∂ e_l/∂θ_α,l = ez_l``; docs/metaua.md), so the gradient is exact.

    Returns
    -------
    (grad_s, grad_alpha)
        Shapes ``(L,)`` and ``(L, m)``.
    """
    lo = torch.as_tensor(layer_of)
    s = torch.tensor(np.asarray(theta_s_logit, dtype=np.float64), requires_grad=True)
    a0 = torch.as_tensor(np.asarray(theta_alpha, dtype=np.float64))
    a = a0.clone().requires_grad_(True)
    da = a - a0  # zero-valued, carries the derivative
    num = torch.as_tensor(sums.delta_e) + (da[lo] * torch.as_tensor(sums.delta_ez).T).sum(-1)
    den = torch.as_tensor(sums.e) + (da * torch.as_tensor(sums.ez)).sum(-1)
    delta = torch.sigmoid(s)[lo] * num / den[lo]
    return _meta_gradient(delta, s, a, mean_grad, w_prev, state, opt)[1:]


def direct_meta_gradient(
    deltas: np.ndarray,
    zs: np.ndarray,
    base_weights: np.ndarray,
    mean_grad: np.ndarray,
    theta_s_logit: np.ndarray,
    theta_alpha: np.ndarray,
    w_prev: np.ndarray,
    state: Mapping[str, np.ndarray],
    layer_of: np.ndarray,
    **opt: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: the aggregate and meta-gradient from per-client values by autograd.

    What a server that saw every Δw_k and z_k would compute (the tests compare the
    sums-based path with it). Returns ``(w_new, grad_s, grad_alpha)``.
    """
    lo = torch.as_tensor(layer_of)
    s = torch.tensor(np.asarray(theta_s_logit, dtype=np.float64), requires_grad=True)
    a = torch.tensor(np.asarray(theta_alpha, dtype=np.float64), requires_grad=True)
    z = torch.as_tensor(np.asarray(zs, dtype=np.float64))  # (K, m)
    logits = (
        z @ a.T + torch.log(torch.as_tensor(np.asarray(base_weights, dtype=np.float64)))[:, None]
    )  # (K, L)
    alpha = torch.softmax(logits, dim=0)  # over clients, per layer
    dw = torch.as_tensor(np.asarray(deltas, dtype=np.float64))  # (K, d)
    delta = torch.sigmoid(s)[lo] * (alpha[:, lo] * dw).sum(0)
    return _meta_gradient(delta, s, a, mean_grad, w_prev, state, opt)


def _meta_gradient(
    delta: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    mean_grad: np.ndarray,
    w_prev: np.ndarray,
    state: Mapping[str, np.ndarray],
    opt: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w^t, ∂(ḡ · w^t)/∂s, ∂(ḡ · w^t)/∂a)`` for the aggregate ``delta(s, a)``."""
    step, _ = server_step(delta, state, **opt)
    w = torch.as_tensor(np.asarray(w_prev, dtype=np.float64)) + step
    loss = (torch.as_tensor(np.asarray(mean_grad, dtype=np.float64)) * w).sum()
    gs, ga = torch.autograd.grad(loss, (s, a))
    return w.detach().numpy(), gs.numpy(), ga.numpy()
