"""Fixtures of the attack tests: small planted-truth layouts and tiny real runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.views import ModelLayout
from secrelay.data import CTRDataset, make_synthetic


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_data() -> CTRDataset:
    return make_synthetic(n_users=20, samples_per_user=20, n_items=200, seed=3)


@pytest.fixture(scope="session")
def layout(small_data: CTRDataset) -> ModelLayout:
    return ModelLayout("dnn", small_data.schema, (("embedding_dim", 4), ("hidden_units", [16])))


def plain_run_config(**privacy: object) -> dict:
    """A tiny FedAvg run on synthetic data with the transcript recorded."""
    return {
        "run": {"name": "attack-test", "seed": 0, "progress": False, "record_transcript": True},
        "data": {
            "name": "synthetic",
            "options": {"n_users": 30, "samples_per_user": 24, "n_items": 300},
        },
        "model": {"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        "cloud": {"epochs": 1, "batch_size": 64},
        "local": {"epochs": 2, "batch_size": 16},
        "federated": {"rounds": 3, "clients_per_round": 8},
        "strategy": {"name": "fedavg"},
        "privacy": {"secagg_sign_advertisements": True, "randomness": "reproducible", **privacy},
    }


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One plaintext and one SecAgg+ run (same seed), shared by the tests."""
    from secrelay import RunConfig, run

    root = tmp_path_factory.mktemp("attack-runs")
    out = {}
    for name, priv in (("plain", {}), ("secagg", {"secure_aggregation": True})):
        cfg = RunConfig.from_dict(plain_run_config(**priv))
        run(cfg, root / name, progress=False, log=lambda s: None)
        out[name] = root / name
    return out


def _planted_update(
    layout: ModelLayout, field: str, codes: list[int], *, scale: float = 0.1, seed: int = 0
) -> np.ndarray:
    """A flat update that is non-zero exactly in the embedding rows of ``codes``."""
    vec = np.zeros(layout.num_parameters)
    vocab = layout.schema.total_vocab
    start = layout.schema.vocab_offsets()[layout.schema.index(field)]
    rng = np.random.default_rng(seed)
    for sl in layout._tables:
        table = vec[sl].reshape(vocab, -1)
        for c in codes:
            table[start + c] = scale * rng.normal(size=table.shape[1]) + scale
        vec[sl] = table.reshape(-1)
    return vec


@pytest.fixture(scope="session")
def planted_update():
    """``planted_update(layout, field, codes, scale=, seed=)``: a flat update non-zero
    exactly in the rows of ``codes``."""
    return _planted_update
