"""RelayRec's ``[method.options]``: one frozen, validated dataclass.

Every ablation of Deng et al. (IPSN 2023, §5) is a choice here:

==================  ==========================================================
option              values (default first)
==================  ==========================================================
``initial``         ``multiple_meta`` (RelayRec), ``multiple_normal``,
                    ``single_meta``, ``single_normal``
``selection``       ``selector`` (RelayRec), ``random``, ``optimal`` (every
                    device scores all K models on its local train data)
``selector_path``   ``query`` (p_u sent in a QueryMessage, the server answers;
                    the flow a CKKS layer encrypts) or ``local`` (the device
                    downloads the selector and runs it)
``collaboration``   ``clustered_fedprox`` (RelayRec), ``clustered_fedavg``,
                    ``fedprox``, ``fedavg``, ``standalone``
==================  ==========================================================

With ``[privacy] he_selector = true`` the selector is the HE-friendly one (square
activation, :mod:`~secrelay.relay.relayrec.he_selector`) and the query is CKKS
encrypted; ``he_*`` options set its parameters (docs/he.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.he import CKKSParameters
from secrelay.options import parse_options

__all__ = ["RelayRecOptions"]

Initial = Literal["multiple_meta", "multiple_normal", "single_meta", "single_normal"]
Selection = Literal["selector", "random", "optimal"]
SelectorPath = Literal["query", "local"]
Collaboration = Literal["clustered_fedprox", "clustered_fedavg", "fedprox", "fedavg", "standalone"]


@dataclass(frozen=True)
class RelayRecOptions:
    """RelayRec's options, with the paper's defaults.

    Parameters
    ----------
    server_model:
        The advanced cloud model whose embeddings drive clustering and the
        selector (paper: xDeepFM).
    server_model_options:
        Extra keyword arguments of the server model (e.g. ``cin_layer_sizes``);
        its embedding size is ``model.embedding_dim``.
    num_clusters:
        K, user clusters = initial models (paper 2).
    num_categories:
        C, item categories of the preference vector (paper 2).
    initial, selection, selector_path, collaboration:
        See the module docstring.
    mu:
        FedProx proximal weight μ towards the chosen initial model (> 0 where a
        FedProx variant is chosen).
    inner_lr, outer_lr:
        MAML η1 and η2 (paper 0.01 both).
    inner_steps, meta_epochs, users_per_batch, first_order, outer_optimizer, support_fraction:
        See :class:`secrelay.relay.relayrec.cloud.MAMLConfig`.
    finetune_epochs:
        Epochs of fine-tuning each initial model on all cloud data (>= 0).
    selector_hidden, selector_epochs, selector_lr:
        The selector MLP (one hidden ReLU layer, full-batch Adam).
    selector_balance:
        Train the selector with cluster-balanced cross-entropy (each cluster weighted
        by the inverse of its size), so the largest cluster does not take every device.
    server_optimizer, server_lr, server_tau:
        The per-cluster server step of the clustered collaborations: ``"sgd"``
        (FedAvg's, default η = 1) or ``"adagrad"`` (FedAdagrad per cluster, default
        η = 0.01, τ = 1e-3); ``server_lr`` unset takes the optimizer's default.
    server_momentum:
        Heavy-ball momentum β in [0, 1) of the ``"sgd"`` per-cluster server step
        (DP-FedAvgM; default 0 = none). Pair it with ``server_lr = 1 − β`` to keep
        FedAvg's long-run step; under user-level DP it averages the noise of
        successive releases.
    weighting:
        Device weights in the clustered aggregation: ``"samples"`` (default) or
        ``"uniform"``; ``privacy.user_level_dp`` always uses uniform weights (sample
        counts are device data).
    dp_count_share:
        Under ``privacy.user_level_dp``: the share w of the per-cluster device counts
        in the release's sensitivity C·√(1 + w²), in (0, 1] (default 0.25: the update
        sums get 3 % more noise than DP-FedAvg's, the counts z·√(1 + w²)/w each).
    he_poly_modulus_degree, he_coeff_mod_bit_sizes, he_scale_bits:
        CKKS parameters of the encrypted selector (``privacy.he_selector``; default
        N = 8192, primes 60-40-40-60, Δ = 2^40); refused below 128-bit security.
    he_radix:
        Fan-in of the rotate-and-add sums of the encrypted selector (a power of two
        >= 2; 4: fewer Galois keys than 2, fewer rotations than 8).
    """

    server_model: str = "xdeepfm"
    server_model_options: dict[str, Any] = field(default_factory=dict)
    num_clusters: int = 2
    num_categories: int = 2
    initial: Initial = "multiple_meta"
    selection: Selection = "selector"
    selector_path: SelectorPath = "query"
    collaboration: Collaboration = "clustered_fedprox"
    mu: float = 0.01
    inner_lr: float = 0.01
    outer_lr: float = 0.01
    inner_steps: int = 1
    meta_epochs: int = 1
    users_per_batch: int = 25
    first_order: bool = False
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    support_fraction: float = 0.5
    finetune_epochs: int = 1
    selector_hidden: int = 32
    selector_epochs: int = 300
    selector_lr: float = 0.01
    selector_balance: bool = False
    server_optimizer: Literal["sgd", "adagrad"] = "sgd"
    server_lr: float | None = None
    server_tau: float = 1e-3
    server_momentum: float = 0.0
    weighting: Literal["samples", "uniform"] = "samples"
    dp_count_share: float = 0.25
    he_poly_modulus_degree: int = 8192
    he_coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    he_scale_bits: int = 40
    he_radix: int = 4

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RelayRecOptions:
        """Validate ``[method.options]``; every problem is reported at once, each
        naming ``method.options.<key>``."""
        return parse_options(cls, options, "method.options", checks=_check_relayrec)

    def he_parameters(self) -> CKKSParameters:
        """The encrypted selector's CKKS parameters (raises InvalidParameterError)."""
        return CKKSParameters(
            self.he_poly_modulus_degree, self.he_coeff_mod_bit_sizes, self.he_scale_bits
        )

    @property
    def effective_server_lr(self) -> float:
        """``server_lr``, or the server optimizer's default (SGD 1, Adagrad 0.01)."""
        if self.server_lr is not None:
            return float(self.server_lr)
        return 1.0 if self.server_optimizer == "sgd" else 0.01

    @property
    def multiple(self) -> bool:
        """Whether one initial model is trained per user cluster (``multiple_*``)."""
        return self.initial.startswith("multiple")

    @property
    def meta(self) -> bool:
        """Whether the initial models are meta-learned (``*_meta``)."""
        return self.initial.endswith("meta")


def _check_relayrec(o: Mapping[str, Any]) -> list[str]:
    problems = []
    for name in (
        "num_clusters",
        "num_categories",
        "inner_steps",
        "users_per_batch",
        "selector_hidden",
    ):
        if name in o and o[name] < 1:
            problems.append(f"method.options.{name} must be >= 1; got {o[name]!r}")
    for name in ("meta_epochs", "finetune_epochs", "selector_epochs"):
        if name in o and o[name] < 0:
            problems.append(f"method.options.{name} must be >= 0; got {o[name]!r}")
    for name in ("inner_lr", "outer_lr", "selector_lr"):
        if name in o and not o[name] > 0:
            problems.append(f"method.options.{name} must be > 0; got {o[name]!r}")
    if "dp_count_share" in o and not 0 < o["dp_count_share"] <= 1:
        problems.append(
            f"method.options.dp_count_share must be in (0, 1]; got {o['dp_count_share']!r}"
        )
    if o.get("server_lr") is not None and not o["server_lr"] > 0:
        problems.append(f"method.options.server_lr must be > 0; got {o['server_lr']!r}")
    if "server_tau" in o and not o["server_tau"] > 0:
        problems.append(f"method.options.server_tau must be > 0; got {o['server_tau']!r}")
    clustered = str(o.get("collaboration", "clustered_fedprox")).startswith("clustered")
    if o.get("server_optimizer", "sgd") != "sgd" and not clustered:
        problems.append(
            "method.options.server_optimizer applies to the clustered collaborations only; "
            f"got collaboration = {o.get('collaboration')!r}"
        )
    beta = o.get("server_momentum", 0.0)
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        problems.append(f"method.options.server_momentum must be in [0, 1); got {beta!r}")
    elif beta > 0 and (o.get("server_optimizer", "sgd") != "sgd" or not clustered):
        problems.append(
            "method.options.server_momentum applies to the 'sgd' server step of the "
            "clustered collaborations only"
        )
    if "mu" in o and o["mu"] < 0:
        problems.append(f"method.options.mu must be >= 0; got {o['mu']!r}")
    collab = o.get("collaboration", "clustered_fedprox")
    if collab in ("clustered_fedprox", "fedprox") and o.get("mu", 0.01) <= 0:
        problems.append(f"method.options.mu must be > 0 with collaboration = {collab!r}")
    radix = o.get("he_radix", 4)
    if not isinstance(radix, int) or radix < 2 or radix & (radix - 1):
        problems.append(f"method.options.he_radix must be a power of two >= 2; got {radix!r}")
    if "support_fraction" in o and not 0 < o["support_fraction"] < 1:
        problems.append(
            f"method.options.support_fraction must be in (0, 1); got {o['support_fraction']!r}"
        )
    return problems
