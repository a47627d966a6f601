"""How a strategy's named sums may be released under user-level differential privacy.

A strategy only sees sums of per-device contributions (``strategies.py``). To
release those sums with user-level DP, a privacy wrapper must know, name by name,
how large one honest device's contribution can be and which names are not data at
all. :class:`ReleaseSpec` is that statement; a strategy gives one through
:meth:`~secrelay.federated.strategies.Strategy.release_spec` (``None``: its sums
cannot be released privately as they are, e.g. sample-weighted FedAvg, whose
weights are the devices' data sizes).

Three kinds of names:

``noised``
    ``(name, bound)``: the device's array under ``name`` has L2 norm at most
    ``bound`` when it is honest. The wrapper clips every noised array to its bound
    on the device, rescales it to norm at most w·C (C the wrapper's clipping norm,
    w the name's share in :attr:`ReleaseSpec.weights`, 1 by default:
    ``array · w·C / bound``), concatenates the blocks and noises their sum with
    sensitivity C·√(Σ w²). A name's noise then has standard deviation
    z·√(Σ w²)·bound / w in its own units (:meth:`noise_std`): a smaller share costs
    the other names less noise and gives this one more.
``public_counts``
    Names every device contributes as exactly ``[1.0]`` (a participant count, the
    uniform weight). They are not sent: the wrapper replaces their sum by a public
    number (the expected or the surviving number of participants).
``copies``
    ``(name, source)``: the device's array under ``name`` equals the one under the
    noised ``source`` (uniform weights equal device counts); it is not sent and is
    released as a copy of the noisy ``source``.

Any other name is refused by the wrapper — it would leave the device unprotected.

A noised name may also have a *support* (:attr:`ReleaseSpec.support`): a boolean
mask of the coordinates a device can change. Outside it every honest device's array
is exactly 0 whatever its data (e.g. the embedding tables when only the dense
layers train, ``[local] trainable = "dense"``), so the wrapper checks that on the
device, sends and noises only the support, and releases the rest as exact zeros:
data-independent values cost no privacy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from protocols.errors import InvalidParameterError

__all__ = ["ReleaseSpec"]


@dataclass(frozen=True)
class ReleaseSpec:
    """Names of a strategy's contributions and their per-device bounds (module doc).

    Examples
    --------
    >>> spec = ReleaseSpec(noised=(("delta", 0.5), ("count", 1.0)), copies=(("weight", "count"),))
    >>> spec.names, round(spec.noise_std(1.0)["count"], 4)
    (('delta', 'count', 'weight'), 1.4142)
    >>> small = ReleaseSpec(noised=(("delta", 0.5), ("count", 1.0)), weights=(("count", 0.25),))
    >>> round(small.sensitivity(0.5) / 0.5, 4), round(small.noise_std(1.0)["count"], 4)
    (1.0308, 4.1231)
    """

    noised: tuple[tuple[str, float], ...]
    public_counts: tuple[str, ...] = ()
    copies: tuple[tuple[str, str], ...] = ()
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Shapes of the noised names (public: model sizes); empty = taken from the
    contributions (then :attr:`dimension` is unknown before a round)."""
    weights: tuple[tuple[str, float], ...] = ()
    """Share w > 0 of noised names in the sensitivity (missing: 1)."""
    support: tuple[tuple[str, np.ndarray], ...] = field(default=(), compare=False)
    """Noised name -> boolean mask over its flattened array: the coordinates a device
    can change (missing: all)."""

    def __post_init__(self) -> None:
        if not self.noised:
            raise InvalidParameterError("a ReleaseSpec needs at least one noised name")
        seen: set[str] = set()
        for name, bound in self.noised:
            b = float(bound)
            if not (math.isfinite(b) and b > 0):
                raise InvalidParameterError(
                    f"the bound of noised name {name!r} must be a finite number > 0; got {bound!r}"
                )
            seen.add(name)
        others = [*self.public_counts, *(n for n, _ in self.copies)]
        if len(seen) != len(self.noised) or len(set(others)) != len(others) or seen & set(others):
            raise InvalidParameterError(f"a ReleaseSpec lists a name twice: {self.names}")
        for name, w in self.weights:
            if name not in seen or not (math.isfinite(float(w)) and float(w) > 0):
                raise InvalidParameterError(
                    f"ReleaseSpec.weights: {name!r} must be a noised name with a finite weight "
                    f"> 0; got {w!r}"
                )
        if self.shapes and {n for n, _ in self.shapes} != seen:
            raise InvalidParameterError(
                f"ReleaseSpec.shapes must give the shape of every noised name {sorted(seen)}; "
                f"got {[n for n, _ in self.shapes]}"
            )
        for name, mask in self.support:
            if name not in seen or np.asarray(mask).dtype != bool:
                raise InvalidParameterError(
                    f"ReleaseSpec.support: {name!r} must be a noised name with a boolean mask"
                )
        for name, source in self.copies:
            if source not in seen:
                raise InvalidParameterError(
                    f"copy {name!r} must copy a noised name; {source!r} is not one of {sorted(seen)}"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the strategy's devices contribute."""
        return (
            *(n for n, _ in self.noised),
            *self.public_counts,
            *(n for n, _ in self.copies),
        )

    @property
    def bounds(self) -> dict[str, float]:
        """Noised name -> its per-device L2 bound."""
        return {n: float(b) for n, b in self.noised}

    @property
    def dimension(self) -> int | None:
        """Length of the packed vector (the supports of all noised names), when
        :attr:`shapes` are known."""
        if not self.shapes:
            return None
        return sum(self.packed_size(name, shape) for name, shape in self.shapes)

    @property
    def supports(self) -> dict[str, np.ndarray]:
        """Noised name -> its support mask (only the names that have one)."""
        return dict(self.support)

    def packed_size(self, name: str, shape: tuple[int, ...]) -> int:
        """How many values of ``name`` (of ``shape``) are sent and noised."""
        mask = self.supports.get(name)
        return int(mask.sum()) if mask is not None else math.prod(shape)

    def with_model_support(self, mask: np.ndarray) -> ReleaseSpec:
        """This spec with ``mask`` (over the model's flat layout, length d) as the
        support of every noised name that is d or K·d model coordinates (a model
        delta, or K stacked ones); other names keep theirs. Needs :attr:`shapes`."""
        mask = np.asarray(mask, dtype=bool).ravel()
        d = mask.size
        support = self.supports
        for name, shape in self.shapes:
            size = math.prod(shape)
            if d and size % d == 0 and size >= d:
                support[name] = np.tile(mask, size // d)
        return replace(self, support=tuple(sorted(support.items())))

    @property
    def num_blocks(self) -> int:
        """B, the number of noised names."""
        return len(self.noised)

    @property
    def shares(self) -> dict[str, float]:
        """Noised name -> its share w (1 unless :attr:`weights` says otherwise)."""
        given = {n: float(w) for n, w in self.weights}
        return {n: given.get(n, 1.0) for n, _ in self.noised}

    def scale(self, name: str, clipping_norm: float) -> float:
        """Factor from ``name``'s units to the packed vector: w·C / bound."""
        return self.shares[name] * float(clipping_norm) / self.bounds[name]

    def sensitivity(self, clipping_norm: float) -> float:
        """L2 sensitivity C·√(Σ w²) of the packed, rescaled sum."""
        return float(clipping_norm) * math.sqrt(sum(w * w for w in self.shares.values()))

    def noise_std(self, noise_multiplier: float) -> dict[str, float]:
        """Per-coordinate noise standard deviation of each noised name's released sum,
        in that name's own units: z·√(Σ w²)·bound / w."""
        root = math.sqrt(sum(w * w for w in self.shares.values()))
        shares = self.shares
        return {n: float(noise_multiplier) * root * float(b) / shares[n] for n, b in self.noised}
