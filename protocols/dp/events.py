"""Privacy events: immutable, nestable descriptions of what a mechanism spent.

Modelled on Google's ``dp_accounting`` (``GaussianDpEvent``, ``PoissonSampledDpEvent``,
``SelfComposedDpEvent``, ``ComposedDpEvent``): an event says *which* mechanism ran
with *which* parameters; an accountant (:mod:`protocols.dp.accountants`) turns a
composition of events into an (ε, δ) guarantee. Events are frozen dataclasses,
validated at construction, hashable, and serialize to plain JSON-able dicts
(:meth:`DpEvent.to_dict` / :func:`event_from_dict`) so the privacy ledger can
persist them.

Sensitivities are normalised into the events: ``noise_multiplier`` is always the
noise scale divided by the sensitivity the mechanism was calibrated to.

Examples
--------
>>> step = PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.0))
>>> training = SelfComposedEvent(event=step, count=1000)
>>> event_from_dict(training.to_dict()) == training
True
>>> GaussianEvent(noise_multiplier=0.0)
Traceback (most recent call last):
...
protocols.errors.InvalidParameterError: `noise_multiplier` must be in (0, inf); got 0.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocols.dp._validation import check_int, check_real
from protocols.errors import InvalidParameterError

__all__ = [
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "DpEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "NoOpEvent",
    "PoissonSampledEvent",
    "PureEpsilonEvent",
    "RandomizedResponseEvent",
    "SelfComposedEvent",
    "ZCDPEvent",
    "event_from_dict",
]


class DpEvent:
    """Base class of every privacy event.

    Subclasses are frozen dataclasses with a unique ``kind`` tag used in
    serialization.
    """

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{"type": kind, **parameters}`` (nested events nested)."""
        raise TypeError(f"{type(self).__name__} is not serializable")


_EVENT_TYPES: dict[str, type[DpEvent]] = {}


def _register(cls: type[DpEvent]) -> type[DpEvent]:
    if not cls.kind or cls.kind in _EVENT_TYPES:
        raise RuntimeError(f"event kind {cls.kind!r} is empty or registered twice")
    _EVENT_TYPES[cls.kind] = cls
    return cls


def _check_event(name: str, value: object) -> DpEvent:
    if not isinstance(value, DpEvent):
        raise InvalidParameterError(
            f"`{name}` must be a DpEvent; got {value!r} of type {type(value).__name__}"
        )
    return value


@_register
@dataclass(frozen=True)
class NoOpEvent(DpEvent):
    """A step that touched no private data (costs nothing)."""

    kind: ClassVar[str] = "noop"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind}


@_register
@dataclass(frozen=True)
class GaussianEvent(DpEvent):
    """The Gaussian mechanism: ``f(D) + N(0, (z·Δ₂)² I)`` for an L2 sensitivity Δ₂.

    Parameters
    ----------
    noise_multiplier:
        ``z`` = noise standard deviation / L2 sensitivity, in (0, inf).
    """

    kind: ClassVar[str] = "gaussian"
    noise_multiplier: float

    def __post_init__(self) -> None:
        z = check_real("noise_multiplier", self.noise_multiplier, low=0.0, low_open=True)
        object.__setattr__(self, "noise_multiplier", z)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "noise_multiplier": self.noise_multiplier}


@_register
@dataclass(frozen=True)
class LaplaceEvent(DpEvent):
    """The Laplace mechanism with scale ``b = noise_multiplier · Δ₁``: pure ε = 1 / z."""

    kind: ClassVar[str] = "laplace"
    noise_multiplier: float

    def __post_init__(self) -> None:
        z = check_real("noise_multiplier", self.noise_multiplier, low=0.0, low_open=True)
        object.__setattr__(self, "noise_multiplier", z)

    @property
    def epsilon(self) -> float:
        """The pure-DP ε of one application."""
        return 1.0 / self.noise_multiplier

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "noise_multiplier": self.noise_multiplier}


@_register
@dataclass(frozen=True)
class RandomizedResponseEvent(DpEvent):
    """k-ary randomized response, parameterised as in ``dp_accounting``.

    With probability ``1 - noise_parameter`` the true bucket is reported, otherwise
    a uniformly random one of ``num_buckets``. Pure ε = log(1 + k(1 - p)/p) under
    the replace-one relation (a local-DP guarantee for the reporting user).

    Parameters
    ----------
    noise_parameter:
        ``p`` in (0, 1].
    num_buckets:
        ``k`` >= 2.
    """

    kind: ClassVar[str] = "randomized_response"
    noise_parameter: float
    num_buckets: int = 2

    def __post_init__(self) -> None:
        p = check_real("noise_parameter", self.noise_parameter, low=0.0, high=1.0, low_open=True)
        object.__setattr__(self, "noise_parameter", p)
        object.__setattr__(self, "num_buckets", check_int("num_buckets", self.num_buckets, low=2))

    @property
    def epsilon(self) -> float:
        """The pure (local) DP ε of one report."""
        p = self.noise_parameter
        return math.log1p(self.num_buckets * (1.0 - p) / p)

    @classmethod
    def from_epsilon(cls, epsilon: float, *, num_buckets: int = 2) -> RandomizedResponseEvent:
        """The event of k-ary randomized response tuned to ``epsilon``."""
        eps = check_real("epsilon", epsilon, low=0.0, low_open=True)
        k = check_int("num_buckets", num_buckets, low=2)
        return cls(noise_parameter=k / (math.exp(eps) - 1.0 + k), num_buckets=k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "noise_parameter": self.noise_parameter,
            "num_buckets": self.num_buckets,
        }


@_register
@dataclass(frozen=True)
class PureEpsilonEvent(DpEvent):
    """Any mechanism proven ε-DP (δ = 0) by its own analysis, e.g. field randomization.

    Parameters
    ----------
    epsilon:
        In (0, inf).
    """

    kind: ClassVar[str] = "pure_epsilon"
    epsilon: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "epsilon", check_real("epsilon", self.epsilon, low=0.0, low_open=True)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "epsilon": self.epsilon}


@_register
@dataclass(frozen=True)
class ZCDPEvent(DpEvent):
    """A mechanism satisfying ρ-zCDP (Bun & Steinke 2016): RDP ε(α) = ρ·α for all α > 1."""

    kind: ClassVar[str] = "zcdp"
    rho: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", check_real("rho", self.rho, low=0.0, low_open=True))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "rho": self.rho}


@_register
@dataclass(frozen=True)
class DistributedDiscreteGaussianEvent(DpEvent):
    """The sum of ``num_shares`` independent discrete Gaussian shares added to an integer sum.

    Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for
    Federated Learning with Secure Aggregation", ICML 2021 (arXiv:2102.06387),
    Theorem 1: if each of ``n`` honest parties adds ``N_Z(0, σ²)`` noise to each of
    ``d`` coordinates (σ >= 1/2), the released sum satisfies ½ε²-zCDP for an
    integer-valued L2 sensitivity Δ with

        ε = min( sqrt(Δ²/(nσ²) + ½·τ·d),  Δ/(√n·σ) + τ·√d ),
        τ = 10 · Σ_{k=1}^{n-1} exp(−2π²σ² · k/(k+1)).

    ``n = 1`` is the (single) discrete Gaussian of Canonne, Kamath & Steinke 2020.

    Parameters
    ----------
    per_device_variance:
        σ² of each share, in integer units squared; >= 1/4.
    num_shares:
        ``n``: the shares the adversary does not know (surviving honest devices).
    l2_sensitivity:
        Δ in integer units (after scaling and rounding), in (0, inf).
    dimension:
        ``d`` >= 1.
    """

    kind: ClassVar[str] = "distributed_discrete_gaussian"
    per_device_variance: float
    num_shares: int
    l2_sensitivity: float
    dimension: int

    def __post_init__(self) -> None:
        v = check_real("per_device_variance", self.per_device_variance, low=0.25)
        object.__setattr__(self, "per_device_variance", v)
        object.__setattr__(self, "num_shares", check_int("num_shares", self.num_shares, low=1))
        d2 = check_real("l2_sensitivity", self.l2_sensitivity, low=0.0, low_open=True)
        object.__setattr__(self, "l2_sensitivity", d2)
        object.__setattr__(self, "dimension", check_int("dimension", self.dimension, low=1))

    @property
    def tau(self) -> float:
        """The KLS'21 inflation term τ (0 for a single share)."""
        s2 = self.per_device_variance
        return 10.0 * math.fsum(
            math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, self.num_shares)
        )

    @property
    def rho(self) -> float:
        """The zCDP parameter ρ = ε²/2 of Theorem 1."""
        n, s2, d = self.num_shares, self.per_device_variance, self.dimension
        delta2 = self.l2_sensitivity**2
        tau = self.tau
        eps_a = math.sqrt(delta2 / (n * s2) + 0.5 * tau * d)
        eps_b = math.sqrt(delta2 / (n * s2)) + tau * math.sqrt(d)
        return 0.5 * min(eps_a, eps_b) ** 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "per_device_variance": self.per_device_variance,
            "num_shares": self.num_shares,
            "l2_sensitivity": self.l2_sensitivity,
            "dimension": self.dimension,
        }


@_register
@dataclass(frozen=True)
class PoissonSampledEvent(DpEvent):
    """``event`` applied to a Poisson sample: each record is included w.p. ``sample_rate``.

    Parameters
    ----------
    sample_rate:
        ``q`` in (0, 1].
    event:
        The mechanism run on the sample.
    """

    kind: ClassVar[str] = "poisson_sampled"
    sample_rate: float
    event: DpEvent

    def __post_init__(self) -> None:
        q = check_real("sample_rate", self.sample_rate, low=0.0, high=1.0, low_open=True)
        object.__setattr__(self, "sample_rate", q)
        _check_event("event", self.event)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "sample_rate": self.sample_rate, "event": self.event.to_dict()}


@_register
@dataclass(frozen=True)
class SelfComposedEvent(DpEvent):
    """``event`` repeated ``count`` times (adaptively), e.g. DP-SGD steps.

    Parameters
    ----------
    event:
        The repeated event.
    count:
        Number of repetitions, >= 0 (0 costs nothing).
    """

    kind: ClassVar[str] = "self_composed"
    event: DpEvent
    count: int

    def __post_init__(self) -> None:
        _check_event("event", self.event)
        object.__setattr__(self, "count", check_int("count", self.count, low=0))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "count": self.count, "event": self.event.to_dict()}


@_register
@dataclass(frozen=True)
class ComposedEvent(DpEvent):
    """The (adaptive) composition of several events, in order.

    Parameters
    ----------
    events:
        Any iterable of events; stored as a tuple.
    """

    kind: ClassVar[str] = "composed"
    events: tuple[DpEvent, ...] = field(default_factory=tuple)

    def __init__(self, events: Iterable[DpEvent]) -> None:
        if isinstance(events, DpEvent) or not isinstance(events, Iterable):
            raise InvalidParameterError(
                f"`events` must be an iterable of DpEvent; got {events!r} "
                f"of type {type(events).__name__}"
            )
        items = tuple(events)
        for i, e in enumerate(items):
            _check_event(f"events[{i}]", e)
        object.__setattr__(self, "events", items)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "events": [e.to_dict() for e in self.events]}


_FIELDS: dict[str, frozenset[str]] = {
    "noop": frozenset(),
    "gaussian": frozenset({"noise_multiplier"}),
    "laplace": frozenset({"noise_multiplier"}),
    "randomized_response": frozenset({"noise_parameter", "num_buckets"}),
    "pure_epsilon": frozenset({"epsilon"}),
    "zcdp": frozenset({"rho"}),
    "distributed_discrete_gaussian": frozenset(
        {"per_device_variance", "num_shares", "l2_sensitivity", "dimension"}
    ),
    "poisson_sampled": frozenset({"sample_rate", "event"}),
    "self_composed": frozenset({"count", "event"}),
    "composed": frozenset({"events"}),
}


def event_from_dict(data: Mapping[str, Any], *, _path: str = "event") -> DpEvent:
    """Rebuild an event from :meth:`DpEvent.to_dict` output, validating every field.

    Raises
    ------
    InvalidParameterError
        On an unknown type, a missing or unexpected key, or an invalid value; the
        message gives the path to the offending sub-event (e.g.
        ``event.event.sample_rate``).
    """
    if not isinstance(data, Mapping):
        raise InvalidParameterError(f"`{_path}` must be a mapping; got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _EVENT_TYPES:
        raise InvalidParameterError(
            f"`{_path}.type` must be one of {sorted(_EVENT_TYPES)}; got {kind!r}"
        )
    expected = _FIELDS[kind]
    keys = set(data) - {"type"}
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise InvalidParameterError(
            f"`{_path}` of type {kind!r} has missing keys {missing} / unexpected keys {extra}"
        )
    cls = _EVENT_TYPES[kind]
    try:
        if kind in ("poisson_sampled", "self_composed"):
            inner = event_from_dict(data["event"], _path=f"{_path}.event")
            params = {k: data[k] for k in expected - {"event"}}
            return cls(event=inner, **params)  # type: ignore[call-arg]
        if kind == "composed":
            raw = data["events"]
            if not isinstance(raw, list):
                raise InvalidParameterError(
                    f"`{_path}.events` must be a list; got {type(raw).__name__}"
                )
            return ComposedEvent(
                event_from_dict(e, _path=f"{_path}.events[{i}]") for i, e in enumerate(raw)
            )
        return cls(**{k: data[k] for k in expected})
    except InvalidParameterError as exc:
        if str(exc).startswith(f"`{_path}"):
            raise
        raise InvalidParameterError(f"in `{_path}` ({kind}): {exc}") from exc
