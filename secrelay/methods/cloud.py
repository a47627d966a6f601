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

__all__ = ["make_train_config", "model_spec_from", "train_cloud_model"]


def make_train_config(section: Any, *, prox_mu: float = 0.0) -> TrainConfig:
    """A :class:`TrainConfig` from a ``[cloud]`` / ``[local]`` config section."""
    return TrainConfig(
        epochs=section.epochs,
        batch_size=section.batch_size,
        lr=section.lr,
        optimizer=section.optimizer,
        weight_decay=section.weight_decay,
        prox_mu=prox_mu,
        trainable=getattr(section, "trainable", "all"),
    )


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
