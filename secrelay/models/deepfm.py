"""DeepFM: a factorization machine and a DNN sharing one embedding layer.

Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, register_model
from secrelay.models.layers import MLP, FirstOrder, fm_interaction

__all__ = ["DeepFM"]


@register_model("deepfm")
class DeepFM(CTRModel):
    """``logit(x) = Σ_f w[x_f] + Σ_{i<j} <e_i, e_j> + MLP([e_1; ...; e_m])``.

    The FM's second-order term and the DNN read the same field embeddings
    (:attr:`embedding`, computed once per forward pass); the first-order weights
    live in their own 1-dim table; the DNN's output layer carries the bias.
    A multi-valued field enters the FM as one field (its mean-pooled embedding).

    Parameters
    ----------
    schema:
        Field layout.
    embedding_dim:
        Embedding dimension per field (>= 1).
    hidden_units:
        Hidden layer widths of the DNN.
    dropout:
        Dropout rate after each hidden layer, in ``[0, 1)``.
    layer_norm:
        LayerNorm after each hidden linear layer.
    """

    name = "deepfm"

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
        self.first_order = FirstOrder(schema)
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
        return first + fm_interaction(emb) + deep
