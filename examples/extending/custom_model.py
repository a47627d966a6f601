"""Extension point: a CTR model.

A factorization machine (Rendle 2010) as a registered ``CTRModel``: first-order
weights plus pairwise interactions of the field embeddings. Registered models are
built by name (``model = "fm"`` in a config, ``model="fm"`` here) and run under
every method and protection (DP-SGD needs per-sample gradients of each trainable
parameter, which Opacus gives for embeddings and linear layers).

Run: ``python examples/extending/custom_model.py``
"""

from __future__ import annotations

import torch

import secrelay
from secrelay.data.schema import Schema
from secrelay.models import FieldEmbedding
from secrelay.models.layers import Bias

try:
    from _tiny import TINY
except ImportError:  # pragma: no cover
    from examples.extending._tiny import TINY


@secrelay.register_model("fm")
class FactorizationMachine(secrelay.CTRModel):
    """``logit = b + Σ w_f + ½ Σ_k ((Σ_f v_fk)² − Σ_f v_fk²)``."""

    name = "fm"

    def __init__(self, schema: Schema, embedding_dim: int = 16) -> None:
        super().__init__(schema, embedding_dim)
        self.first = FieldEmbedding(schema, 1)
        # A leaf module, not a bare nn.Parameter: Opacus needs a per-sample gradient
        # sampler for every trainable parameter (see secrelay.models.layers.Bias).
        self.bias = Bias(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.embedding(x)  # (B, F, k)
        pair = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        logit: torch.Tensor = self.bias((self.first(x).sum((1, 2)) + pair).unsqueeze(-1))
        return logit.squeeze(-1)


def main() -> dict[str, float]:
    tiny = {**TINY, "model_options": {}}
    result = secrelay.simulate(
        "federated",
        strategy="fedavg",
        privacy={"dp_sgd": True, "local_noise_multiplier": 1.0, "max_grad_norm": 1.0},
        federated={"rounds": 2, "sampling": "poisson", "sample_rate": 0.3},
        **{**tiny, "model": "fm"},
    )
    final = result.final["final"]
    print(f"FM with DP-SGD on devices: gAUC {final['gauc']:.4f}")
    return final


if __name__ == "__main__":
    main()
