"""Fixtures of the privacy-layer tests: a tiny population of devices and a model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from secrelay.data import Field, Schema
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import DeviceData, ModelSpec


def _schema() -> Schema:
    return Schema(
        (Field("user_id", "user", 12), Field("item_id", "item", 9), Field("cat", "item", 4)),
        user_id_field="user_id",
    )


def _devices(n_devices: int = 6, rows: int = 12, seed: int = 0) -> dict[int, DeviceData]:
    rng = np.random.default_rng(seed)
    schema = _schema()
    out = {}
    for d in range(n_devices):
        x = np.stack(
            [np.full(rows, d + 1), rng.integers(1, 9, rows), rng.integers(1, 4, rows)], axis=1
        )
        y = (rng.random(rows) < 0.3 + 0.05 * d).astype(np.float32)
        y[0], y[-1] = 0.0, 1.0
        ds = CTRDataset(schema, x, y, np.full(rows, d), np.arange(rows))
        cut = rows * 3 // 4
        out[d] = DeviceData(d, ds.subset(np.arange(cut)), ds.subset(np.arange(cut, rows)))
    return out


@pytest.fixture
def make_devices() -> Callable[..., dict[int, DeviceData]]:
    """``make_devices(n_devices=6, rows=12, seed=0)``: tiny devices with train/test splits."""
    return _devices


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return ModelSpec("lr", _schema(), (("embedding_dim", 4),))


@pytest.fixture
def dnn_spec() -> ModelSpec:
    return ModelSpec("dnn", _schema(), (("embedding_dim", 4), ("hidden_units", (8,))))
