"""Correlated-noise release of prefix sums: the part DP-FTRL and banded MF share.

Both mechanisms release, round by round, a noisy running sum of per-round vectors
x_1, x_2, ... (in federated learning: the sum of the clipped device updates of a
round). They are *matrix mechanisms*: an encoder matrix C (rows = what is noised and
released, columns = rounds) and i.i.d. Gaussian noise σ = z·Δ per released row, so
the whole stream is one Gaussian mechanism whose L2 sensitivity for one user is
``‖C·p_u‖`` over the rounds p_u the user took part in (in units of the clipping norm
Δ; valid for vector contributions when CᵀC ≥ 0 entrywise, Choquette-Choo et al.
2023, Thm. 2.1 — true of both encoders here). Neither relies on sampling, so neither
needs the participants to be hidden.

:class:`CorrelatedNoise` is the online interface:

* :meth:`CorrelatedNoise.next_noise` — the noise of round t's released *increment*
  (noisy prefix sum at t minus at t−1), for unit σ; the released increment is
  x_t + σ·noise, so a server that adds the increments back up holds the mechanism's
  noisy prefix sums exactly (FTRL: the model is w_0 + η·Σ increments).
* :meth:`CorrelatedNoise.sensitivity_squared` — ‖C_{≤t}·p‖² of one participation
  pattern over the rows released by round t, in units of Δ².

:func:`stream_sensitivity_squared` is the maximum over a population's actual
participation patterns, and :func:`gaussian_increments` turns its growth round by
round into :class:`~protocols.dp.events.GaussianEvent` increments whose composition
is exactly the Gaussian of the whole stream so far (Gaussians compose by adding
μ² = S/z²); this is what a run's privacy ledger records, so any registered
accountant — and the audit — composes it without knowing the mechanism.

Everything here is numpy in, numpy out.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocols.dp._validation import check_int, check_real
from protocols.dp.events import DpEvent, GaussianEvent, NoOpEvent
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

__all__ = [
    "CorrelatedNoise",
    "CorrelatedRunEvent",
    "gaussian_increment",
    "stream_sensitivity_squared",
]


def _check_rounds(rounds: Iterable[int], *, steps: int | None = None) -> tuple[int, ...]:
    out = tuple(sorted(check_int("rounds[...]", r, low=1) for r in rounds))
    if len(set(out)) != len(out):
        raise InvalidParameterError(f"`rounds` must not repeat a round; got {list(out)}")
    if steps is not None and out and out[-1] > steps:
        raise InvalidParameterError(
            f"`rounds` must lie in [1, {steps}] (the mechanism's steps); got {list(out)}"
        )
    return out


class CorrelatedNoise(abc.ABC):
    """Online noise of a linear prefix-sum mechanism (module doc), rounds 1, 2, ...

    Subclasses draw their noise in :meth:`next_noise` and state their encoder through
    :meth:`sensitivity_squared`; the round counter is :attr:`round` (rounds done).
    """

    name: str = "correlated"

    def __init__(self) -> None:
        self.round = 0

    @abc.abstractmethod
    def next_noise(self, generator: RandomGenerator, shape: tuple[int, ...]) -> NDArray[np.float64]:
        """The next round's increment noise for unit σ (advances :attr:`round`)."""

    @abc.abstractmethod
    def sensitivity_squared(self, rounds: Sequence[int], *, upto: int) -> float:
        """‖C_{≤upto}·p‖²: the squared L2 sensitivity, in units of Δ², of everything
        released by round ``upto`` for one user who took part in ``rounds``."""

    @abc.abstractmethod
    def sensitivity_bound(
        self, *, steps: int, max_participations: int, min_separation: int
    ) -> float:
        """An upper bound of :meth:`sensitivity_squared` over every pattern of at most
        ``max_participations`` rounds in [1, ``steps``], any two at least
        ``min_separation`` apart (what noise is calibrated with before a run)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, object]:
        """What a checkpoint needs to continue the noise stream."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`."""


@dataclass(frozen=True, kw_only=True)
class CorrelatedRunEvent(DpEvent):
    """A whole run of a correlated-noise mechanism: noise z per released row over
    ``steps`` rounds, each device in at most ``max_participations`` rounds at least
    ``min_separation`` apart. Accounted as the Gaussian mechanism it is,
    ``GaussianEvent(z / √S)`` with S the mechanism's squared-sensitivity bound (no
    amplification). Subclasses name the mechanism (:meth:`noise`) and add its
    parameters."""

    noise_multiplier: float
    steps: int
    max_participations: int = 1
    min_separation: int = 1

    def __post_init__(self) -> None:
        z = check_real("noise_multiplier", self.noise_multiplier, low=0.0, low_open=True)
        object.__setattr__(self, "noise_multiplier", z)
        object.__setattr__(self, "steps", check_int("steps", self.steps, low=1))
        k = check_int("max_participations", self.max_participations, low=1)
        object.__setattr__(self, "max_participations", k)
        object.__setattr__(
            self, "min_separation", check_int("min_separation", self.min_separation, low=1)
        )

    @abc.abstractmethod
    def noise(self) -> CorrelatedNoise:
        """A fresh instance of the mechanism whose run this event accounts."""

    @property
    def sensitivity_squared(self) -> float:
        """S, the squared L2 sensitivity of the whole run in units of Δ²."""
        return self.noise().sensitivity_bound(
            steps=self.steps,
            max_participations=self.max_participations,
            min_separation=self.min_separation,
        )

    def gaussian_equivalent(self) -> GaussianEvent:
        """The Gaussian mechanism of the whole run: ``GaussianEvent(z / √S)``."""
        return GaussianEvent(
            noise_multiplier=self.noise_multiplier / math.sqrt(self.sensitivity_squared)
        )

    def _parameters(self) -> dict[str, Any]:
        """The subclass's own parameters, for :meth:`to_dict`."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "steps": self.steps,
            "max_participations": self.max_participations,
            "min_separation": self.min_separation,
            **self._parameters(),
        }


def stream_sensitivity_squared(
    mechanism: CorrelatedNoise, participation: Mapping[Any, Sequence[int]], *, upto: int
) -> float:
    """max over users of :meth:`CorrelatedNoise.sensitivity_squared` (0 for nobody).

    ``participation`` maps each user to the rounds it took part in (public under the
    zero-out relation: the server sees who takes part).
    """
    t = check_int("upto", upto, low=0)
    best = 0.0
    seen: dict[tuple[int, ...], float] = {}
    for rounds in participation.values():
        key = tuple(sorted(r for r in rounds if r <= t))
        if not key:
            continue
        if key not in seen:
            seen[key] = mechanism.sensitivity_squared(key, upto=t)
        best = max(best, seen[key])
    return best


def gaussian_increment(*, noise_multiplier: float, before: float, after: float) -> DpEvent:
    """The event of one round that raised the stream's squared sensitivity from
    ``before`` to ``after`` (units of Δ²): ``GaussianEvent(z / √(after − before))``,
    or :class:`~protocols.dp.events.NoOpEvent` when it did not grow.

    Composing the increments of rounds 1..t gives a Gaussian with μ² = S(t)/z²,
    exactly the whole stream's mechanism (module doc).

    Examples
    --------
    >>> gaussian_increment(noise_multiplier=2.0, before=1.0, after=5.0)
    GaussianEvent(noise_multiplier=1.0)
    """
    z = check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=True)
    lo = check_real("before", before, low=0.0)
    hi = check_real("after", after, low=0.0)
    if hi < lo * (1.0 - 1e-12):
        raise InvalidParameterError(
            f"the squared sensitivity of a stream cannot shrink; got {before!r} -> {after!r}"
        )
    grown = hi - lo
    if grown <= 1e-12 * max(1.0, hi):
        return NoOpEvent()
    return GaussianEvent(noise_multiplier=z / math.sqrt(grown))
