"""The shared embedding layout and the base class of every CTR model.

All models embed the integer feature matrix of :class:`secrelay.data.CTRDataset`
through one :class:`FieldEmbedding`: a single ``nn.Embedding`` table whose rows are
split into per-field blocks (:meth:`Schema.vocab_offsets`). Multi-valued fields are
mean-pooled over their non-padding entries. One table (rather than one per field)
keeps DP-SGD cheap (one per-sample-gradient hook) and lets RelayRec read user and
item embeddings by field role.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from protocols.errors import InvalidParameterError
from protocols.registry import Registry
from secrelay.data.schema import FieldRole, Schema

__all__ = [
    "MODEL_REGISTRY",
    "CTRModel",
    "FieldEmbedding",
    "make_model",
    "register_model",
]


class FieldEmbedding(nn.Module):
    """Embeds ``x`` (``(B, n_columns)`` int64) into ``(B, n_fields, dim)``.

    Parameters
    ----------
    schema:
        Field layout.
    dim:
        Embedding dimension per field (>= 1).
    init_std:
        Standard deviation of the normal initialisation.
    """

    column_offsets: torch.Tensor

    def __init__(self, schema: Schema, dim: int, *, init_std: float = 1e-2) -> None:
        super().__init__()
        if dim < 1:
            raise InvalidParameterError(f"`embedding_dim` must be >= 1; got {dim}")
        self.schema = schema
        self.dim = dim
        self.embedding = nn.Embedding(schema.total_vocab, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.register_buffer(
            "column_offsets",
            torch.tensor(schema.column_vocab_offsets(), dtype=torch.long),
            persistent=False,
        )
        self._single = all(f.max_len == 1 for f in schema.fields)
        self._blocks = [
            (start, f.max_len) for start, f in zip(schema.column_offsets(), schema.fields)
        ]

    @property
    def n_fields(self) -> int:
        return self.schema.n_fields

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb: torch.Tensor = self.embedding(x + self.column_offsets)  # (B, n_columns, dim)
        if self._single:
            return emb
        pooled = []
        for start, length in self._blocks:
            if length == 1:
                pooled.append(emb[:, start, :])
            else:
                mask = (x[:, start : start + length] != 0).unsqueeze(-1).to(emb.dtype)
                total = (emb[:, start : start + length, :] * mask).sum(dim=1)
                pooled.append(total / mask.sum(dim=1).clamp(min=1.0))
        return torch.stack(pooled, dim=1)

    def role_embeddings(self, x: torch.Tensor, role: FieldRole) -> torch.Tensor:
        """Embeddings of the fields with ``role``: ``(B, n_role_fields, dim)``."""
        idx = list(self.schema.field_indices(role))
        if not idx:
            raise InvalidParameterError(f"the schema has no {role!r} fields")
        return self.forward(x)[:, idx, :]


class CTRModel(nn.Module, abc.ABC):
    """Base class: ``forward(x)`` returns logits of shape ``(B,)``.

    Subclasses build on :attr:`embedding` (a :class:`FieldEmbedding`) so that
    :meth:`user_embeddings` and :meth:`item_embeddings` work for every model.
    """

    name: str = "base"

    def __init__(self, schema: Schema, embedding_dim: int) -> None:
        super().__init__()
        self.schema = schema
        self.embedding_dim = embedding_dim
        self.embedding = FieldEmbedding(schema, embedding_dim)

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for ``x`` of shape ``(B, schema.n_columns)``."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Click probabilities ``(B,)`` (no gradient)."""
        with torch.no_grad():
            return torch.sigmoid(self.forward(x))

    def user_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of the user fields, flattened to ``(B, n_user_fields * dim)``."""
        return self.embedding.role_embeddings(x, "user").flatten(1)

    def item_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of the item fields, flattened to ``(B, n_item_fields * dim)``."""
        return self.embedding.role_embeddings(x, "item").flatten(1)


MODEL_REGISTRY: Registry[Callable[..., CTRModel]] = Registry("model", lower_case=True)


def register_model(
    name: str, *, force: bool = False
) -> Callable[[Callable[..., CTRModel]], Callable[..., CTRModel]]:
    """Class decorator adding a model to :data:`MODEL_REGISTRY` under ``name``.

    Refuses to replace an existing entry unless ``force=True``. ``name`` must be
    lower case, since :func:`make_model` looks names up in lower case.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise InvalidParameterError(
            f"model names must be non-empty lower-case strings "
            f"(make_model looks them up in lower case); got {name!r}"
        )
    return MODEL_REGISTRY.register(name, force=force)


def make_model(name: str, schema: Schema, *, seed: int | None = None, **kwargs: Any) -> CTRModel:
    """Build the registered model ``name`` (e.g. ``"deepfm"``) for ``schema``.

    Parameters
    ----------
    name:
        A key of :data:`MODEL_REGISTRY` (case-insensitive).
    schema:
        Field layout.
    seed:
        If given, the model is built inside :func:`torch.random.fork_rng` after
        ``torch.manual_seed(seed)``: the same seed gives the same initial
        parameters, and the global CPU RNG is left as it was. If ``None``, they
        come from the global torch RNG (as ``torch.manual_seed`` sets it).
    **kwargs:
        Passed to the model's constructor (``embedding_dim``, ``hidden_units``, ...).
    """
    build = MODEL_REGISTRY.get(name)
    if seed is None:
        return build(schema, **kwargs)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidParameterError(f"`seed` must be a non-negative int or None; got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(schema, **kwargs)
