"""Logistic regression: the first-order CTR baseline.

McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013 (LR
over one-hot categorical features); in RelayRec a lightweight device model.
"""

from __future__ import annotations

import torch

from protocols.errors import InvalidParameterError
from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, register_model
from secrelay.models.layers import Bias

__all__ = ["LogisticRegression"]


@register_model("lr")
class LogisticRegression(CTRModel):
    """``logit(x) = b + Σ_fields w[x_f]``: one scalar weight per feature value.

    LR has no latent factors, so its :attr:`embedding` *is* its first-order
    table: a :class:`~secrelay.models.FieldEmbedding` of dimension 1, and
    :attr:`embedding_dim` is 1. :meth:`user_embeddings` and
    :meth:`item_embeddings` therefore return the first-order weights of the
    user (item) fields, ``(B, n_user_fields)``. This keeps every parameter
    trained (Opacus needs a per-sample gradient for each trainable parameter) and
    keeps LR's update as small as LR is (federated aggregation and secure
    aggregation ship every parameter).

    Parameters
    ----------
    schema:
        Field layout.
    embedding_dim:
        Accepted (and validated, >= 1) so that every registered model shares one
        constructor, e.g. ``make_model(name, schema, embedding_dim=16)``; it does
        not change LR.

    Examples
    --------
    >>> from secrelay.data.schema import Field, Schema
    >>> s = Schema((Field("user_id", "user", 5), Field("item_id", "item", 7)),
    ...            user_id_field="user_id")
    >>> model = LogisticRegression(s)
    >>> model(torch.tensor([[1, 2], [4, 6]])).shape
    torch.Size([2])
    >>> sum(p.numel() for p in model.parameters())  # 5 + 7 weights + bias
    13
    """

    name = "lr"

    def __init__(self, schema: Schema, embedding_dim: int = 16) -> None:
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise InvalidParameterError(
                f"`embedding_dim` must be an int >= 1; got {embedding_dim!r}"
            )
        super().__init__(schema, 1)
        self.bias = Bias(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for ``x`` of shape ``(B, schema.n_columns)`` (int64)."""
        first = self.embedding(x).sum(dim=1)  # (B, 1)
        logit: torch.Tensor = self.bias(first).squeeze(-1)
        return logit
