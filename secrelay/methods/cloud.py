"""Helpers every method's cloud phase shares: the model spec, training settings
and centralized training on the cloud data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from secrelay.config import RunConfig
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Schema
from secrelay.federated.client import ModelSpec, flat_parameters
from secrelay.training import TrainConfig, train_epochs

__all__ = [
    "local_train_config",
    "make_train_config",
    "model_spec_from",
    "seen_rows",
    "train_cloud_model",
]


def make_train_config(
    section: Any, *, prox_mu: float = 0.0, trainable_rows: tuple[int, ...] | None = None
) -> TrainConfig:
    """A :class:`TrainConfig` from a ``[cloud]`` / ``[local]`` config section;
    ``trainable_rows``: the embedding rows ``trainable = "seen"`` may train."""
    return TrainConfig(
        epochs=section.epochs,
        batch_size=section.batch_size,
        lr=section.lr,
        optimizer=section.optimizer,
        weight_decay=section.weight_decay,
        prox_mu=prox_mu,
        trainable=getattr(section, "trainable", "all"),
        trainable_rows=trainable_rows,
    )


def local_train_config(config: RunConfig, cloud: CTRDataset) -> TrainConfig:
    """``[local]`` as the devices' :class:`TrainConfig`; with ``trainable = "seen"``
    the embedding rows the cloud's data uses are the ones that may train (public:
    the cloud's own data, sent with the model). The in-process loop and the Flower
    app both build it here, so their devices train the same parameters."""
    local = config.local
    rows = seen_rows(cloud) if local.trainable == "seen" else None
    return make_train_config(local, trainable_rows=rows)


def seen_rows(data: CTRDataset) -> tuple[int, ...]:
    """The rows of the field embedding table that ``data`` uses (global indices: each
    column's value plus its field's offset)."""
    offsets = np.asarray(data.schema.column_vocab_offsets(), dtype=np.int64)
    x = np.asarray(data.x, dtype=np.int64)
    return tuple(int(r) for r in np.unique(x + offsets)) if len(x) else ()


def model_spec_from(config: RunConfig, schema: Schema) -> ModelSpec:
    """The run's ``[model]`` as a picklable :class:`ModelSpec` over ``schema``."""
    kwargs = {"embedding_dim": config.model.embedding_dim, **config.model.options}
    return ModelSpec(config.model.name, schema, tuple(sorted(kwargs.items())))


def train_cloud_model(
    spec: ModelSpec, cloud: CTRDataset, train: TrainConfig, *, seed: int
) -> np.ndarray:
    """Centralized training on the cloud data; returns the flat parameter vector."""
    torch.manual_seed(seed)
    model = spec.build()
    train_epochs(model, cloud, train, generator=torch.Generator().manual_seed(seed))
    return flat_parameters(model)
