"""Random generators for the DP mechanisms.

Every randomised function in :mod:`protocols.dp` takes a ``generator`` argument
and never touches numpy's or Python's global random state. Two kinds are accepted:

* :class:`numpy.random.Generator` — fast and reproducible from a seed; use it for
  simulations, tests and benchmarks. It is **not** a cryptographic generator: an
  adversary who learns its state can subtract the noise.
* :class:`SecureGenerator` — draws every bit from the operating system's CSPRNG
  (:func:`os.urandom`); it cannot be seeded. Its Gaussian draws use the
  floating-point hardening of Holohan & Braghin, "Secure Random Sampling in
  Differential Privacy" (ESORICS 2021, arXiv:2107.10138, Sec. 5.1), as Opacus'
  ``secure_mode`` does: the sum of four standard normals divided by two.

Use :func:`make_generator` to build either.

A run chooses between them with its :data:`Randomness` mode: ``"secure"`` (DP noise,
the sampling amplification relies on and protocol keys from the OS, never from a
published seed) or ``"reproducible"`` (everything from the run's seed, for research
reruns; the guarantee then holds only against parties who do not know the seed).
"""

from __future__ import annotations

import math
import os
from typing import Literal, TypeAlias, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError

__all__ = [
    "RANDOMNESS_MODES",
    "RandomGenerator",
    "Randomness",
    "SecureGenerator",
    "check_randomness",
    "make_generator",
]

Randomness = Literal["secure", "reproducible"]
"""Where a run's privacy-relevant randomness comes from (module doc)."""

RANDOMNESS_MODES: tuple[str, ...] = ("secure", "reproducible")


def check_randomness(value: object, *, name: str = "randomness") -> Randomness:
    """``value`` if it is a :data:`Randomness` mode, else :class:`InvalidParameterError`
    naming ``name`` and the value."""
    if value not in RANDOMNESS_MODES:
        raise InvalidParameterError(
            f"`{name}` must be one of {list(RANDOMNESS_MODES)}; got {value!r}"
        )
    return cast(Randomness, value)


_INT64_MAX = np.int64(np.iinfo(np.int64).max)


def _shape(size: int | tuple[int, ...]) -> tuple[int, ...]:
    return (size,) if isinstance(size, int) else tuple(size)


class SecureGenerator:
    """A cryptographically secure generator backed by :func:`os.urandom`.

    It implements the subset of :class:`numpy.random.Generator` that the
    mechanisms use (``integers``, ``random``, ``standard_normal``), with the same
    semantics. It holds no state that could be logged or serialized.

    Examples
    --------
    >>> g = SecureGenerator()
    >>> x = g.integers(0, 10, size=5)
    >>> bool(((0 <= x) & (x < 10)).all())
    True
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "SecureGenerator()"

    def _words(self, n: int) -> NDArray[np.int64]:
        """``n`` independent uniform integers in ``[0, 2**63)``."""
        raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        words: NDArray[np.int64] = (raw >> np.uint64(1)).astype(np.int64)
        return words

    def integers(
        self,
        low: ArrayLike,
        high: ArrayLike,
        size: int | tuple[int, ...] | None = None,
        dtype: type[np.int64] = np.int64,
    ) -> NDArray[np.int64]:
        """Uniform integers in ``[low, high)``; ``low``/``high`` broadcast like numpy's.

        Unbiased: a 63-bit word ``w`` is accepted only below the largest multiple
        of the range, and the rest are redrawn.
        """
        lo = np.asarray(low, dtype=np.int64)
        hi = np.asarray(high, dtype=np.int64)
        shape = np.broadcast_shapes(lo.shape, hi.shape) if size is None else _shape(size)
        lo_b = np.broadcast_to(lo, shape).ravel()
        span = np.broadcast_to(hi, shape).ravel() - lo_b
        if span.size and int(span.min()) <= 0:
            raise InvalidParameterError(
                f"`high` must be greater than `low`; got a range of {int(span.min())}"
            )
        # Accept w <= max_ok, where max_ok + 1 is the largest multiple of span <= 2**63.
        max_ok = _INT64_MAX - (_INT64_MAX % span + 1) % span
        out = np.empty(span.shape, dtype=np.int64)
        todo = np.arange(span.size)
        while todo.size:
            w = self._words(todo.size)
            ok = w <= max_ok[todo]
            idx = todo[ok]
            out[idx] = w[ok] % span[idx]
            todo = todo[~ok]
        return (out + lo_b).reshape(shape).astype(dtype)

    def random(self, size: int | tuple[int, ...] | None = None) -> NDArray[np.float64]:
        """Uniform floats in ``[0, 1)`` with 53 random bits each."""
        shape = () if size is None else _shape(size)
        n = math.prod(shape)
        w = self._words(n) >> np.int64(10)
        out: NDArray[np.float64] = (w.astype(np.float64) * 2.0**-53).reshape(shape)
        return out

    def standard_normal(self, size: int | tuple[int, ...] | None = None) -> NDArray[np.float64]:
        """Standard normals hardened against floating-point attacks.

        Each output is ``(Z1 + Z2 + Z3 + Z4) / 2`` for independent Box–Muller
        normals ``Zi`` (Holohan & Braghin 2021, Sec. 5.1 with n = 2).
        """
        shape = () if size is None else _shape(size)
        n = math.prod(shape)
        total = np.zeros(n, dtype=np.float64)
        for _ in range(4):
            u1 = 1.0 - self.random(n)  # in (0, 1]
            u2 = self.random(n)
            total += np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return (total / 2.0).reshape(shape)


RandomGenerator: TypeAlias = "np.random.Generator | SecureGenerator"
"""What every ``generator`` argument in :mod:`protocols.dp` accepts."""


def make_generator(seed: int | None = None, *, secure: bool = False) -> RandomGenerator:
    """Build a generator for the mechanisms.

    Parameters
    ----------
    seed:
        Seed of a reproducible :class:`numpy.random.Generator` (PCG64). ``None``
        seeds it from the OS. Must be ``None`` when ``secure`` is true.
    secure:
        Return a :class:`SecureGenerator` (OS CSPRNG, unseedable).

    Examples
    --------
    >>> int(make_generator(7).integers(0, 100)) == int(make_generator(7).integers(0, 100))
    True
    >>> make_generator(secure=True)
    SecureGenerator()
    """
    if secure:
        if seed is not None:
            raise InvalidParameterError(
                f"`seed` must be None when `secure` is true (a seeded generator is not "
                f"secure); got {seed!r}"
            )
        return SecureGenerator()
    return np.random.default_rng(seed)
