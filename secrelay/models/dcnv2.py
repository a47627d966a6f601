"""DCN-V2: a cross network of full-rank (or low-rank mixture) matrices with a DNN.

Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021. Defaults follow FuxiCTR's
``DCNv2``: parallel structure, 3 cross layers, full-rank matrices; with
``low_rank`` set, the mixture of low-rank experts (DCN-Mix) with 4 experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from protocols.errors import InvalidParameterError
from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, register_model
from secrelay.models.layers import MLP, CrossNetMix, CrossNetV2

__all__ = ["DCNV2", "DCNStructure"]

DCNStructure = Literal["parallel", "stacked", "crossnet_only"]
_STRUCTURES: tuple[str, ...] = ("parallel", "stacked", "crossnet_only")


@register_model("dcnv2")
class DCNV2(CTRModel):
    """Deep & Cross Network V2 over the flattened field embeddings ``x_0``.

    - ``"parallel"``: ``logit = w · [cross(x_0); MLP(x_0)] + b``;
    - ``"stacked"``: ``logit = w · MLP(cross(x_0)) + b``;
    - ``"crossnet_only"``: ``logit = w · cross(x_0) + b``.

    Parameters
    ----------
    schema:
        Field layout.
    embedding_dim:
        Embedding dimension per field (>= 1); ``d = n_fields * embedding_dim``.
    structure:
        How the cross network and the DNN combine (see above).
    num_cross_layers:
        Number of cross layers (>= 1).
    low_rank:
        ``None`` for full-rank ``d × d`` cross matrices (Eq. 1), or the rank ``r``
        of a mixture of low-rank experts (DCN-Mix).
    num_experts:
        Experts per cross layer when ``low_rank`` is set (>= 1).
    hidden_units:
        Hidden layer widths of the DNN (non-empty unless ``crossnet_only``).
    dropout:
        Dropout rate after each hidden layer, in ``[0, 1)``.
    layer_norm:
        LayerNorm after each hidden linear layer.
    """

    name = "dcnv2"

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        *,
        structure: DCNStructure = "parallel",
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        num_experts: int = 4,
        hidden_units: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        if structure not in _STRUCTURES:
            raise InvalidParameterError(
                f"`structure` must be one of {_STRUCTURES}; got {structure!r}"
            )
        if structure != "crossnet_only" and not tuple(hidden_units):
            raise InvalidParameterError(
                f"`hidden_units` must be non-empty for structure {structure!r}"
            )
        super().__init__(schema, embedding_dim)
        self.structure = structure
        d = schema.n_fields * embedding_dim
        self.cross: nn.Module
        if low_rank is None:
            self.cross = CrossNetV2(d, num_cross_layers)
        else:
            self.cross = CrossNetMix(
                d, num_cross_layers, low_rank=low_rank, num_experts=num_experts
            )
        self.dnn: MLP | None = None
        final = d
        if structure != "crossnet_only":
            self.dnn = MLP(d, hidden_units, output_dim=None, dropout=dropout, layer_norm=layer_norm)
            final = self.dnn.out_features + (d if structure == "parallel" else 0)
        self.fc = nn.Linear(final, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for ``x`` of shape ``(B, schema.n_columns)`` (int64)."""
        x0 = self.embedding(x).flatten(1)
        cross = self.cross(x0)
        if self.dnn is None:
            out = cross
        elif self.structure == "stacked":
            out = self.dnn(cross)
        else:
            out = torch.cat([cross, self.dnn(x0)], dim=-1)
        logit: torch.Tensor = self.fc(out).squeeze(-1)
        return logit
