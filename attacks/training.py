"""The attacker's own model code: score a flat model on rows, and train shadow models.

The adversary knows the public training recipe (``[local]``: epochs, batch size,
optimizer, learning rate) and the architecture (:class:`~attacks.views.ModelLayout`);
it re-implements local training here instead of calling the library's trainer, so
an attack depends on nothing but public parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacks.views import ModelLayout
from secrelay.data import CTRDataset
from secrelay.models import flatten_parameters, load_flat_parameters

__all__ = ["Recipe", "logits", "per_example_loss", "train_from", "true_label_confidence"]


@dataclass(frozen=True)
class Recipe:
    """A local training recipe (the public ``[local]`` section)."""

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"

    @classmethod
    def from_section(cls, section: object) -> Recipe:
        return cls(
            int(getattr(section, "epochs")),  # noqa: B009
            int(getattr(section, "batch_size")),  # noqa: B009
            float(getattr(section, "lr")),  # noqa: B009
            str(getattr(section, "optimizer")),  # noqa: B009
        )


def _model(layout: ModelLayout, flat: np.ndarray) -> nn.Module:
    model = layout.build(seed=0)
    load_flat_parameters(model, torch.as_tensor(np.asarray(flat, dtype=np.float32)))
    return model


def logits(
    layout: ModelLayout, flat: np.ndarray, data: CTRDataset, *, batch: int = 4096
) -> np.ndarray:
    """The model's logits on every row of ``data``."""
    model = _model(layout, flat)
    model.eval()
    x = torch.from_numpy(np.array(data.x))
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            out.append(model(x[i : i + batch]).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def per_example_loss(layout: ModelLayout, flat: np.ndarray, data: CTRDataset) -> np.ndarray:
    """Binary cross-entropy of every row (natural log)."""
    z = logits(layout, flat, data)
    y = np.asarray(data.y, dtype=np.float64)
    return np.asarray(np.logaddexp(0.0, z) - y * z)


def true_label_confidence(layout: ModelLayout, flat: np.ndarray, data: CTRDataset) -> np.ndarray:
    """LiRA's logit-scaled confidence φ = log(p_y / (1 − p_y)) of the true label:
    the logit for a click, minus it otherwise."""
    z = logits(layout, flat, data)
    return np.asarray(np.where(np.asarray(data.y) > 0.5, z, -z))


def train_from(
    layout: ModelLayout,
    start: np.ndarray,
    data: CTRDataset,
    recipe: Recipe,
    *,
    seed: int,
) -> np.ndarray:
    """Train from the flat model ``start`` on ``data`` with ``recipe``; the flat result."""
    torch.manual_seed(seed)
    model = _model(layout, start)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=recipe.lr)
    elif recipe.optimizer == "adagrad":
        opt = torch.optim.Adagrad(params, lr=recipe.lr)
    else:
        opt = torch.optim.Adam(params, lr=recipe.lr)
    x = torch.from_numpy(np.array(data.x))
    y = torch.from_numpy(np.array(data.y, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            opt.zero_grad(set_to_none=True)
            z = model(x[idx])
            loss = (nn.functional.softplus(z) - y[idx] * z).mean()
            loss.backward()
            opt.step()
    return np.asarray(flatten_parameters(model).detach().numpy(), dtype=np.float64)
