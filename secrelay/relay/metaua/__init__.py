"""MetaUA: online meta-learned update aggregation, computed from named sums only.

Paper: X. Liu, B. Twardowski, T. K. Wijaya, "Online Meta-Learning for Model Update
Aggregation in Federated Learning for Click-Through Rate Prediction", AdKDD 2022
(arXiv:2209.00629).

The server aggregates the devices' model updates with learnable, layer-wise
parameters (MetaUA, "online meta-learned update aggregation"; DESIGN.md, method 4)::

    Δw_l = θ_s,l · Σ_k α_k,l Δw_k,l,    α_k,l = softmax_k(f_α(z_k; θ_α,l)),
    f_α(z; θ_α,l) = θ_α,l · z + log b_k,   θ_s,l = sigmoid(s_l) ∈ (0, 1),

where ``l`` runs over the model's layers (the parameters of one module),
``z_k`` are non-sensitive client attributes (:data:`ATTRIBUTES`) and ``b_k`` is a
fixed base weight (the sample count for ``weighting = "samples"``, so that
``θ_α = 0`` starts from sample-weighted FedAvg). ``Δw`` is the pseudo-gradient of
a server optimizer (FedAdagrad by default; SGD and FedAdam too).

The meta-gradient is delayed by one round: the clients of round ``t`` report
``g_k = ∂L_k(query)/∂w^t`` at the model they downloaded, and the server computes
``∂(ḡ^t · w^t)/∂θ^{t−1}`` by autograd through the round ``t − 1`` aggregation and
server-optimizer step, then takes one SGD step (meta learning rate 2.0).

**Sums only.** For linear ``f_α`` the aggregate and its meta-gradient need only
the per-layer sums (``e_k,l = b_k · exp(θ_α,l · z_k)``, computed on the device from
the downloaded ``θ_α``)::

    delta_e  = Σ_k e_k,l Δw_k,l         (d,)    (each coordinate uses its layer's e)
    delta_ez = Σ_k e_k,l z_k ⊗ Δw_k,l   (m, d)
    e        = Σ_k e_k,l                (L,)
    ez       = Σ_k e_k,l z_k            (L, m)
    grad     = Σ_k g_k                  (d,)
    count    = Σ_k 1                    (1,)

so :class:`MetaUAStrategy` works through any
:class:`~secrelay.federated.aggregation.SumProtocol` (secure aggregation included)
and never sees an individual update. ``docs/metaua.md`` derives the formulas;
:func:`direct_meta_gradient` is the per-client autograd reference the tests
compare the sums-based path with.

Modules, one job each: :mod:`~secrelay.relay.metaua.layers` (the layer partition),
:mod:`~secrelay.relay.metaua.attributes` (z_k and a device's sums),
:mod:`~secrelay.relay.metaua.device` (the device program),
:mod:`~secrelay.relay.metaua.maths` (aggregate and meta-gradient from sums),
:mod:`~secrelay.relay.metaua.options` (``[method.options]``),
:mod:`~secrelay.relay.metaua.strategy` (the server and its DP release) and
:mod:`~secrelay.relay.metaua.method` (the registered method).
"""

from secrelay.relay.metaua.attributes import (
    ATTRIBUTE_CLIP,
    ATTRIBUTES,
    SUM_NAMES,
    THETA_ALPHA_BOUND,
    Weighting,
    client_contribution,
    normalise_attributes,
)
from secrelay.relay.metaua.device import GLOBAL_KEY, THETA_ALPHA_KEY, MetaUAProgram
from secrelay.relay.metaua.layers import LayerPartition
from secrelay.relay.metaua.maths import (
    MetaUASums,
    ServerOptimizer,
    aggregate_from_sums,
    direct_meta_gradient,
    meta_gradient_from_sums,
    server_step,
)
from secrelay.relay.metaua.method import MetaUAMethod
from secrelay.relay.metaua.options import MetaUAOptions
from secrelay.relay.metaua.strategy import MetaUAStrategy

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_CLIP",
    "GLOBAL_KEY",
    "SUM_NAMES",
    "THETA_ALPHA_BOUND",
    "THETA_ALPHA_KEY",
    "LayerPartition",
    "MetaUAMethod",
    "MetaUAOptions",
    "MetaUAProgram",
    "MetaUAStrategy",
    "MetaUASums",
    "ServerOptimizer",
    "Weighting",
    "aggregate_from_sums",
    "client_contribution",
    "direct_meta_gradient",
    "meta_gradient_from_sums",
    "normalise_attributes",
    "server_step",
]
