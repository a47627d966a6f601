"""MetaUA's ``[method.options]``: one frozen, validated dataclass.

Parsed by :func:`secrelay.options.parse_options`; every problem names its key as
``method.options.<key>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from protocols.errors import ConfigError
from secrelay.options import parse_options
from secrelay.relay.metaua.attributes import ATTRIBUTES, Weighting
from secrelay.relay.metaua.maths import ServerOptimizer

__all__ = ["MetaUAOptions"]

_POSITIVE = (
    "meta_lr",
    "server_lr",
    "tau",
    "dp_grad_bound",
    "dp_attribute_bound",
    "dp_weight_bound",
)
_CHOICES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("server_optimizer", ("sgd", "adagrad", "adam"), "'sgd', 'adagrad' or 'adam'"),
    ("weighting", ("samples", "uniform"), "'samples' or 'uniform'"),
    ("query_reduction", ("mean", "sum"), "'mean' or 'sum'"),
    ("train_on", ("all", "support"), "'all' or 'support'"),
)


@dataclass(frozen=True)
class MetaUAOptions:
    """``[method.options]`` of ``method.name = "metaua"``.

    Parameters
    ----------
    attributes:
        Client attributes z_k (a subset of
        :data:`~secrelay.relay.metaua.attributes.ATTRIBUTES`; paper's best:
        ``["local_loss"]``).
    meta_lr:
        SGD learning rate of θ = (s, θ_α) (> 0; paper 2.0).
    learn_weights, learn_server_scale:
        Meta-learn θ_α (client weighting) and θ_s (server learning rate); both
        off is the ablation "none" (fixed weights, fixed θ_s).
    server_scale_init:
        Initial θ_s in (0, 1).
    server_optimizer, server_lr, beta1, beta2, tau:
        The server optimizer on the pseudo-gradient Δw (FedAdagrad by default).
    weighting:
        Base weight b_k: ``"samples"`` (θ_α = 0 is sample-weighted FedAvg) or
        ``"uniform"``.
    query_fraction:
        Fraction of each device's training rows held out as its query split (0, 1).
    train_on:
        Local training on ``"all"`` training rows (default, same data as the
        FedAvg baselines) or on the ``"support"`` rows only.
    meta_grad_clip:
        Clip the meta-gradient of each of s and θ_α to this L2 norm (0 = off).
    query_reduction:
        The meta-objective over the round's clients: ``"mean"`` (ḡ = Σg_k / K,
        default) or ``"sum"`` (ḡ = Σg_k; the same as multiplying ``meta_lr`` by
        the number of clients per round).
    dp_grad_bound, dp_attribute_bound, dp_weight_bound:
        Under ``privacy.user_level_dp`` (needs ``weighting = "uniform"``): the L2
        bound G of a device's query gradient g_k, Z of its attribute vector z_k and
        E of its per-layer weight e_k,l = exp(θ_α,l · z_k) (1 at θ_α = 0). Each
        summed name is clipped on the device to the bound these imply (with the
        update's ``privacy.clipping_norm`` C: ``delta_e`` C·E, ``delta_ez`` C·E·Z,
        ``e`` E·√L, ``ez`` E·√L·Z, ``grad`` G) and noised in proportion to it
        (:meth:`~secrelay.relay.metaua.strategy.MetaUAStrategy.release_spec`).
    dp_meta_share:
        The share w of the meta-learning sums (``delta_ez``, ``ez``, ``grad``) in the
        release's sensitivity C·√(2 + 3w²), in (0, 1] (default 0.5: the aggregation
        sums ``delta_e`` and ``e`` then get z·√2.75 times their bound of noise
        instead of z·√5).

    Examples
    --------
    >>> o = MetaUAOptions.from_mapping({"attributes": "positive_rate", "meta_lr": 1})
    >>> o.attributes, o.meta_lr
    (('positive_rate',), 1.0)
    """

    attributes: tuple[str, ...] = ("local_loss",)
    meta_lr: float = 2.0
    learn_weights: bool = True
    learn_server_scale: bool = True
    server_scale_init: float = 0.5
    server_optimizer: ServerOptimizer = "adagrad"
    server_lr: float = 0.01
    beta1: float = 0.0
    beta2: float = 0.99
    tau: float = 1e-3
    weighting: Weighting = "samples"
    query_fraction: float = 0.2
    train_on: Literal["all", "support"] = "all"
    meta_grad_clip: float = 0.0
    query_reduction: Literal["mean", "sum"] = "mean"
    dp_grad_bound: float = 1.0
    dp_attribute_bound: float = 1.0
    dp_weight_bound: float = 1.0
    dp_meta_share: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))
        problems = _problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> MetaUAOptions:
        """Validate ``[method.options]``, every problem at once, each naming
        ``method.options.<key>``. A single attribute may be given as a string."""
        data = dict(options)
        if isinstance(data.get("attributes"), str):
            data["attributes"] = (data["attributes"],)
        return parse_options(cls, data, "method.options", checks=_given_problems)

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~secrelay.relay.metaua.maths.server_step`."""
        return {
            "optimizer": self.server_optimizer,
            "lr": self.server_lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
        }


def _number(v: Any) -> bool:
    return isinstance(v, (int, float))


def _problems(o: Mapping[str, Any]) -> list[str]:
    """Every problem of a full set of option values (one per field)."""
    problems = []
    attrs = tuple(o["attributes"])
    bad = [a for a in attrs if a not in ATTRIBUTES]
    if not attrs or bad or len(set(attrs)) != len(attrs):
        problems.append(
            f"method.options.attributes must be a non-empty list of distinct names from "
            f"{list(ATTRIBUTES)}; got {list(attrs)}"
        )
    for name in _POSITIVE:
        if not (_number(o[name]) and np.isfinite(o[name]) and o[name] > 0):
            problems.append(f"method.options.{name} must be a finite number > 0; got {o[name]!r}")
    for name in ("server_scale_init", "query_fraction"):
        if not (_number(o[name]) and 0 < o[name] < 1):
            problems.append(f"method.options.{name} must be in (0, 1); got {o[name]!r}")
    for name in ("beta1", "beta2"):
        if not (_number(o[name]) and 0 <= o[name] < 1):
            problems.append(f"method.options.{name} must be in [0, 1); got {o[name]!r}")
    if not (_number(o["dp_meta_share"]) and 0 < o["dp_meta_share"] <= 1):
        problems.append(
            f"method.options.dp_meta_share must be in (0, 1]; got {o['dp_meta_share']!r}"
        )
    for name, allowed, words in _CHOICES:
        if o[name] not in allowed:
            problems.append(f"method.options.{name} must be {words}; got {o[name]!r}")
    if not (_number(o["meta_grad_clip"]) and o["meta_grad_clip"] >= 0):
        problems.append(f"method.options.meta_grad_clip must be >= 0; got {o['meta_grad_clip']!r}")
    for name in ("learn_weights", "learn_server_scale"):
        if not isinstance(o[name], bool):
            problems.append(f"method.options.{name} must be true or false; got {o[name]!r}")
    return problems


def _given_problems(given: Mapping[str, Any]) -> list[str]:
    """:func:`_problems` of the values ``given`` (the typed ``method.options``), the
    defaults standing in for the rest (the ``checks`` of :func:`parse_options`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(MetaUAOptions)}
    return _problems({**defaults, **given})
