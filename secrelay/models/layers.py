"""Building blocks shared by the CTR models, written for DP-SGD.

Every trainable leaf module here is one that Opacus computes per-sample gradients
for *without* the functorch fallback: ``nn.Linear``, ``nn.Embedding``,
``nn.Conv1d``, ``nn.LayerNorm``, or :class:`Bias`, whose grad sampler and
ghost-clipping norm sampler this module registers with Opacus on import. No
composite module owns a parameter directly (Opacus would then run functorch over
the whole composite), and no module is called twice in one forward pass (ghost
clipping refuses tied parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from opacus.grad_sample import register_grad_sampler, register_norm_sampler
from torch import nn

from protocols.errors import InvalidParameterError
from secrelay.data.schema import Schema
from secrelay.models.base import FieldEmbedding

__all__ = [
    "MLP",
    "Bias",
    "CompressedInteractionNet",
    "CrossNetMix",
    "CrossNetV2",
    "FirstOrder",
    "check_dropout",
    "check_hidden_units",
    "fm_interaction",
]


def check_hidden_units(
    hidden_units: Sequence[int], *, name: str = "hidden_units"
) -> tuple[int, ...]:
    """Validate a sequence of layer widths and return it as a tuple.

    Raises
    ------
    InvalidParameterError
        If ``hidden_units`` is not a sequence of positive ints.
    """
    if isinstance(hidden_units, (str, bytes)) or not isinstance(hidden_units, Sequence):
        raise InvalidParameterError(
            f"`{name}` must be a sequence of positive ints; got {hidden_units!r}"
        )
    units = tuple(hidden_units)
    if not all(isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in units):
        raise InvalidParameterError(f"`{name}` must hold only ints >= 1; got {hidden_units!r}")
    return units


def check_dropout(dropout: float) -> float:
    """Validate a dropout rate in ``[0, 1)``."""
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise InvalidParameterError(f"`dropout` must be in [0, 1); got {dropout!r}")
    return float(dropout)


class Bias(nn.Module):
    """Adds a learned bias vector: ``forward(x) = x + bias``.

    A separate leaf module (rather than an ``nn.Parameter`` on a model) so that
    Opacus computes its per-sample gradient with a registered grad sampler in
    hooks mode and a registered norm sampler in ghost-clipping mode.

    Parameters
    ----------
    num_features:
        Size of the last dimension of the input (>= 1).
    """

    def __init__(self, num_features: int = 1) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise InvalidParameterError(f"`num_features` must be an int >= 1; got {num_features!r}")
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + bias``; ``x`` has ``num_features`` as its last dimension."""
        return x + self.bias


def _bias_grad_sample(
    layer: Bias, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient of :class:`Bias`: the backprops summed over inner dims."""
    return {layer.bias: torch.einsum("n...k->nk", backprops)}


def _bias_norm_sample(
    layer: Bias, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norm of :class:`Bias` (ghost clipping)."""
    return {layer.bias: torch.einsum("n...k->nk", backprops).norm(2, dim=1)}


register_grad_sampler(Bias)(_bias_grad_sample)
register_norm_sampler(Bias)(_bias_norm_sample)


class FirstOrder(nn.Module):
    """The first-order (linear, "wide") term ``Σ_fields w[x_f]``, shape ``(B,)``.

    One scalar weight per feature value in its own :class:`FieldEmbedding` of
    dimension 1 (multi-valued fields contribute the mean weight of their values).
    It has no bias: the models that use it add one elsewhere.
    """

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.weights = FieldEmbedding(schema, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """First-order logit term ``(B,)`` for ``x`` of shape ``(B, n_columns)``."""
        out: torch.Tensor = self.weights(x).sum(dim=(1, 2))
        return out


class MLP(nn.Module):
    """Fully connected tower: ``[Linear → (LayerNorm) → ReLU → (Dropout)] * k → Linear``.

    Parameters
    ----------
    input_dim:
        Input width (>= 1).
    hidden_units:
        Widths of the hidden layers (may be empty when ``output_dim`` is set).
    output_dim:
        Width of a final linear layer with no activation, or ``None`` to return
        the last hidden layer (then ``hidden_units`` must be non-empty).
    dropout:
        Dropout rate after each hidden activation, in ``[0, 1)``.
    layer_norm:
        Put a ``LayerNorm`` after each hidden ``Linear`` (BatchNorm is not
        DP-compatible: it mixes examples of a batch).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        *,
        output_dim: int | None = 1,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        units = check_hidden_units(hidden_units)
        dropout = check_dropout(dropout)
        if output_dim is None and not units:
            raise InvalidParameterError(
                "MLP: `hidden_units` must be non-empty when `output_dim` is None"
            )
        layers: list[nn.Module] = []
        width = input_dim
        for u in units:
            layers.append(nn.Linear(width, u))
            if layer_norm:
                layers.append(nn.LayerNorm(u))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = u
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, input_dim)`` → ``(B, out_features)``."""
        out: torch.Tensor = self.net(x)
        return out


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Factorization-machine second-order term over field embeddings.

    ``Σ_{i<j} <e_i, e_j> = ½ Σ_k [(Σ_i e_ik)² − Σ_i e_ik²]`` (Rendle, ICDM 2010),
    computed in ``O(n_fields · dim)``.

    Parameters
    ----------
    emb:
        ``(B, n_fields, dim)`` field embeddings.

    Returns
    -------
    torch.Tensor
        ``(B,)``.
    """
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_square = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class CrossNetV2(nn.Module):
    """DCN-V2 full-rank cross network: ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l``.

    Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
    Web-scale Learning to Rank Systems", WWW 2021, Eq. (1).

    Parameters
    ----------
    input_dim:
        Width ``d`` of ``x_0`` (>= 1).
    num_layers:
        Number of cross layers (>= 1); each holds a ``d × d`` matrix and a bias.
    """

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise InvalidParameterError(
                f"`num_cross_layers` must be an int >= 1; got {num_layers!r}"
            )
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """``x_0`` ``(B, d)`` → ``x_L`` ``(B, d)``."""
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class _LowRankExpert(nn.Module):
    """One DCN-Mix expert: ``E(x) = U tanh(C tanh(Vᵀ x)) + b`` (before ``x_0 ⊙``)."""

    def __init__(self, input_dim: int, low_rank: int) -> None:
        super().__init__()
        self.v = nn.Linear(input_dim, low_rank, bias=False)
        self.c = nn.Linear(low_rank, low_rank, bias=False)
        self.u = nn.Linear(low_rank, input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` → ``(B, d)``."""
        out: torch.Tensor = self.u(torch.tanh(self.c(torch.tanh(self.v(x)))))
        return out


class CrossNetMix(nn.Module):
    """DCN-V2 low-rank cross network with a mixture of experts (DCN-Mix).

    ``x_{l+1} = Σ_i G_i(x_l) · x_0 ⊙ (U_i tanh(C_i tanh(V_iᵀ x_l)) + b_i) + x_l`` with
    ``G = softmax(gate_l(x_l))`` (Wang et al., WWW 2021, Eq. (2) and §5.2).

    Differences from FuxiCTR's ``CrossNetMix`` (written so that every leaf module
    is used once per forward pass, as Opacus' ghost clipping requires): each layer
    has its own gate (FuxiCTR shares the gates across layers), and each expert
    has its own bias (FuxiCTR shares one per layer; the gated sum of per-expert
    biases contains that case).

    Parameters
    ----------
    input_dim:
        Width ``d`` of ``x_0``.
    num_layers:
        Number of cross layers (>= 1).
    low_rank:
        Rank ``r`` of each expert's projection (>= 1).
    num_experts:
        Number of experts per layer (>= 1).
    """

    def __init__(self, input_dim: int, num_layers: int, *, low_rank: int, num_experts: int) -> None:
        super().__init__()
        problems = []
        if not isinstance(num_layers, int) or num_layers < 1:
            problems.append(f"`num_cross_layers` must be an int >= 1; got {num_layers!r}")
        if not isinstance(low_rank, int) or low_rank < 1:
            problems.append(f"`low_rank` must be an int >= 1 or None; got {low_rank!r}")
        if not isinstance(num_experts, int) or num_experts < 1:
            problems.append(f"`num_experts` must be an int >= 1; got {num_experts!r}")
        if problems:
            raise InvalidParameterError("; ".join(problems))
        self.num_experts = num_experts
        self.experts = nn.ModuleList(
            nn.ModuleList(_LowRankExpert(input_dim, low_rank) for _ in range(num_experts))
            for _ in range(num_layers)
        )
        self.gates = nn.ModuleList(
            nn.Linear(input_dim, num_experts, bias=False) for _ in range(num_layers)
        )

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """``x_0`` ``(B, d)`` → ``x_L`` ``(B, d)``."""
        x = x0
        for experts, gate in zip(self.experts, self.gates):
            assert isinstance(experts, nn.ModuleList)
            out = torch.stack([x0 * e(x) for e in experts], dim=-1)  # (B, d, E)
            weights = torch.softmax(gate(x), dim=-1).unsqueeze(1)  # (B, 1, E)
            x = (out * weights).sum(dim=-1) + x
        return x


class CompressedInteractionNet(nn.Module):
    """The CIN of xDeepFM (Lian et al., KDD 2018, §3.1), logit ``(B,)``.

    Layer ``k`` forms all Hadamard products of its input feature maps
    ``X^{k-1}`` (``H_{k-1}`` maps) with the field embeddings ``X^0`` (``m`` fields)
    and compresses the ``H_{k-1} · m`` products into ``H_k`` maps with a 1×1
    ``nn.Conv1d`` (one filter bank shared over the embedding dimension, as in the
    paper's Eq. (6)). Each layer's maps are sum-pooled over the embedding
    dimension; the pooled vectors are concatenated and mapped to one logit by a
    bias-free linear layer (the model adds its bias elsewhere). The paper's
    optional "split-half" variant is not implemented: every layer feeds the next
    and the output.

    Parameters
    ----------
    num_fields:
        ``m``, the number of fields.
    layer_sizes:
        ``(H_1, ..., H_K)``, feature maps per CIN layer (non-empty, each >= 1).
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = check_hidden_units(layer_sizes, name="cin_layer_sizes")
        if not sizes:
            raise InvalidParameterError("`cin_layer_sizes` must be non-empty")
        convs = []
        prev = num_fields
        for h in sizes:
            convs.append(nn.Conv1d(prev * num_fields, h, kernel_size=1))
            prev = h
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(sum(sizes), 1, bias=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Field embeddings ``(B, m, dim)`` → CIN logit term ``(B,)``."""
        batch, _, dim = emb.shape
        x = emb
        pooled = []
        for conv in self.convs:
            z = torch.einsum("bhd,bmd->bhmd", x, emb).reshape(batch, -1, dim)
            x = conv(z)  # (B, H_k, dim)
            pooled.append(x.sum(dim=-1))
        logit: torch.Tensor = self.fc(torch.cat(pooled, dim=-1)).squeeze(-1)
        return logit
