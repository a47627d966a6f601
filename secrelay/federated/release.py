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
    on the device, rescales it to the common unit C (the wrapper's clipping norm,
    ``array · C / bound``), concatenates the blocks and noises their sum with
    sensitivity C·√B (B blocks) — so each block is noised in proportion to its own
    bound (its noise has standard deviation z·√B·bound, :meth:`noise_std`).
``public_counts``
    Names every device contributes as exactly ``[1.0]`` (a participant count, the
    uniform weight). They are not sent: the wrapper replaces their sum by a public
    number (the expected or the surviving number of participants).
``copies``
    ``(name, source)``: the device's array under ``name`` equals the one under the
    noised ``source`` (uniform weights equal device counts); it is not sent and is
    released as a copy of the noisy ``source``.

Any other name is refused by the wrapper — it would leave the device unprotected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """

    noised: tuple[tuple[str, float], ...]
    public_counts: tuple[str, ...] = ()
    copies: tuple[tuple[str, str], ...] = ()
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Shapes of the noised names (public: model sizes); empty = taken from the
    contributions (then :attr:`dimension` is unknown before a round)."""

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
        if self.shapes and {n for n, _ in self.shapes} != seen:
            raise InvalidParameterError(
                f"ReleaseSpec.shapes must give the shape of every noised name {sorted(seen)}; "
                f"got {[n for n, _ in self.shapes]}"
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
        """Length of the packed vector (all noised names), when :attr:`shapes` are known."""
        if not self.shapes:
            return None
        return sum(math.prod(shape) for _, shape in self.shapes)

    @property
    def num_blocks(self) -> int:
        """B, the number of noised names."""
        return len(self.noised)

    def sensitivity(self, clipping_norm: float) -> float:
        """L2 sensitivity C·√B of the packed, rescaled sum."""
        return float(clipping_norm) * math.sqrt(self.num_blocks)

    def noise_std(self, noise_multiplier: float) -> dict[str, float]:
        """Per-coordinate noise standard deviation of each noised name's released sum,
        in that name's own units: z·√B·bound."""
        root_b = math.sqrt(self.num_blocks)
        return {n: float(noise_multiplier) * root_b * float(b) for n, b in self.noised}
