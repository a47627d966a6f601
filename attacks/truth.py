"""The experimenter's ground truth, used only to *score* attacks (never given to one).

A run's data after its splits comes from :func:`secrelay.methods.prepare_data`, which
is deterministic given the config: the same devices, the same train/test rows as the
run itself used. What the devices kept private (RelayRec's chosen cluster) and the
final models the server holds come from the run's checkpoint, which the experimenter
(never an attack) reads: :func:`checkpoint_state`. It unpickles ``checkpoint.pt``,
so only read checkpoints this library wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secrelay import RunConfig
from secrelay.data import CTRDataset
from secrelay.methods import PreparedData, prepare_data

__all__ = [
    "checkpoint_state",
    "field_values",
    "final_models",
    "item_sets",
    "load_truth",
    "preference_categories",
    "private_keys",
    "user_attribute",
]


def load_truth(config: RunConfig) -> PreparedData:
    """The devices' train/test rows exactly as the run split them."""
    return prepare_data(config)


def field_values(data: CTRDataset, field: str) -> set[int]:
    """The non-padding codes of ``field`` in ``data``."""
    col = np.asarray(data.column(field)).reshape(-1)
    return {int(v) for v in np.unique(col) if v != 0}


def item_sets(data: PreparedData, field: str | None = None) -> dict[int, set[int]]:
    """``device -> item codes`` of its training rows."""
    f = field or data.full.schema.item_id_field
    if not f:
        raise ValueError("the schema has no item_id_field; pass `field`")
    return {d: field_values(dev.train, f) for d, dev in data.devices.items()}


def user_attribute(datasets: Mapping[int, CTRDataset], field: str) -> dict[int, int]:
    """``user -> code`` of a per-user field (its most frequent value in the user's rows)."""
    out = {}
    for u, ds in datasets.items():
        col = np.asarray(ds.column(field)).reshape(-1)
        col = col[col != 0]
        if col.size:
            vals, counts = np.unique(col, return_counts=True)
            out[int(u)] = int(vals[np.argmax(counts)])
    return out


def checkpoint_state(run_dir: str | Path) -> dict[str, Any]:
    """The method state of a run's last checkpoint (``checkpoint.pt``)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state", blob) if isinstance(blob, dict) else {}
    return dict(state.get("method", {}))


def final_models(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The models the server holds after the last round (a federated loop's strategy
    state); empty when the method keeps no such state."""
    loop = checkpoint_state(run_dir).get("loop", {})
    models = loop.get("strategy", {}).get("models", {})
    return {str(k): np.asarray(v, dtype=np.float64) for k, v in models.items()}


def private_keys(run_dir: str | Path, name: str = "model_key") -> dict[int, str]:
    """``device -> key`` each device kept private (RelayRec's chosen cluster)."""
    store = checkpoint_state(run_dir).get("loop", {}).get("device_store", {})
    return {int(d): str(s[name]) for d, s in store.items() if name in s}


def preference_categories(
    devices: Mapping[int, CTRDataset], item_table: np.ndarray, centroids: np.ndarray
) -> dict[int, int]:
    """``device -> argmax_c λ_c``: the category whose centroid is nearest to most of the
    device's interactions (RelayRec Eq. 4's counts), from the published item space."""
    from secrelay.relay.relayrec import ItemSpace

    out = {}
    for d, ds in devices.items():
        if not len(ds):
            continue
        space = ItemSpace(ds.schema, np.asarray(item_table), np.asarray(centroids))
        emb = space.item_embeddings(ds)
        dist = ((emb[:, None, :] - np.asarray(centroids)[None, :, :]) ** 2).sum(-1)
        counts = np.bincount(dist.argmin(1), minlength=len(centroids))
        out[int(d)] = int(np.argmax(counts))
    return out
