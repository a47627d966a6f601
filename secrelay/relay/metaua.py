"""MetaUA: online meta-learned update aggregation, computed from named sums only.

Paper: X. Liu, B. Twardowski, T. K. Wijaya, "Online Meta-Learning for Model Update
Aggregation in Federated Learning for Click-Through Rate Prediction", AdKDD 2022
(arXiv:2209.00629).

The server aggregates the devices' model updates with learnable, layer-wise
parameters (MetaUA, "online meta-learned update aggregation"; DESIGN.md, method 4)::

    Δw_l = θ_s,l · Σ_k α_k,l Δw_k,l,    α_k,l = softmax_k(f_α(z_k; θ_α,l)),
    f_α(z; θ_α,l) = θ_α,l · z + log b_k,   θ_s,l = sigmoid(s_l) ∈ (0, 1),

where ``l`` runs over the model's layers (the parameters of one module),
``z_k`` are non-sensitive client attributes (:data:`ATTRIBUTES`) and ``b_k`` is a
fixed base weight (the sample count for ``weighting = "samples"``, so that
``θ_α = 0`` starts from sample-weighted FedAvg). ``Δw`` is the pseudo-gradient of
a server optimizer (FedAdagrad by default; SGD and FedAdam too).

The meta-gradient is delayed by one round: the clients of round ``t`` report
``g_k = ∂L_k(query)/∂w^t`` at the model they downloaded, and the server computes
``∂(ḡ^t · w^t)/∂θ^{t−1}`` by autograd through the round ``t − 1`` aggregation and
server-optimizer step, then takes one SGD step (meta learning rate 2.0).

**Sums only.** For linear ``f_α`` the aggregate and its meta-gradient need only
the per-layer sums (``e_k,l = b_k · exp(θ_α,l · z_k)``, computed on the device from
the downloaded ``θ_α``)::

    delta_e  = Σ_k e_k,l Δw_k,l         (d,)    (each coordinate uses its layer's e)
    delta_ez = Σ_k e_k,l z_k ⊗ Δw_k,l   (m, d)
    e        = Σ_k e_k,l                (L,)
    ez       = Σ_k e_k,l z_k            (L, m)
    grad     = Σ_k g_k                  (d,)
    count    = Σ_k 1                    (1,)

so :class:`MetaUAStrategy` works through any
:class:`~secrelay.federated.aggregation.SumProtocol` (secure aggregation included)
and never sees an individual update. ``docs/metaua.md`` derives the formulas;
:func:`direct_meta_gradient` is the per-client autograd reference the tests
compare the sums-based path with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    ClientProgram,
    ContributionRule,
    DeviceData,
    DeviceOutput,
    DeviceTask,
    KeySelector,
    LocalResult,
    LocalTrainer,
    ModelSpec,
    UpdateTransform,
    flat_parameters,
    load_flat_parameters,
    single_thread,
)
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.strategies import Strategy
from secrelay.methods import FederatedMethod, make_train_config, train_cloud_model
from secrelay.training import soft_bce_with_logits

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_CLIP",
    "GLOBAL_KEY",
    "SUM_NAMES",
    "THETA_ALPHA_KEY",
    "LayerPartition",
    "MetaUAMethod",
    "MetaUAOptions",
    "MetaUAProgram",
    "MetaUAStrategy",
    "MetaUASums",
    "ServerOptimizer",
    "aggregate_from_sums",
    "client_contribution",
    "direct_meta_gradient",
    "meta_gradient_from_sums",
    "normalise_attributes",
    "server_step",
]

GLOBAL_KEY = "global"
THETA_ALPHA_KEY = "metaua/theta_alpha"
"""Download key of θ_α (flattened ``(L, m)``): the device needs it to compute e_k."""

SUM_NAMES = ("delta_e", "delta_ez", "e", "ez", "grad", "count")

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

ServerOptimizer = Literal["sgd", "adagrad", "adam"]
Weighting = Literal["samples", "uniform"]


# --- layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPartition:
    """The layers of a flat parameter vector: one layer per owning module.

    Attributes
    ----------
    names:
        Module names (``"cross.layers.0"``), in ``model.parameters()`` order.
    bounds:
        ``[start, stop)`` of each layer's coordinates in the flat vector.
    """

    names: tuple[str, ...]
    bounds: tuple[tuple[int, int], ...]

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> LayerPartition:
        names: list[str] = []
        bounds: list[tuple[int, int]] = []
        offset = 0
        for pname, p in model.named_parameters():
            module = pname.rsplit(".", 1)[0] if "." in pname else pname
            n = p.numel()
            if names and names[-1] == module and bounds[-1][1] == offset:
                bounds[-1] = (bounds[-1][0], offset + n)
            else:
                names.append(module)
                bounds.append((offset, offset + n))
            offset += n
        return cls(tuple(names), tuple(bounds))

    @property
    def num_layers(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return self.bounds[-1][1] if self.bounds else 0

    def layer_of(self) -> np.ndarray:
        """The layer index of every coordinate, shape ``(d,)``."""
        out = np.empty(self.size, dtype=np.int64)
        for i, (a, b) in enumerate(self.bounds):
            out[a:b] = i
        return out


# --- client attributes and the device-side contribution ---------------------------------


def normalise_attributes(raw: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """Map raw client statistics to the attribute vector ``z`` (see :data:`ATTRIBUTES`).

    Counts and norms go through ``log1p`` (heavy-tailed), ratios and rates stay as
    they are; every value is clipped into ``[0, ATTRIBUTE_CLIP]``. No cross-client
    standardisation is needed: softmax is invariant to adding a constant to every
    client's ``θ_α · z``, so only the scale of each attribute matters, and the
    transforms put all six on a scale of about 0–7.
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
    """The named sums one device contributes (module docstring).

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
        Layer index of every coordinate (:meth:`LayerPartition.layer_of`).
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


def _loss_and_grad(
    model: torch.nn.Module, data: CTRDataset, *, need_grad: bool
) -> tuple[float, np.ndarray | None]:
    """Mean BCE of ``model`` on ``data`` and (optionally) its flat gradient."""
    model.eval()
    x = torch.from_numpy(np.array(data.x))
    y = torch.from_numpy(np.array(data.y, dtype=np.float32))
    model.zero_grad(set_to_none=True)
    if need_grad:
        loss = soft_bce_with_logits(model(x), y)
        params = list(model.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        g = torch.cat(
            [
                (gr if gr is not None else torch.zeros_like(p)).reshape(-1)
                for gr, p in zip(grads, params)
            ]
        )
        return float(loss.detach()), g.numpy().astype(np.float64)
    with torch.no_grad():
        return float(soft_bce_with_logits(model(x), y)), None


@dataclass(frozen=True)
class _NoRule(ContributionRule):
    """MetaUA devices contribute through :class:`MetaUAProgram` (it needs g_k and z_k,
    which a plain :class:`LocalResult` does not carry)."""

    def contribute(self, result: LocalResult, task: DeviceTask) -> dict[str, np.ndarray]:
        raise InvalidParameterError("MetaUA contributions come from MetaUAProgram.run()")


@dataclass(frozen=True)
class MetaUAProgram(ClientProgram):
    """The MetaUA device: query gradient, local training, attributes, the sums.

    Per round, on the device: split the training rows once (fixed per device) into
    a query part (``query_fraction``) and a support part; compute
    ``g_k = ∂L_k(query)/∂w`` at the downloaded ``w``; train locally (on all rows or
    on the support part, ``train_on``); compute the attributes ``z_k`` and
    ``e_k = b_k · exp(θ_α z_k)`` from the downloaded θ_α; contribute
    :func:`client_contribution`. Only the sums leave the device.
    """

    model: ModelSpec
    trainer: LocalTrainer
    partition: LayerPartition
    attributes: tuple[str, ...]
    query_fraction: float = 0.2
    train_on: Literal["all", "support"] = "all"
    weighting: Weighting = "samples"
    split_seed: int = 0
    transforms: tuple[UpdateTransform, ...] = ()

    def split(self, data: DeviceData) -> tuple[CTRDataset, CTRDataset]:
        """(support, query) of the device's training rows; the same every round."""
        n = len(data.train)
        rng = np.random.default_rng(np.random.SeedSequence([self.split_seed, data.device_id, 71]))
        k = min(max(round(self.query_fraction * n), 1), n - 1) if n >= 2 else 0
        perm = rng.permutation(n)
        query = data.train.subset(np.sort(perm[:k])) if k else data.train
        support = data.train.subset(np.sort(perm[k:])) if k else data.train
        return support, query

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        if GLOBAL_KEY not in task.models or THETA_ALPHA_KEY not in task.models:
            raise InvalidParameterError(
                f"MetaUA needs models {GLOBAL_KEY!r} and {THETA_ALPHA_KEY!r}; "
                f"got {sorted(task.models)}"
            )
        m = len(self.attributes)
        theta_alpha = np.asarray(task.models[THETA_ALPHA_KEY], dtype=np.float64).reshape(
            self.partition.num_layers, m
        )
        start = np.asarray(task.models[GLOBAL_KEY], dtype=np.float32)
        support, query = self.split(data)
        train_rows = data.train if self.train_on == "all" else support
        local = DeviceData(data.device_id, train_rows, data.test)
        need = set(self.attributes)
        with single_thread():
            torch.manual_seed(task.seed)
            generator = torch.Generator().manual_seed(task.seed)
            model = self.model.build()
            load_flat_parameters(model, start)
            _, g_query = _loss_and_grad(model, query, need_grad=True)
            raw: dict[str, float] = {
                "sample_count": float(len(train_rows)),
                "positive_rate": train_rows.ctr,
                "unique_features": float(np.unique(train_rows.x[train_rows.x != 0]).size),
            }
            if need & {"local_loss", "grad_norm", "loss_ratio"}:
                before, g_train = _loss_and_grad(model, train_rows, need_grad="grad_norm" in need)
                raw["local_loss"] = before
                if g_train is not None:
                    raw["grad_norm"] = float(np.linalg.norm(g_train))
            reference = None
            if self.trainer.prox_mu > 0:
                reference = [p.detach().clone() for p in model.parameters()]
            outcome = self.trainer.train_round(
                model, local, generator=generator, reference=reference, task=task
            )
            steps, loss = outcome.steps, outcome.loss
            if "loss_ratio" in need:
                after, _ = _loss_and_grad(model, train_rows, need_grad=False)
                raw["loss_ratio"] = after / max(raw["local_loss"], 1e-12)
            delta = (flat_parameters(model) - start).astype(np.float32)
        rng = np.random.default_rng(np.random.SeedSequence([task.seed, 1]))
        for t in self.transforms:
            delta = t.apply(delta, rng=rng)
        z = normalise_attributes(raw, self.attributes)
        base = float(len(train_rows)) if self.weighting == "samples" else 1.0
        assert g_query is not None
        contribution = client_contribution(
            delta, g_query, z, theta_alpha, base, self.partition.layer_of()
        )
        return DeviceOutput(
            contribution,
            private={"model_key": GLOBAL_KEY},
            stats={"loss": loss, "steps": float(steps)},
            privacy_records=outcome.privacy_records,
        )


# --- server-side maths -----------------------------------------------------------------


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
    step, _ = server_step(delta, state, **opt)
    w = torch.as_tensor(np.asarray(w_prev, dtype=np.float64)) + step
    loss = (torch.as_tensor(np.asarray(mean_grad, dtype=np.float64)) * w).sum()
    gs, ga = torch.autograd.grad(loss, (s, a))
    return gs.numpy(), ga.numpy()


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
    step, _ = server_step(delta, state, **opt)
    w = torch.as_tensor(np.asarray(w_prev, dtype=np.float64)) + step
    loss = (torch.as_tensor(np.asarray(mean_grad, dtype=np.float64)) * w).sum()
    gs, ga = torch.autograd.grad(loss, (s, a))
    return w.detach().numpy(), gs.numpy(), ga.numpy()


# --- options ---------------------------------------------------------------------------


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


@dataclass(frozen=True)
class MetaUAOptions:
    """``[method.options]`` of ``method.name = "metaua"``.

    Parameters
    ----------
    attributes:
        Client attributes z_k (a subset of :data:`ATTRIBUTES`; paper's best:
        ``["local_loss"]``).
    meta_lr:
        SGD learning rate of θ = (s, θ_α) (> 0; paper 2.0).
    learn_weights, learn_server_scale:
        Meta-learn θ_α (client weighting) and θ_s (server learning rate); both
        off is the ablation "none" (fixed weights, fixed θ_s).
    server_scale_init:
        Initial θ_s in (0, 1).
    server_optimizer, server_lr, beta1, beta2, tau:
        The server optimizer on the pseudo-gradient Δw (FedAdagrad by default).
    weighting:
        Base weight b_k: ``"samples"`` (θ_α = 0 is sample-weighted FedAvg) or
        ``"uniform"``.
    query_fraction:
        Fraction of each device's training rows held out as its query split (0, 1).
    train_on:
        Local training on ``"all"`` training rows (default, same data as the
        FedAvg baselines) or on the ``"support"`` rows only.
    meta_grad_clip:
        Clip the meta-gradient of each of s and θ_α to this L2 norm (0 = off).
    query_reduction:
        The meta-objective over the round's clients: ``"mean"`` (ḡ = Σg_k / K,
        default) or ``"sum"`` (ḡ = Σg_k; the same as multiplying ``meta_lr`` by
        the number of clients per round).
    dp_grad_bound, dp_attribute_bound, dp_weight_bound:
        Under ``privacy.user_level_dp`` (needs ``weighting = "uniform"``): the L2
        bound G of a device's query gradient g_k, Z of its attribute vector z_k and
        E of its per-layer weight e_k,l = exp(θ_α,l · z_k) (1 at θ_α = 0). Each
        summed name is clipped on the device to the bound these imply (with the
        update's ``privacy.clipping_norm`` C: ``delta_e`` C·E, ``delta_ez`` C·E·Z,
        ``e`` E·√L, ``ez`` E·√L·Z, ``grad`` G) and noised in proportion to it
        (:meth:`MetaUAStrategy.release_spec`).
    dp_meta_share:
        The share w of the meta-learning sums (``delta_ez``, ``ez``, ``grad``) in the
        release's sensitivity C·√(2 + 3w²), in (0, 1] (default 0.5: the aggregation
        sums ``delta_e`` and ``e`` then get z·√2.75 times their bound of noise
        instead of z·√5).
    """

    attributes: tuple[str, ...] = ("local_loss",)
    meta_lr: float = 2.0
    learn_weights: bool = True
    learn_server_scale: bool = True
    server_scale_init: float = 0.5
    server_optimizer: ServerOptimizer = "adagrad"
    server_lr: float = 0.01
    beta1: float = 0.0
    beta2: float = 0.99
    tau: float = 1e-3
    weighting: Weighting = "samples"
    query_fraction: float = 0.2
    train_on: Literal["all", "support"] = "all"
    meta_grad_clip: float = 0.0
    query_reduction: Literal["mean", "sum"] = "mean"
    dp_grad_bound: float = 1.0
    dp_attribute_bound: float = 1.0
    dp_weight_bound: float = 1.0
    dp_meta_share: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        attrs = tuple(self.attributes)
        object.__setattr__(self, "attributes", attrs)
        bad = [a for a in attrs if a not in ATTRIBUTES]
        if not attrs or bad or len(set(attrs)) != len(attrs):
            problems.append(
                f"method.options.attributes must be a non-empty list of distinct names from "
                f"{list(ATTRIBUTES)}; got {list(attrs)}"
            )
        for name in (
            "meta_lr",
            "server_lr",
            "tau",
            "dp_grad_bound",
            "dp_attribute_bound",
            "dp_weight_bound",
        ):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                problems.append(f"method.options.{name} must be a finite number > 0; got {v!r}")
        for name in ("server_scale_init", "query_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                problems.append(f"method.options.{name} must be in (0, 1); got {v!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                problems.append(f"method.options.{name} must be in [0, 1); got {v!r}")
        if not (isinstance(self.dp_meta_share, (int, float)) and 0 < self.dp_meta_share <= 1):
            problems.append(
                f"method.options.dp_meta_share must be in (0, 1]; got {self.dp_meta_share!r}"
            )
        if self.server_optimizer not in ("sgd", "adagrad", "adam"):
            problems.append(
                "method.options.server_optimizer must be 'sgd', 'adagrad' or 'adam'; "
                f"got {self.server_optimizer!r}"
            )
        if self.weighting not in ("samples", "uniform"):
            problems.append(
                f"method.options.weighting must be 'samples' or 'uniform'; got {self.weighting!r}"
            )
        if self.query_reduction not in ("mean", "sum"):
            problems.append(
                "method.options.query_reduction must be 'mean' or 'sum'; "
                f"got {self.query_reduction!r}"
            )
        if self.train_on not in ("all", "support"):
            problems.append(
                f"method.options.train_on must be 'all' or 'support'; got {self.train_on!r}"
            )
        if not (isinstance(self.meta_grad_clip, (int, float)) and self.meta_grad_clip >= 0):
            problems.append(
                f"method.options.meta_grad_clip must be >= 0; got {self.meta_grad_clip!r}"
            )
        for name in ("learn_weights", "learn_server_scale"):
            if not isinstance(getattr(self, name), bool):
                problems.append(
                    f"method.options.{name} must be true or false; got {getattr(self, name)!r}"
                )
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> MetaUAOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join('method.options.' + u for u in unknown)} for method "
                f"'metaua'; valid keys: {', '.join(sorted(known))}"
            )
        kwargs = dict(options)
        if "attributes" in kwargs:
            a = kwargs["attributes"]
            kwargs["attributes"] = (a,) if isinstance(a, str) else tuple(a)
        for name in (
            "meta_lr",
            "server_scale_init",
            "server_lr",
            "beta1",
            "beta2",
            "tau",
            "query_fraction",
            "meta_grad_clip",
            "dp_grad_bound",
            "dp_attribute_bound",
            "dp_weight_bound",
            "dp_meta_share",
        ):
            if isinstance(kwargs.get(name), int) and not isinstance(kwargs[name], bool):
                kwargs[name] = float(kwargs[name])
        return cls(**kwargs)

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {
            "optimizer": self.server_optimizer,
            "lr": self.server_lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
        }


# --- the strategy ----------------------------------------------------------------------


class MetaUAStrategy(Strategy):
    """Learnable layer-wise aggregation with a one-round-delayed meta-gradient.

    The server holds ``w`` (``models["global"]``), θ = (s, θ_α), the server
    optimizer's state and, from the previous round, (w^{t−1}, its sums, the θ
    they were computed with, the optimizer state before that step). Each
    :meth:`apply` (round t):

    1. if a previous round is stored: meta-gradient ∂(ḡ^t · w^t)/∂θ^{t−1} from the
       stored sums and ḡ^t = Σg_k/Σ1 of this round, one SGD step on θ (applied
       to the current θ, the online delayed update);
    2. aggregate this round's sums with the θ the devices used (the one they
       downloaded), take the server-optimizer step, store this round;
    3. from the next download on, devices get the new θ_α.
    """

    name: ClassVar[str] = "metaua"

    def __init__(self, model_spec: ModelSpec, options: MetaUAOptions | None = None) -> None:
        super().__init__()
        self.options = options or MetaUAOptions()
        self.model_spec = model_spec
        self.partition = LayerPartition.from_model(model_spec.build())
        self._layer_of = self.partition.layer_of()
        n_layers, m = self.partition.num_layers, len(self.options.attributes)
        self.theta_s = np.full(n_layers, _logit(self.options.server_scale_init))
        self.theta_alpha = np.zeros((n_layers, m))
        self.opt_state: dict[str, np.ndarray] = {}
        self.previous: dict[str, Any] | None = None
        # Under user-level DP the sum `e` is noisy: it is floored at 3 noise
        # standard deviations before dividing by it (set_release_noise).
        self.e_floor = 0.0

    # --- device side ----------------------------------------------------------------
    def contribution_rule(self) -> ContributionRule:
        return _NoRule()

    def client_program(
        self,
        model: ModelSpec,
        trainer: LocalTrainer,
        *,
        selector: KeySelector | None = None,
        transforms: Sequence[UpdateTransform] = (),
    ) -> ClientProgram:
        o = self.options
        return MetaUAProgram(
            model=model,
            trainer=trainer,
            partition=self.partition,
            attributes=o.attributes,
            query_fraction=o.query_fraction,
            train_on=o.train_on,
            weighting=o.weighting,
            transforms=tuple(transforms),
        )

    def download(self, round: int) -> dict[str, np.ndarray]:
        out = super().download(round)
        theta = self.theta_alpha.astype(np.float32).ravel()
        theta.setflags(write=False)
        out[THETA_ALPHA_KEY] = theta
        return out

    def release_spec(self, clipping_norm: float) -> ReleaseSpec | None:
        """User-level DP release of the MetaUA sums (:class:`MetaUAOptions`, ``dp_*``).

        Every summed name is noised with a bound from the update's clipping norm C
        and the options' G, Z, E (the meta-learning sums with share
        ``dp_meta_share``); ``count`` (1 per device) is public. Needs uniform
        base weights (sample counts are data): ``None`` otherwise.
        """
        o = self.options
        if o.weighting != "uniform":
            return None
        c, g = float(clipping_norm), float(o.dp_grad_bound)
        z, e = float(o.dp_attribute_bound), float(o.dp_weight_bound)
        d, n_layers, m = self.partition.size, self.partition.num_layers, len(o.attributes)
        root_l = float(np.sqrt(n_layers))
        return ReleaseSpec(
            noised=(
                ("delta_e", c * e),
                ("delta_ez", c * e * z),
                ("e", e * root_l),
                ("ez", e * root_l * z),
                ("grad", g),
            ),
            public_counts=("count",),
            shapes=(
                ("delta_e", (d,)),
                ("delta_ez", (m, d)),
                ("e", (n_layers,)),
                ("ez", (n_layers, m)),
                ("grad", (d,)),
            ),
            weights=tuple((name, float(o.dp_meta_share)) for name in ("delta_ez", "ez", "grad")),
        )

    def set_release_noise(self, noise_std: Mapping[str, float]) -> None:
        if "e" in noise_std:
            self.e_floor = 3.0 * float(noise_std["e"])

    @property
    def server_scale(self) -> np.ndarray:
        """θ_s per layer, in (0, 1)."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.theta_s)))

    # --- server side ----------------------------------------------------------------
    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        o = self.options
        m = len(o.attributes)
        if self.e_floor > 0 and "e" in sums:
            # Post-processing of a noisy release: never divide by a noise-sized `e`.
            sums = {**sums, "e": np.maximum(np.asarray(sums["e"], dtype=np.float64), self.e_floor)}
        cur = MetaUASums.from_sums(sums, self.partition, m)
        w = np.asarray(self.models[GLOBAL_KEY], dtype=np.float64)
        stats: dict[str, float] = {}
        new_s, new_alpha = self.theta_s.copy(), self.theta_alpha.copy()
        if (
            self.previous is not None
            and cur.count > 0
            and (o.learn_weights or o.learn_server_scale)
        ):
            prev = self.previous
            gbar = cur.grad / cur.count if o.query_reduction == "mean" else cur.grad
            gs, ga = meta_gradient_from_sums(
                prev["sums"],
                gbar,
                prev["theta_s"],
                prev["theta_alpha"],
                prev["w"],
                prev["state"],
                self._layer_of,
                **o.optimizer_kwargs(),
            )
            if o.meta_grad_clip > 0:
                gs = _clip(gs, o.meta_grad_clip)
                ga = _clip(ga, o.meta_grad_clip)
            stats["meta_grad_norm_s"] = float(np.linalg.norm(gs))
            stats["meta_grad_norm_alpha"] = float(np.linalg.norm(ga))
            if o.learn_server_scale:
                new_s = self.theta_s - o.meta_lr * gs
            if o.learn_weights:
                new_alpha = np.clip(
                    self.theta_alpha - o.meta_lr * ga, -THETA_ALPHA_BOUND, THETA_ALPHA_BOUND
                )
        # Aggregate this round with the θ the devices used (what they downloaded).
        used_alpha = self.theta_alpha.astype(np.float32).astype(np.float64)
        delta = aggregate_from_sums(cur, self.theta_s, self._layer_of)
        step, state = server_step(torch.as_tensor(delta), self.opt_state, **o.optimizer_kwargs())
        self.previous = {
            "sums": cur,
            "theta_s": self.theta_s.copy(),
            "theta_alpha": used_alpha,
            "w": w.copy(),
            "state": {k: v.copy() for k, v in self.opt_state.items()},
        }
        self.opt_state = {k: v.numpy().copy() for k, v in state.items()}
        self._set(GLOBAL_KEY, w + step.numpy())
        self.theta_s, self.theta_alpha = new_s, new_alpha
        scale = self.server_scale
        stats.update(
            {
                "update_norm": float(np.linalg.norm(step.numpy())),
                "theta_s_mean": float(scale.mean()),
                "theta_s_min": float(scale.min()),
                "theta_s_max": float(scale.max()),
                "theta_alpha_mean": float(self.theta_alpha.mean()),
                "query_loss_grad_norm": float(np.linalg.norm(cur.grad / max(cur.count, 1.0))),
            }
        )
        return stats

    # --- persistence ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        prev = None
        if self.previous is not None:
            prev = {**self.previous, "sums": dataclasses.asdict(self.previous["sums"])}
        return {
            **super().state_dict(),
            "theta_s": self.theta_s.copy(),
            "theta_alpha": self.theta_alpha.copy(),
            "opt_state": {k: v.copy() for k, v in self.opt_state.items()},
            "previous": prev,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.theta_s = np.asarray(state["theta_s"], dtype=np.float64).copy()
        self.theta_alpha = np.asarray(state["theta_alpha"], dtype=np.float64).copy()
        self.opt_state = {k: np.asarray(v).copy() for k, v in state["opt_state"].items()}
        prev = state.get("previous")
        if prev is None:
            self.previous = None
        else:
            self.previous = {**prev, "sums": MetaUASums(**prev["sums"])}


def _clip(g: np.ndarray, bound: float) -> np.ndarray:
    n = float(np.linalg.norm(g))
    return g * (bound / n) if n > bound else g


# --- the method --------------------------------------------------------------------------


class MetaUAMethod(FederatedMethod):
    """``method.name = "metaua"``: federated relay from the cloud model with MetaUA.

    The cloud model (trained on the pre-regulation cloud data) is the start;
    every round samples devices per ``[federated]``, each runs
    :class:`MetaUAProgram` with the ``[local]`` trainer, and
    :class:`MetaUAStrategy` aggregates the sums. ``[strategy]`` is not used.
    """

    name = "metaua"

    def _make(self) -> MetaUAStrategy:
        return MetaUAStrategy(
            self.ctx.model_spec, MetaUAOptions.from_mapping(self.ctx.config.method.options)
        )

    @classmethod
    def strategy_problems(cls, config: RunConfig) -> list[str]:
        """MetaUA's own strategy replaces ``[strategy]``; its privacy requirements."""
        p, o = config.privacy, MetaUAOptions.from_mapping(config.method.options)
        problems = []
        if p.dp_sgd and not p.user_level_dp:
            problems.append(
                "privacy.dp_sgd alone does not cover MetaUA: the query gradient g_k and the "
                "attributes z_k are computed from device data outside DP-SGD; turn on "
                "privacy.user_level_dp too (it clips and noises every MetaUA sum)"
            )
        if p.dp_sgd and o.train_on != "all":
            problems.append(
                "privacy.dp_sgd with MetaUA needs method.options.train_on = 'all' (the DP-SGD "
                "budget dry run is computed on a device's whole training split)"
            )
        if p.user_level_dp and o.weighting != "uniform":
            problems.append(
                "privacy.user_level_dp with MetaUA needs method.options.weighting = 'uniform' "
                f"(sample-count base weights are device data); got {o.weighting!r}"
            )
        return problems

    def setup(self) -> None:
        cfg = self.ctx.config
        strategy = self._make()
        cloud_vec = train_cloud_model(
            self.ctx.model_spec,
            self.ctx.data.cloud,
            make_train_config(cfg.cloud),
            seed=self.ctx.seed,
        )
        strategy.initialize({GLOBAL_KEY: cloud_vec})
        self.strategy = strategy
        self._build()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        strategy = self._make()
        strategy.initialize(state["loop"]["strategy"]["models"])
        self.strategy = strategy
        self._build()
        self.loop.load_state_dict(state["loop"])
