"""Fixed-point encoding of float vectors into integers modulo ``2**b``.

Encoding (per coordinate, per client):

1. clip ``x`` to ``[-R, R]``;
2. scale to ``y = (x + R) / Δ`` with the quantization step
   ``Δ = 2R / (2**q - 1)``, so ``y ∈ [0, 2**q - 1]``;
3. stochastic rounding: ``floor(y) + Bernoulli(y - floor(y))``, an unbiased
   integer in ``[0, 2**q - 1]``.

The sum of ``m <= n`` encodings is at most ``n (2**q - 1) < 2**b`` with
``b = q + ceil(log2 n)``, so the sum modulo ``2**b`` *is* the integer sum and
cannot wrap around. Decoding a sum of ``m`` encodings returns
``S Δ - m R`` as float64.

Error bound: for a clipped input ``x``, ``|decode(encode(x)) - x| < Δ`` (one
quantization step) per coordinate; for a sum of ``m`` clients the error is
``< m Δ`` (plus float64 rounding, ``<= 2**-50`` relative, since every integer
involved is below ``2**53``). Clipping error (``|x| > R``) is not included:
that is the caller's choice of ``R``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError
from protocols.secagg.rng import SecureRandom, uniform01

__all__ = ["FixedPointEncoder", "word_dtype"]


def word_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    """The smallest little-endian unsigned dtype that holds ``modulus_bits`` bits.

    Parameters
    ----------
    modulus_bits:
        ``b`` in ``[1, 64]``.

    Returns
    -------
    numpy.dtype
        ``<u1``, ``<u2``, ``<u4`` or ``<u8``.
    """
    if not 1 <= modulus_bits <= 64:
        raise InvalidParameterError(f"`modulus_bits` must be in [1, 64]; got {modulus_bits}")
    for nbytes in (1, 2, 4, 8):
        if modulus_bits <= 8 * nbytes:
            return np.dtype(f"<u{nbytes}")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FixedPointEncoder:
    """Clip, scale and stochastically round floats to integers modulo ``2**b``.

    Parameters
    ----------
    clip_range:
        ``R > 0``; inputs are clipped to ``[-R, R]``.
    precision_bits:
        ``q`` in ``[1, 32]``; a coordinate becomes an integer in ``[0, 2**q - 1]``.
    max_summands:
        ``n >= 1``, the most encodings that will be summed; sets
        ``b = q + ceil(log2 n)``.

    Examples
    --------
    >>> import numpy as np
    >>> enc = FixedPointEncoder(clip_range=1.0, precision_bits=8, max_summands=4)
    >>> enc.modulus_bits
    10
    >>> rng = np.random.default_rng(0)
    >>> x = np.array([0.5, -1.0, 1.0])
    >>> s = enc.encode(x, rng=rng) + enc.encode(x, rng=rng)
    >>> bool(np.all(np.abs(enc.decode_sum(s, n_summands=2) - 2 * x) < 2 * enc.step))
    True
    """

    clip_range: float
    precision_bits: int
    max_summands: int

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            problems.append(f"`clip_range` must be a finite number > 0; got {self.clip_range!r}")
        if not 1 <= self.precision_bits <= 32:
            problems.append(f"`precision_bits` must be in [1, 32]; got {self.precision_bits!r}")
        if not 1 <= self.max_summands <= 1 << 20:
            problems.append(f"`max_summands` must be in [1, 2**20]; got {self.max_summands!r}")
        if problems:
            raise InvalidParameterError("; ".join(problems))

    @property
    def levels(self) -> int:
        """Largest encoded integer per coordinate, ``2**q - 1``."""
        return (1 << self.precision_bits) - 1

    @property
    def step(self) -> float:
        """Quantization step ``Δ = 2R / (2**q - 1)``."""
        return 2.0 * self.clip_range / self.levels

    @property
    def modulus_bits(self) -> int:
        """``b = q + ceil(log2 n)``; at most 52, so decoding is exact in float64."""
        return self.precision_bits + (self.max_summands - 1).bit_length()

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """Wire dtype of one coordinate (see :func:`word_dtype`)."""
        return word_dtype(self.modulus_bits)

    def error_bound(self, n_summands: int) -> float:
        """Bound on the per-coordinate decoding error of a sum of ``n_summands``.

        Returns
        -------
        float
            ``n_summands * Δ`` (each client contributes less than one step).
        """
        return n_summands * self.step

    def encode(
        self, x: ArrayLike, *, rng: np.random.Generator | SecureRandom
    ) -> NDArray[np.unsignedinteger]:
        """Encode a float vector.

        Parameters
        ----------
        x:
            1-D array of finite floats (any real dtype).
        rng:
            Randomness for stochastic rounding: a :class:`SecureRandom` in secure
            mode, or a seeded :class:`numpy.random.Generator` for experiments.

        Returns
        -------
        numpy.ndarray
            Integers in ``[0, 2**q - 1]`` of dtype :attr:`dtype`.
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1:
            raise InvalidParameterError(f"`x` must be 1-D; got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise InvalidParameterError(f"`x` must be finite; got {arr[bad]!r} at index {bad}")
        r = self.clip_range
        y = (np.clip(arr, -r, r) + r) * (self.levels / (2.0 * r))
        np.clip(y, 0.0, float(self.levels), out=y)
        low = np.floor(y)
        up = uniform01(rng, arr.size) < (y - low)
        low += up
        return low.astype(self.dtype)

    def decode_sum(self, s: ArrayLike, *, n_summands: int) -> NDArray[np.float64]:
        """Decode the (exact, non-wrapped) integer sum of ``n_summands`` encodings.

        Parameters
        ----------
        s:
            Non-negative integers, ``< 2**b``.
        n_summands:
            Number ``m`` of encodings that were summed, ``1 <= m <= n``.

        Returns
        -------
        numpy.ndarray
            float64 estimate of the sum of the clipped inputs, error ``< m Δ``.
        """
        if not 1 <= n_summands <= self.max_summands:
            raise InvalidParameterError(
                f"`n_summands` must be in [1, {self.max_summands}]; got {n_summands!r}"
            )
        arr = np.asarray(s)
        return arr.astype(np.float64) * self.step - n_summands * self.clip_range
