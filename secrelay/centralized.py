"""Centralized training of one CTR model: the baselines and the oracle.

The training rows are split once more by time: the latest ``valid_fraction`` of
them is a validation slice for early stopping, so the test split is never used
to pick the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from protocols.errors import InvalidParameterError
from secrelay.data import global_temporal_split, load_dataset
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import flat_parameters, load_flat_parameters
from secrelay.models.base import make_model
from secrelay.training import TrainConfig, evaluate_model, make_optimizer, train_epochs

__all__ = ["split_for_centralized", "train_centralized"]


def _time_order(ds: CTRDataset) -> np.ndarray:
    return np.lexsort((np.arange(len(ds)), ds.timestamp))


def split_for_centralized(
    ds: CTRDataset, *, split: str, seed: int, train_fraction: float = 0.8
) -> tuple[CTRDataset, CTRDataset]:
    """``temporal``: the earliest 80 % of all rows train, the rest test;
    ``random``: a seeded random 80/20 split of the rows."""
    if split == "temporal":
        sp = global_temporal_split(ds, train_fraction=train_fraction)
        return sp.train, sp.test
    if split == "random":
        order = np.random.default_rng(seed).permutation(len(ds))
        cut = round(train_fraction * len(ds))
        return ds.subset(np.sort(order[:cut])), ds.subset(np.sort(order[cut:]))
    raise InvalidParameterError(f"`split` must be 'temporal' or 'random'; got {split!r}")


def train_centralized(
    *,
    model: str,
    data: str,
    path: str | None = None,
    split: str = "temporal",
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 3e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    embedding_dim: int = 16,
    patience: int = 3,
    valid_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
    dataset: CTRDataset | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on the training part of ``data`` and evaluate on the test part.

    ``data_options`` are the loader's keywords (e.g. a CSV file's columns; see
    :mod:`secrelay.data.options`). Returns a dict with ``test`` and ``valid`` metrics,
    ``best_epoch`` and the per-epoch history.
    """
    from rich.progress import Progress

    if patience < 1:
        raise InvalidParameterError(f"`patience` must be >= 1; got {patience}")
    if not 0 < valid_fraction < 1:
        raise InvalidParameterError(f"`valid_fraction` must be in (0, 1); got {valid_fraction}")
    ds = dataset if dataset is not None else load_dataset(data, path, **dict(data_options or {}))
    train_all, test = split_for_centralized(ds, split=split, seed=seed)
    order = _time_order(train_all)
    cut = round((1 - valid_fraction) * len(train_all))
    train, valid = train_all.subset(np.sort(order[:cut])), train_all.subset(np.sort(order[cut:]))
    log(f"{data}: {len(train)} train / {len(valid)} validation / {len(test)} test rows")
    torch.manual_seed(seed)
    net = make_model(model, ds.schema, embedding_dim=embedding_dim)
    cfg = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,  # type: ignore[arg-type]
        weight_decay=weight_decay,
    )
    opt = make_optimizer(net, cfg)
    gen = torch.Generator().manual_seed(seed)
    best, best_epoch, best_params, stale = -np.inf, 0, flat_parameters(net), 0
    history = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"training {model}", total=epochs)
        for epoch in range(1, epochs + 1):
            stats = train_epochs(net, train, cfg, generator=gen, optimizer=opt)
            vm = evaluate_model(net, valid)
            history.append({"epoch": epoch, "train_loss": stats["loss"], **vm.as_dict()})
            score = vm.auc if np.isfinite(vm.auc) else -vm.logloss
            bar.update(task, advance=1, description=f"epoch {epoch} valid AUC {vm.auc:.4f}")
            if score > best:
                best, best_epoch, best_params, stale = score, epoch, flat_parameters(net), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    load_flat_parameters(net, best_params)
    return {
        "model": model,
        "data": data,
        "split": split,
        "best_epoch": best_epoch,
        "valid": evaluate_model(net, valid).as_dict(),
        "test": evaluate_model(net, test).as_dict(),
        "history": history,
    }
