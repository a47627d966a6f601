from __future__ import annotations

import numpy as np
import pytest

from secrelay.data import Field, Schema
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import DeviceData, ModelSpec


def tiny_schema() -> Schema:
    return Schema(
        (Field("user_id", "user", 12), Field("item_id", "item", 9), Field("cat", "item", 4)),
        user_id_field="user_id",
    )


def tiny_devices(n_devices: int = 6, rows: int = 12, seed: int = 0) -> dict[int, DeviceData]:
    rng = np.random.default_rng(seed)
    schema = tiny_schema()
    out = {}
    for d in range(n_devices):
        x = np.stack(
            [
                np.full(rows, d + 1),
                rng.integers(1, 9, rows),
                rng.integers(1, 4, rows),
            ],
            axis=1,
        )
        y = (rng.random(rows) < 0.3 + 0.05 * d).astype(np.float32)
        y[0], y[-1] = 0.0, 1.0
        ds = CTRDataset(schema, x, y, np.full(rows, d), np.arange(rows))
        cut = rows * 3 // 4
        out[d] = DeviceData(d, ds.subset(np.arange(cut)), ds.subset(np.arange(cut, rows)))
    return out


@pytest.fixture
def devices() -> dict[int, DeviceData]:
    return tiny_devices()


@pytest.fixture
def spec() -> ModelSpec:
    return ModelSpec("lr", tiny_schema(), (("embedding_dim", 4),))
