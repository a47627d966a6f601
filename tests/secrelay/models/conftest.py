"""Fixtures for the CTR model tests: small schemas, small networks, random batches.

Everything is exposed as fixtures (rather than importable helpers) so the tests do
not depend on pytest's import mode.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from secrelay.data.schema import Field, Schema
from secrelay.models import CTRModel, make_model

ALL_MODELS = ("lr", "dnn", "widedeep", "deepfm", "dcnv2", "xdeepfm")

# Small networks keep the per-sample-gradient and Opacus tests fast.
SMALL_KWARGS: dict[str, dict[str, object]] = {
    "lr": {},
    "dnn": {"hidden_units": (8, 4)},
    "widedeep": {"hidden_units": (8, 4)},
    "deepfm": {"hidden_units": (8, 4)},
    "dcnv2": {"hidden_units": (8,), "num_cross_layers": 2},
    "xdeepfm": {"hidden_units": (8,), "cin_layer_sizes": (3, 2)},
}

Batch = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="session")
def all_models() -> tuple[str, ...]:
    return ALL_MODELS


@pytest.fixture(params=ALL_MODELS)
def model_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def multi_schema() -> Schema:
    """Two user fields, an item id, a multi-valued item field and a context field."""
    return Schema(
        (
            Field("user_id", "user", 11),
            Field("age", "user", 5),
            Field("item_id", "item", 21),
            Field("genres", "item", 6, max_len=3),
            Field("hour", "context", 4),
        ),
        user_id_field="user_id",
        item_id_field="item_id",
    )


@pytest.fixture(scope="session")
def single_schema() -> Schema:
    """Single-valued fields only (the fast path of ``FieldEmbedding``)."""
    return Schema(
        (Field("user_id", "user", 9), Field("item_id", "item", 13), Field("hour", "context", 3)),
        user_id_field="user_id",
    )


@pytest.fixture(scope="session")
def random_batch() -> Callable[..., Batch]:
    """``random_batch(schema, batch_size, seed=0)`` → valid ``(x, y)``."""

    def make(schema: Schema, batch_size: int, seed: int = 0) -> Batch:
        g = torch.Generator().manual_seed(seed)
        cols = [
            torch.randint(0, f.vocab_size, (batch_size,), generator=g)
            for f in schema.fields
            for _ in range(f.max_len)
        ]
        y = torch.randint(0, 2, (batch_size,), generator=g).float()
        return torch.stack(cols, dim=1), y

    return make


@pytest.fixture(scope="session")
def small_model() -> Callable[..., CTRModel]:
    """``small_model(name, schema, seed=0, embedding_dim=4, **overrides)``: a small network."""

    def make(
        name: str, schema: Schema, seed: int = 0, embedding_dim: int = 4, **overrides: object
    ) -> CTRModel:
        kwargs = {**SMALL_KWARGS[name], **overrides}
        return make_model(name, schema, embedding_dim=embedding_dim, seed=seed, **kwargs)

    return make
