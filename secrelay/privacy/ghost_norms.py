"""Per-layer ghost norms and clipped sums, the maths of sparse-embedding DP-SGD.

Pure functions of what one forward/backward pass recorded about a trainable layer
(its inputs, and the loss gradients with respect to its outputs): each returns the
squared per-example gradient norms of the layer's parameters, and a function that
forms their clipped sum Σ_b c_b·grad_b for given per-example factors c — without
ever materialising a per-example gradient of an embedding table.

* ``nn.Linear``: ``‖g‖² ‖a‖²`` per example (Goodfellow, arXiv:1510.01799), or the
  Gram form of Li et al. (ICLR 2022) for sequence inputs; clipped sum ``(c ⊙ G)ᵀ A``.
* ``nn.Embedding``: the squared norm of the sum over an example's lookups of the
  same row (an ``L × L`` equality mask, or a sort above ``_MAX_MASK_LOOKUPS``
  lookups); clipped sums written only into the rows the batch touched (Bu et al.,
  ICML 2023).
* any other layer: Opacus' registered grad sampler (small layers only).

Kept apart from the optimizer that uses them
(:class:`~secrelay.privacy.dp_embedding.SparseEmbeddingDPSGD`, which owns the hooks,
the noise and the step), so the maths can be read and tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from opacus import GradSampleModule
from torch import nn

__all__ = [
    "DenseClippedSum",
    "RecordedLayer",
    "TableClippedSum",
    "classify_layers",
    "embedding_norms",
    "linear_norms",
    "sampled_norms",
]

DenseClippedSum = Callable[[torch.Tensor], list[torch.Tensor]]
"""Per-example factors c (B,) → the clipped sums of a layer's parameters, in order."""
TableClippedSum = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Per-example factors c (B,) → (rows the batch touched, their clipped row sums)."""

# Above this many lookups per example, embedding norms group (example, row) pairs by
# sorting instead of an L × L equality mask.
_MAX_MASK_LOOKUPS = 128


@dataclass
class RecordedLayer:
    """A trainable leaf module and what the current step recorded about it."""

    module: nn.Module
    kind: Literal["embedding", "linear", "sampler"]
    # One entry per call in the forward pass: (detached inputs, output).
    calls: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]] = field(default_factory=list)
    # Tables: unique rows read and each lookup's position in them, per call.
    lookups: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # Tables, lazy noise: row r holds the noise of every step before noised_through[r].
    noised_through: torch.Tensor | None = None


def classify_layers(module: nn.Module, problems: list[str]) -> list[RecordedLayer]:
    """The trainable leaf layers of ``module`` with their kind; every layer this path
    cannot handle (parameters on a non-leaf module, an ``nn.Embedding`` option it does
    not reproduce, no grad sampler) is appended to ``problems`` instead."""
    layers: list[RecordedLayer] = []
    for name, sub in module.named_modules():
        if not any(p.requires_grad for p in sub.parameters(recurse=False)):
            continue
        if any(p.requires_grad for c in sub.children() for p in c.parameters()):
            problems.append(
                f"module {name!r} ({type(sub).__name__}) owns parameters and has "
                "trainable submodules; parameters must live on leaf modules"
            )
        elif isinstance(sub, nn.Embedding):
            if sub.padding_idx is not None or sub.max_norm is not None or sub.scale_grad_by_freq:
                problems.append(
                    f"embedding {name!r} uses padding_idx, max_norm or scale_grad_by_freq, "
                    "which this path does not reproduce"
                )
            layers.append(RecordedLayer(sub, "embedding"))
        elif type(sub) is nn.Linear:
            layers.append(RecordedLayer(sub, "linear"))
        elif type(sub) in GradSampleModule.GRAD_SAMPLERS:
            layers.append(RecordedLayer(sub, "sampler"))
        else:
            problems.append(
                f"module {name!r} ({type(sub).__name__}) has no grad sampler registered with Opacus"
            )
    return layers


def linear_norms(
    layer: RecordedLayer, grads: list[torch.Tensor], batch: int
) -> tuple[torch.Tensor, DenseClippedSum]:
    """Squared per-example norms of a linear layer, and its clipped-sum function."""
    mod = layer.module
    assert isinstance(mod, nn.Linear)
    a = torch.cat([inp[0].reshape(batch, -1, mod.in_features) for inp, _ in layer.calls], 1)
    g = torch.cat([gr.reshape(batch, -1, mod.out_features) for gr in grads], 1)
    a = a.to(g.dtype)
    if a.shape[1] == 1:
        g_sq = g.pow(2).sum(dim=(1, 2))
        sq = g_sq * a.pow(2).sum(dim=(1, 2))
        if mod.bias is not None:
            sq = sq + g_sq
    else:
        if 2 * a.shape[1] ** 2 <= mod.in_features * mod.out_features:
            # Li et al. (ICLR 2022): ‖Σ_t g_t a_tᵀ‖² = Σ_{t,s} (a_t·a_s)(g_t·g_s).
            sq = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))
        else:
            sq = torch.einsum("bto,bti->boi", g, a).pow(2).sum(dim=(1, 2))
        if mod.bias is not None:
            sq = sq + g.sum(dim=1).pow(2).sum(dim=1)

    def clipped(coef: torch.Tensor) -> list[torch.Tensor]:
        cg = g * coef.view(-1, 1, 1)
        out = [torch.einsum("bto,bti->oi", cg, a)]
        if mod.bias is not None:
            out.append(cg.sum(dim=(0, 1)))
        return out

    return sq, clipped


def sampled_norms(
    layer: RecordedLayer, grads: list[torch.Tensor], batch: int
) -> tuple[torch.Tensor, DenseClippedSum]:
    """Per-example gradients of a small layer from Opacus' registered grad sampler."""
    sampler = GradSampleModule.GRAD_SAMPLERS[type(layer.module)]
    params = [p for p in layer.module.parameters(recurse=False) if p.requires_grad]
    per_example: dict[int, torch.Tensor] = {}
    for (inputs, _), g in zip(layer.calls, grads):
        for p, gs in sampler(layer.module, list(inputs), g).items():
            per_example[id(p)] = per_example[id(p)] + gs if id(p) in per_example else gs
    samples = [per_example[id(p)] for p in params]
    sq = sum((s.reshape(batch, -1).pow(2).sum(dim=1) for s in samples), torch.zeros(batch))

    def clipped(coef: torch.Tensor) -> list[torch.Tensor]:
        return [torch.einsum("b,b...->...", coef.to(s.dtype), s) for s in samples]

    return sq, clipped


def embedding_norms(
    layer: RecordedLayer, grads: list[torch.Tensor], batch: int
) -> tuple[torch.Tensor, TableClippedSum]:
    """Squared per-example norms of a table, and its clipped row sums."""
    mod = layer.module
    assert isinstance(mod, nn.Embedding)
    dim = mod.embedding_dim
    idx = torch.cat([inp[0].reshape(batch, -1) for inp, _ in layer.calls], 1)  # (B, L)
    g = torch.cat([gr.reshape(batch, -1, dim) for gr in grads], 1)  # (B, L, d)
    if idx.shape[1] <= _MAX_MASK_LOOKUPS:
        # Example b's gradient on row r is the sum of its lookups of r, so
        # ‖grad_b‖² = Σ_{l,m: idx_bl = idx_bm} g_bl · g_bm.
        same = idx.unsqueeze(2) == idx.unsqueeze(1)
        sq = (torch.bmm(g, g.transpose(1, 2)) * same).sum(dim=(1, 2))
    else:
        keys = torch.arange(batch).repeat_interleave(idx.shape[1]) * mod.num_embeddings
        pairs, pair_of = torch.unique(keys + idx.reshape(-1), return_inverse=True)
        summed = torch.zeros(len(pairs), dim, dtype=g.dtype).index_add_(
            0, pair_of, g.reshape(-1, dim)
        )
        sq = torch.zeros(batch, dtype=g.dtype).index_add_(
            0,
            torch.div(pairs, mod.num_embeddings, rounding_mode="floor"),
            summed.pow(2).sum(dim=1),
        )
    if len(layer.lookups) == 1:
        rows, position = layer.lookups[0]
    else:
        rows, position = torch.unique(idx.reshape(-1), return_inverse=True)

    def clipped(coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weighted = (g * coef.view(-1, 1, 1)).reshape(-1, dim)
        sums = torch.zeros(len(rows), dim, dtype=g.dtype).index_add_(
            0, position.reshape(-1), weighted
        )
        return rows, sums

    return sq, clipped
