"""xDeepFM: a linear part, a Compressed Interaction Network and a DNN.

Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for
Recommender Systems", KDD 2018. RelayRec's advanced server model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, register_model
from secrelay.models.layers import MLP, CompressedInteractionNet, FirstOrder

__all__ = ["XDeepFM"]


@register_model("xdeepfm")
class XDeepFM(CTRModel):
    """``logit(x) = Σ_f w[x_f] + CIN(E) + MLP([e_1; ...; e_m])`` (paper Eq. 7).

    The CIN and the DNN read the same field embeddings ``E`` (computed once per
    forward pass); the DNN's output layer carries the bias.

    Parameters
    ----------
    schema:
        Field layout.
    embedding_dim:
        Embedding dimension per field (>= 1).
    cin_layer_sizes:
        Feature maps per CIN layer (non-empty).
    hidden_units:
        Hidden layer widths of the DNN.
    dropout:
        Dropout rate after each hidden layer, in ``[0, 1)``.
    layer_norm:
        LayerNorm after each hidden linear layer.
    """

    name = "xdeepfm"

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        *,
        cin_layer_sizes: Sequence[int] = (16, 16),
        hidden_units: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__(schema, embedding_dim)
        self.first_order = FirstOrder(schema)
        self.cin = CompressedInteractionNet(schema.n_fields, cin_layer_sizes)
        self.dnn = MLP(
            schema.n_fields * embedding_dim,
            hidden_units,
            output_dim=1,
            dropout=dropout,
            layer_norm=layer_norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for ``x`` of shape ``(B, schema.n_columns)`` (int64)."""
        emb = self.embedding(x)
        deep: torch.Tensor = self.dnn(emb.flatten(1)).squeeze(-1)
        first: torch.Tensor = self.first_order(x)
        cin: torch.Tensor = self.cin(emb)
        return first + cin + deep
