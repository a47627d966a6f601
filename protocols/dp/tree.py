"""DP-FTRL's tree aggregation (Kairouz et al., ICML 2021, "Practical and Private (Deep)
Learning without Sampling or Shuffling", arXiv:2103.00039).

The binary-tree mechanism of Dwork et al. 2010 / Chan et al. 2011 releases every
prefix sum x_1 + ... + x_t of a stream: each *completed* dyadic node (a block of 2^h
consecutive rounds aligned at a multiple of 2^h) gets its own N(0, σ²) noise, and the
prefix sum at t is the sum of the O(log t) nodes of t's binary decomposition. One
user who takes part in a round touches one node per level, so with single
participation everything released by round T has squared L2 sensitivity
``floor(log2 T) + 1`` (units of the clipping norm Δ) — dp_accounting's
``SingleEpochTreeAggregationDpEvent`` depth ``ceil(log2(T + 1))``.

Variants (:class:`TreeAggregationNoise`):

* ``efficient=False`` — the honest tree: a node's value is its own noisy sum.
* ``efficient=True`` — the variance-reduced estimate of Honaker 2015 restricted to
  what is known online (tensorflow_privacy's ``EfficientTreeAggregator``): a completed
  node's estimate is the inverse-variance combination of its own noisy value and its
  two children's estimates, so its variance tends to σ²/2. Post-processing of the
  same noisy nodes: the same privacy.
* ``restart_every = R`` — a fresh tree every R rounds (the paper's restarts, e.g. once
  per epoch); the noise of the prefix sum at the restart is frozen and later
  increments come from the new tree.

Accounting (:meth:`TreeAggregationNoise.sensitivity_squared` for a participation
pattern, :meth:`~TreeAggregationNoise.sensitivity_bound` before a run): the squared
sensitivity is Σ over completed nodes of c², c the user's participations in the node.
With at most k participations any two at least b rounds apart, a node of 2^h rounds
holds at most m_h = min(k, floor((2^h − 1)/b) + 1) of them, so a level adds at most
m_h·k; with restarts, the participations are split over the trees to the worst case.
For k = 1 (or one participation per restarted tree) this is exact and equals
dp_accounting's ``SingleEpochTreeAggregationDpEvent`` (with restarts:
``SelfComposedDpEvent`` of it, the sum of the trees' depths, as in
tensorflow_privacy's ``compute_rdp_tree_restart``). For k > 1 in one tree it is an
upper bound of the exact worst case (tensorflow_privacy's ``compute_rdp_single_tree``
searches it exactly); tests compare it with brute force.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from protocols.dp._validation import check_int
from protocols.dp.correlated import CorrelatedNoise, CorrelatedRunEvent, _check_rounds
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

__all__ = ["TreeAggregationEvent", "TreeAggregationNoise", "tree_depth"]


def tree_depth(steps: int) -> int:
    """Levels of completed nodes over ``steps`` >= 1 rounds: floor(log2 steps) + 1.

    Examples
    --------
    >>> [tree_depth(t) for t in (1, 2, 3, 4, 7, 8, 50)]
    [1, 2, 2, 3, 3, 4, 6]
    """
    t = check_int("steps", steps, low=1)
    return t.bit_length()


def _segment_bound(length: int, k: int, b: int) -> float:
    """Bound of Σ c² over one tree of ``length`` rounds, k participations, separation b."""
    if k == 0 or length == 0:
        return 0.0
    total = 0
    for h in range(tree_depth(length)):
        m_h = min(k, (2**h - 1) // b + 1)
        total += m_h * k
    return float(total)


class TreeAggregationNoise(CorrelatedNoise):
    """Online tree-aggregation noise of DP-FTRL (module doc).

    Parameters
    ----------
    efficient:
        ``False``: the honest tree; ``True``: the online variance-reduced estimate.
    restart_every:
        Rounds per tree (``None``: one tree for the whole run).

    Examples
    --------
    >>> tree = TreeAggregationNoise()
    >>> rng = np.random.default_rng(0)
    >>> noise = [tree.next_noise(rng, (1,)) for _ in range(4)]
    >>> tree.sensitivity_squared([1], upto=4)  # leaf 1 is in [1], [1,2], [1..4]
    3.0
    >>> tree.sensitivity_bound(steps=4, max_participations=1, min_separation=1)
    3.0
    """

    name = "tree"

    def __init__(self, *, efficient: bool = False, restart_every: int | None = None) -> None:
        super().__init__()
        if not isinstance(efficient, bool):
            raise InvalidParameterError(f"`efficient` must be a bool; got {efficient!r}")
        self.efficient = efficient
        self.restart_every = (
            None if restart_every is None else check_int("restart_every", restart_every, low=1)
        )
        # The current tree's binary decomposition: (level, node estimate), oldest first.
        self._stack: list[tuple[int, NDArray[np.float64]]] = []

    def __repr__(self) -> str:
        return (
            f"TreeAggregationNoise(efficient={self.efficient}, "
            f"restart_every={self.restart_every}, round={self.round})"
        )

    @staticmethod
    def node_variance(level: int, *, efficient: bool) -> float:
        """Variance (unit σ) of a completed node's estimate at ``level``."""
        h = check_int("level", level, low=0)
        if not efficient:
            return 1.0
        v = 1.0
        for _ in range(h):
            v = 1.0 / (1.0 + 1.0 / (2.0 * v))
        return v

    def _segment(self, r: int) -> int:
        return 0 if self.restart_every is None else (r - 1) // self.restart_every

    def next_noise(self, generator: RandomGenerator, shape: tuple[int, ...]) -> NDArray[np.float64]:
        t = self.round + 1
        if self.restart_every is not None and t > 1 and self._segment(t) != self._segment(t - 1):
            self._stack = []  # a new tree; the old prefix noise stays frozen
        before = self._prefix(shape)
        node: NDArray[np.float64] = np.asarray(
            generator.standard_normal(size=shape), dtype=np.float64
        )
        level = 0
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            raw = np.asarray(generator.standard_normal(size=shape), dtype=np.float64)
            if self.efficient:
                v_child = self.node_variance(level, efficient=True)
                w = 2.0 * v_child / (1.0 + 2.0 * v_child)  # weight of the node's own noise
                node = w * raw + (1.0 - w) * (left + node)
            else:
                node = raw
            level += 1
        self._stack.append((level, node))
        self.round = t
        return self._prefix(shape) - before

    def _prefix(self, shape: tuple[int, ...]) -> NDArray[np.float64]:
        total = np.zeros(shape, dtype=np.float64)
        for _, value in self._stack:
            total = total + value
        return total

    def _segments(self, upto: int) -> list[tuple[int, int]]:
        """(first round, rounds completed by ``upto``) of each tree so far."""
        if self.restart_every is None:
            return [(1, upto)] if upto else []
        out = []
        start = 1
        while start <= upto:
            end = min(start + self.restart_every - 1, upto)
            out.append((start, end - start + 1))
            start += self.restart_every
        return out

    def sensitivity_squared(self, rounds: Sequence[int], *, upto: int) -> float:
        t = check_int("upto", upto, low=0)
        pattern = [r for r in _check_rounds(rounds) if r <= t]
        total = 0
        for start, done in self._segments(t):
            local = [r - start for r in pattern if start <= r < start + done]  # 0-based
            if not local:
                continue
            for h in range(tree_depth(done)):
                complete = done >> h  # nodes j with (j + 1)·2^h <= done
                counts = Counter(i >> h for i in local)
                total += sum(c * c for j, c in counts.items() if j < complete)
        return float(total)

    def sensitivity_bound(
        self, *, steps: int, max_participations: int, min_separation: int
    ) -> float:
        t = check_int("steps", steps, low=1)
        k = check_int("max_participations", max_participations, low=1)
        b = check_int("min_separation", min_separation, low=1)
        lengths = [done for _, done in self._segments(t)]
        # Worst split of the k participations over the trees (each capped by b).
        best = [0.0] + [-math.inf] * k
        for length in lengths:
            cap = min(k, (length - 1) // b + 1)
            nxt = list(best)
            for used in range(k + 1):
                if best[used] == -math.inf:
                    continue
                for extra in range(1, min(cap, k - used) + 1):
                    value = best[used] + _segment_bound(length, extra, b)
                    if value > nxt[used + extra]:
                        nxt[used + extra] = value
            best = nxt
        return max(best)

    def state_dict(self) -> dict[str, object]:
        return {
            "round": self.round,
            "stack": [(level, value.copy()) for level, value in self._stack],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.round = check_int("round", state["round"], low=0)
        stack = state["stack"]
        assert isinstance(stack, (list, tuple))
        self._stack = [(int(lv), np.asarray(v, dtype=np.float64).copy()) for lv, v in stack]


@dataclass(frozen=True, kw_only=True)
class TreeAggregationEvent(CorrelatedRunEvent):
    """A whole DP-FTRL run: tree-aggregation noise z per node over ``steps`` rounds.

    Accounted as the Gaussian mechanism it is (:meth:`gaussian_equivalent`): noise
    multiplier z / √S with S the squared-sensitivity bound of
    :meth:`TreeAggregationNoise.sensitivity_bound`. The registered accountants expand
    it through :meth:`gaussian_equivalent` (no amplification: a Poisson-sampled tree
    is refused). Used to calibrate z before a run; the run's ledger records the
    per-round Gaussian increments (:func:`protocols.dp.correlated.gaussian_increment`).

    Examples
    --------
    >>> TreeAggregationEvent(noise_multiplier=2.0, steps=8).gaussian_equivalent()
    GaussianEvent(noise_multiplier=1.0)
    """

    kind: ClassVar[str] = "tree_aggregation"
    restart_every: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.restart_every is not None:
            r = check_int("restart_every", self.restart_every, low=1)
            object.__setattr__(self, "restart_every", r)

    def noise(self) -> TreeAggregationNoise:
        return TreeAggregationNoise(restart_every=self.restart_every)

    def _parameters(self) -> dict[str, Any]:
        return {"restart_every": self.restart_every}
