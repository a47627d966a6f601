"""DNN: field embeddings concatenated and fed to an MLP.

Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys
2016 (the embedding + MLP tower); FuxiCTR's ``DNN``. The DESIGN's reference
device model is this network with embeddings 16 and hidden layers 128-64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, register_model
from secrelay.models.layers import MLP

__all__ = ["DNN"]


@register_model("dnn")
class DNN(CTRModel):
    """``logit(x) = MLP([e_1; ...; e_m])`` over the flattened field embeddings.

    Parameters
    ----------
    schema:
        Field layout.
    embedding_dim:
        Embedding dimension per field (>= 1).
    hidden_units:
        Hidden layer widths (ReLU); may be empty (then the model is linear in
        the embeddings).
    dropout:
        Dropout rate after each hidden layer, in ``[0, 1)``.
    layer_norm:
        LayerNorm after each hidden linear layer (BatchNorm is not DP-compatible).

    Examples
    --------
    >>> from secrelay.data.schema import Field, Schema
    >>> s = Schema((Field("user_id", "user", 5), Field("item_id", "item", 7)),
    ...            user_id_field="user_id")
    >>> DNN(s, embedding_dim=4, hidden_units=(8,))(torch.tensor([[1, 2]])).shape
    torch.Size([1])
    """

    name = "dnn"

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        *,
        hidden_units: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__(schema, embedding_dim)
        self.mlp = MLP(
            schema.n_fields * embedding_dim,
            hidden_units,
            output_dim=1,
            dropout=dropout,
            layer_norm=layer_norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for ``x`` of shape ``(B, schema.n_columns)`` (int64)."""
        logit: torch.Tensor = self.mlp(self.embedding(x).flatten(1)).squeeze(-1)
        return logit
