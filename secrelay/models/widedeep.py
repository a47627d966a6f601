"""Wide & Deep: a first-order (wide) part plus a DNN (deep) part, trained jointly.

Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016. The
wide part here is the first-order term over the raw categorical features (no
hand-made cross-product features), as in FuxiCTR's ``WideDeep``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, register_model
from secrelay.models.layers import MLP, FirstOrder

__all__ = ["WideDeep"]


@register_model("widedeep")
class WideDeep(CTRModel):
    """``logit(x) = Σ_f w[x_f] + MLP([e_1; ...; e_m])``.

    The deep tower's output layer carries the model's only bias.

    Parameters
    ----------
    schema:
        Field layout.
    embedding_dim:
        Embedding dimension per field of the deep part (>= 1).
    hidden_units:
        Hidden layer widths of the deep part.
    dropout:
        Dropout rate after each hidden layer, in ``[0, 1)``.
    layer_norm:
        LayerNorm after each hidden linear layer.
    """

    name = "widedeep"

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
        self.wide = FirstOrder(schema)
        self.deep = MLP(
            schema.n_fields * embedding_dim,
            hidden_units,
            output_dim=1,
            dropout=dropout,
            layer_norm=layer_norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for ``x`` of shape ``(B, schema.n_columns)`` (int64)."""
        deep: torch.Tensor = self.deep(self.embedding(x).flatten(1)).squeeze(-1)
        wide: torch.Tensor = self.wide(x)
        return wide + deep
