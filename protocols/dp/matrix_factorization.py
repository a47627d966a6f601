"""Banded matrix-factorization noise (Choquette-Choo et al., ICLR/NeurIPS 2023,
"(Amplified) Banded Matrix Factorization: A unified approach to private training",
arXiv:2306.08153), here without amplification.

The prefix-sum workload A (lower-triangular ones, T×T) is factored as A = B·C with C
lower-triangular and *b-banded* (C_ij = 0 unless 0 <= i − j < b). The mechanism
releases C·x + z, z ~ N(0, σ² I) per row, and decodes the prefix sums as
B(Cx + z) = Ax + Bz. The prefix-sum *increments* are then x + C⁻¹z (A⁻¹B = C⁻¹), which
:meth:`BandedMatrixNoise.next_noise` draws online by forward substitution.

Construction (a documented closed form, not the paper's optimised C): the optimal
Toeplitz square root of A (Fichtenberger, Henzinger & Upadhyay 2023; Henzinger et al.
2023), C = A^{1/2} with c_k = binom(2k, k) / 4^k (the series of (1 − x)^(−1/2)),
truncated to its first b diagonals. b = 1 gives C = I: independent noise each round,
DP-FedAvg without amplification. b >= T gives the full square-root factorization.

Sensitivity. C and CᵀC are entrywise non-negative, so a user who took part in rounds p
has squared sensitivity ‖C·1_p‖² (Choquette-Choo et al. 2023, Thm. 2.1). When any two
participations are at least b rounds apart their columns have disjoint supports and
this is Σ_j ‖C_{:,j}‖² <= k · max_j ‖C_{:,j}‖² (the paper's b-min-separation); for a
single participation it is the largest column norm (the first column's, Σ_{k<b} c_k²).
Without separation the bound is (Σ of the k largest column norms)² (triangle
inequality). Accounting is the Gaussian mechanism with that sensitivity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from protocols.dp._validation import check_int
from protocols.dp.correlated import CorrelatedNoise, CorrelatedRunEvent, _check_rounds
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

__all__ = [
    "BandedMatrixEvent",
    "BandedMatrixNoise",
    "banded_sqrt_factorization",
    "prefix_sum_matrix",
    "sqrt_toeplitz_coefficients",
]


def sqrt_toeplitz_coefficients(n: int) -> NDArray[np.float64]:
    """c_0..c_{n−1} of the Toeplitz square root of the prefix-sum matrix:
    c_k = binom(2k, k)/4^k = c_{k−1}·(2k − 1)/(2k).

    Examples
    --------
    >>> sqrt_toeplitz_coefficients(4).tolist()
    [1.0, 0.5, 0.375, 0.3125]
    """
    m = check_int("n", n, low=1)
    c = np.ones(m, dtype=np.float64)
    for k in range(1, m):
        c[k] = c[k - 1] * (2 * k - 1) / (2 * k)
    return c


def prefix_sum_matrix(steps: int) -> NDArray[np.float64]:
    """A: the T×T lower-triangular matrix of ones (row t sums rounds 1..t)."""
    t = check_int("steps", steps, low=1)
    return np.tril(np.ones((t, t), dtype=np.float64))


def _toeplitz_lower(coefficients: NDArray[np.float64], steps: int) -> NDArray[np.float64]:
    out = np.zeros((steps, steps), dtype=np.float64)
    for k, c in enumerate(coefficients[:steps]):
        out += c * np.eye(steps, k=-k)
    return out


def banded_sqrt_factorization(
    steps: int, bands: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(B, C) with A = B·C, C the square-root Toeplitz factor banded to ``bands`` diagonals.

    Examples
    --------
    >>> b, c = banded_sqrt_factorization(5, 2)
    >>> bool(np.allclose(b @ c, prefix_sum_matrix(5)))
    True
    >>> c[:3, :3].tolist()
    [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0]]
    """
    t = check_int("steps", steps, low=1)
    b = check_int("bands", bands, low=1)
    coeffs = sqrt_toeplitz_coefficients(min(b, t))
    c_mat = _toeplitz_lower(coeffs, t)
    # B = A C⁻¹: solve Cᵀ Bᵀ = Aᵀ.
    b_mat = np.linalg.solve(c_mat.T, prefix_sum_matrix(t).T).T
    return b_mat, c_mat


class BandedMatrixNoise(CorrelatedNoise):
    """Online noise of the banded square-root factorization (module doc).

    Parameters
    ----------
    bands:
        b >= 1, the number of non-zero diagonals of C.

    Examples
    --------
    >>> mf = BandedMatrixNoise(bands=2)
    >>> mf.sensitivity_squared([1], upto=1), mf.sensitivity_squared([1], upto=5)
    (1.0, 1.25)
    >>> round(mf.sensitivity_bound(steps=10, max_participations=2, min_separation=2), 12)
    2.5
    """

    name = "banded_mf"

    def __init__(self, *, bands: int) -> None:
        super().__init__()
        self.bands = check_int("bands", bands, low=1)
        self.coefficients = sqrt_toeplitz_coefficients(self.bands)
        # The last b − 1 increment noises (unit σ), newest last.
        self._recent: list[NDArray[np.float64]] = []

    def __repr__(self) -> str:
        return f"BandedMatrixNoise(bands={self.bands}, round={self.round})"

    @property
    def max_column_norm_squared(self) -> float:
        """max_j ‖C_{:,j}‖² over an unbounded horizon: Σ_{k<b} c_k²."""
        return float(np.sum(self.coefficients**2))

    def next_noise(self, generator: RandomGenerator, shape: tuple[int, ...]) -> NDArray[np.float64]:
        z = np.asarray(generator.standard_normal(size=shape), dtype=np.float64)
        # (C n)_t = z_t with C_tt = 1:  n_t = z_t − Σ_{k=1}^{b−1} c_k n_{t−k}.
        n = z
        for k, prev in enumerate(reversed(self._recent), start=1):
            n = n - self.coefficients[k] * prev
        if self.bands > 1:
            self._recent.append(n)
            if len(self._recent) > self.bands - 1:
                self._recent.pop(0)
        self.round += 1
        return n

    def _column_sum(self, rounds: Sequence[int], upto: int) -> NDArray[np.float64]:
        rows = np.zeros(upto, dtype=np.float64)
        for r in rounds:
            stop = min(upto, r - 1 + self.bands)
            rows[r - 1 : stop] += self.coefficients[: stop - (r - 1)]
        return rows

    def sensitivity_squared(self, rounds: Sequence[int], *, upto: int) -> float:
        t = check_int("upto", upto, low=0)
        pattern = [r for r in _check_rounds(rounds) if r <= t]
        if not pattern:
            return 0.0
        return float(np.sum(self._column_sum(pattern, t) ** 2))

    def sensitivity_bound(
        self, *, steps: int, max_participations: int, min_separation: int
    ) -> float:
        t = check_int("steps", steps, low=1)
        k = check_int("max_participations", max_participations, low=1)
        sep = check_int("min_separation", min_separation, low=1)
        k = min(k, (t - 1) // sep + 1)
        squares = sorted(
            (float(np.sum(self.coefficients[: min(self.bands, t - j)] ** 2)) for j in range(t)),
            reverse=True,
        )[:k]
        if sep >= self.bands:  # disjoint column supports: squared norms add up
            return float(math.fsum(squares))
        return math.fsum(math.sqrt(s) for s in squares) ** 2

    def state_dict(self) -> dict[str, object]:
        return {"round": self.round, "recent": [v.copy() for v in self._recent]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.round = check_int("round", state["round"], low=0)
        recent = state["recent"]
        assert isinstance(recent, (list, tuple))
        if len(recent) > self.bands - 1:
            raise InvalidParameterError(
                f"state holds {len(recent)} past noises; bands = {self.bands} keeps {self.bands - 1}"
            )
        self._recent = [np.asarray(v, dtype=np.float64).copy() for v in recent]


@dataclass(frozen=True, kw_only=True)
class BandedMatrixEvent(CorrelatedRunEvent):
    """A whole banded-MF run: noise z per released row over ``steps`` rounds, accounted
    as ``GaussianEvent(z / √S)`` with S from :meth:`BandedMatrixNoise.sensitivity_bound`
    (no amplification).

    Examples
    --------
    >>> BandedMatrixEvent(noise_multiplier=1.0, steps=10, bands=1).gaussian_equivalent()
    GaussianEvent(noise_multiplier=1.0)
    """

    kind: ClassVar[str] = "banded_matrix"
    bands: int

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "bands", check_int("bands", self.bands, low=1))

    def noise(self) -> BandedMatrixNoise:
        return BandedMatrixNoise(bands=self.bands)

    def _parameters(self) -> dict[str, Any]:
        return {"bands": self.bands}
