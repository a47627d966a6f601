"""Plain (non-federated) training and prediction loops shared by every layer.

Centralized baselines, cloud pre-training and each device's local training all use
:func:`train_epochs`, so that a change of optimizer or loss applies everywhere.
Batches are drawn with an explicit :class:`torch.Generator`; nothing reads the
global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.metrics import Metrics, evaluate_predictions

__all__ = [
    "TRAINABLE",
    "OptimizerName",
    "TrainConfig",
    "evaluate_model",
    "frozen_parameters",
    "iterate_batches",
    "make_optimizer",
    "parameter_masks",
    "predict",
    "soft_bce_with_logits",
    "train_epochs",
    "trainable_mask",
]

OptimizerName = Literal["sgd", "adam", "adagrad"]
#: What local training may change: every parameter, every parameter but the
#: embedding tables (``"dense"``), or the dense layers and the embedding rows the
#: cloud has seen (``"seen"``: ``TrainConfig.trainable_rows``).
TRAINABLE = ("all", "dense", "seen")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training loop.

    Parameters
    ----------
    epochs:
        Passes over the data (>= 0; 0 trains nothing).
    batch_size:
        Rows per mini-batch (>= 1).
    lr:
        Learning rate (> 0).
    optimizer:
        ``"sgd"``, ``"adam"`` or ``"adagrad"``.
    weight_decay:
        L2 penalty added by the optimizer (>= 0).
    prox_mu:
        FedProx proximal weight μ (>= 0): adds μ/2·‖w − w_ref‖² towards the
        reference weights passed to :func:`train_epochs`.
    trainable:
        ``"all"`` (default); ``"dense"``: the embedding tables stay exactly as
        they were, only the dense layers train; ``"seen"``: the dense layers and
        the embedding rows in ``trainable_rows`` train (e.g. the rows the cloud's
        data uses), every other row stays exactly as it was. Under user-level DP the
        released sum then has no noise where no device can change anything
        (:func:`trainable_mask`).
    trainable_rows:
        ``"seen"`` only: the rows of the field embedding table (global indices,
        :meth:`~secrelay.data.Schema.column_vocab_offsets` added) that may train.
    """

    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    trainable: Literal["all", "dense", "seen"] = "all"
    trainable_rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise InvalidParameterError(f"`epochs` must be an int >= 0; got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidParameterError(
                f"`batch_size` must be an int >= 1; got {self.batch_size!r}"
            )
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and np.isfinite(self.lr)):
            raise InvalidParameterError(f"`lr` must be a finite number > 0; got {self.lr!r}")
        if self.optimizer not in ("sgd", "adam", "adagrad"):
            raise InvalidParameterError(
                f"`optimizer` must be one of 'sgd', 'adam', 'adagrad'; got {self.optimizer!r}"
            )
        if self.weight_decay < 0:
            raise InvalidParameterError(f"`weight_decay` must be >= 0; got {self.weight_decay!r}")
        if self.prox_mu < 0:
            raise InvalidParameterError(f"`prox_mu` must be >= 0; got {self.prox_mu!r}")
        if self.trainable not in TRAINABLE:
            raise InvalidParameterError(
                f"`trainable` must be one of {TRAINABLE}; got {self.trainable!r}"
            )
        if (self.trainable == "seen") != (self.trainable_rows is not None):
            raise InvalidParameterError(
                "`trainable_rows` (the embedding rows that may train) goes with "
                f"trainable = 'seen' and only with it; got trainable = {self.trainable!r}, "
                f"trainable_rows {'set' if self.trainable_rows is not None else 'None'} (a "
                "method that does not supply the cloud's rows cannot train 'seen')"
            )


def parameter_masks(
    model: nn.Module, trainable: str, rows: tuple[int, ...] | None = None
) -> dict[int, torch.Tensor]:
    """``id(parameter)`` -> boolean mask of the entries training may change, for every
    parameter that is not wholly trainable: each embedding table's weight — all
    ``False`` for ``"dense"``; for ``"seen"``, ``True`` on the rows in ``rows`` of a
    table with one row per vocabulary entry (any other table: all ``False``)."""
    if trainable == "all":
        return {}
    if trainable not in TRAINABLE:
        raise InvalidParameterError(f"`trainable` must be one of {TRAINABLE}; got {trainable!r}")
    out: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            continue
        weight = module.weight
        mask = torch.zeros(weight.shape, dtype=torch.bool)
        if trainable == "seen" and rows and max(rows) < weight.shape[0]:
            mask[torch.tensor(rows, dtype=torch.long)] = True
        out[id(weight)] = mask
    return out


def frozen_parameters(
    model: nn.Module, trainable: str, rows: tuple[int, ...] | None = None
) -> list[nn.Parameter]:
    """The parameters local training leaves wholly untouched (every embedding table
    for ``"dense"``; none for ``"all"``)."""
    masks = parameter_masks(model, trainable, rows)
    return [p for p in model.parameters() if id(p) in masks and not bool(masks[id(p)].any())]


def trainable_mask(
    model: nn.Module, trainable: str, rows: tuple[int, ...] | None = None
) -> np.ndarray:
    """Boolean mask over the flat layout (:func:`~secrelay.models.utils.flatten_parameters`):
    ``False`` where training with ``trainable`` can never change a value.

    Examples
    --------
    >>> net = nn.Sequential(nn.Embedding(3, 2), nn.Linear(2, 1))
    >>> trainable_mask(net, "dense").tolist()
    [False, False, False, False, False, False, True, True, True]
    >>> trainable_mask(net, "seen", (1,)).tolist()
    [False, False, True, True, False, False, True, True, True]
    """
    from secrelay.models.utils import _unwrap

    masks = parameter_masks(model, trainable, rows)
    parts = [
        masks[id(t)].numpy().ravel() if id(t) in masks else np.ones(t.numel(), dtype=bool)
        for t in _unwrap(model).state_dict(keep_vars=True).values()
        if t.is_floating_point()
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` over ``model``'s trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def soft_bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with soft targets, mean over the batch.

    ``target`` may lie outside [0, 1] (LCFT's corrected labels can exceed 1): the
    loss is the linear-in-target form ``softplus(z) − t·z``, which for t ∈ [0, 1]
    equals the usual BCE and stays well defined (convex in ``z``) otherwise.
    """
    return (nn.functional.softplus(logits) - target * logits).mean()


def iterate_batches(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``; shuffled with ``generator`` when asked."""
    if shuffle:
        if generator is None:
            raise InvalidParameterError("iterate_batches(shuffle=True) needs a `generator`")
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_epochs(
    model: nn.Module,
    data: CTRDataset,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    labels: np.ndarray | None = None,
    reference: list[torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    on_batch: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``data`` for ``config.epochs`` epochs.

    Parameters
    ----------
    labels:
        Replacement (possibly soft) targets, one per row; defaults to ``data.y``.
    reference:
        Reference weights for the FedProx term (required when ``prox_mu > 0``),
        in ``model.parameters()`` order.
    optimizer:
        Reuse an optimizer (e.g. across rounds); a fresh one is made otherwise.
    on_batch:
        Called with (step, loss) after every step (progress display).

    Returns
    -------
    dict
        ``steps`` taken, ``loss`` (mean training loss of the last epoch) and
        ``samples`` seen.
    """
    if config.prox_mu > 0 and reference is None:
        raise InvalidParameterError("`reference` weights are required when prox_mu > 0")
    x_all = torch.from_numpy(np.array(data.x))
    y_np = data.y if labels is None else np.asarray(labels, dtype=np.float32)
    if y_np.shape != (len(data),):
        raise InvalidParameterError(f"`labels` must have shape ({len(data)},); got {y_np.shape}")
    y_all = torch.from_numpy(np.array(y_np, dtype=np.float32))
    masks = parameter_masks(model, config.trainable, config.trainable_rows)
    frozen, hooks = [], []
    for p in model.parameters():
        mask = masks.get(id(p))
        if mask is None or not p.requires_grad:
            continue
        if not bool(mask.any()):
            p.requires_grad_(False)
            frozen.append(p)
        else:  # rows outside the mask get a zero gradient: no optimizer moves them
            keep = mask.to(p.dtype)
            hooks.append(p.register_hook(lambda g, keep=keep: g * keep))  # type: ignore[no-untyped-call]
    try:
        return _train_epochs(
            model, x_all, y_all, config, generator, reference, optimizer, on_batch, len(data)
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for h in hooks:
            h.remove()


def _train_epochs(
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    reference: list[torch.Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    on_batch: Callable[[int, float], None] | None,
    n: int,
) -> dict[str, float]:
    opt = optimizer if optimizer is not None else make_optimizer(model, config)
    params = list(model.parameters())
    model.train()
    steps = 0
    samples = 0
    last_loss = float("nan")
    for _ in range(config.epochs):
        total, count = 0.0, 0
        for idx in iterate_batches(n, config.batch_size, shuffle=True, generator=generator):
            opt.zero_grad(set_to_none=True)
            loss = soft_bce_with_logits(model(x_all[idx]), y_all[idx])
            if config.prox_mu > 0 and reference is not None:
                prox = sum(((p - r) ** 2).sum() for p, r in zip(params, reference))
                loss = loss + 0.5 * config.prox_mu * prox
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            steps += 1
            samples += len(idx)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if on_batch is not None:
                on_batch(steps, float(loss.detach()))
        if count:
            last_loss = total / count
    return {"steps": float(steps), "loss": last_loss, "samples": float(samples)}


def predict(model: nn.Module, data: CTRDataset, *, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities for every row of ``data`` (float64, evaluation mode)."""
    model.eval()
    x_all = torch.from_numpy(np.array(data.x))
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            out.append(torch.sigmoid(model(x_all[start : start + batch_size])))
    if not out:
        return np.zeros(0)
    return torch.cat(out).double().numpy()


def evaluate_model(model: nn.Module, data: CTRDataset) -> Metrics:
    """AUC, logloss and gAUC (grouped by device identity ``data.user``)."""
    return evaluate_predictions(data.y, predict(model, data), data.user)
