"""A cryptographically secure random generator (AES-256-CTR keystream).

Every randomised function in :mod:`protocols.secagg` takes its randomness from
an explicit :class:`SecureRandom` (or, where documented, a
:class:`numpy.random.Generator`); nothing reads a global RNG.
"""

from __future__ import annotations

import os
from typing import Final, TypeAlias

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from protocols.errors import InvalidParameterError

__all__ = ["RandomSource", "SecureRandom", "uniform01"]

_ZERO_NONCE: Final = bytes(16)
_TWO_POW_MINUS_53: Final = 2.0**-53


class SecureRandom:
    """A CSPRNG: the AES-256-CTR keystream of a 32-byte key.

    With ``key=None`` the key comes from :func:`os.urandom` (the secure mode).
    :meth:`from_seed` derives a key deterministically (HKDF-SHA256) from a seed
    and labels, for reproducible tests and simulations only: anyone who knows
    the seed can predict every value.

    Parameters
    ----------
    key:
        32-byte AES-256 key, or ``None`` for a fresh key from the OS.

    Examples
    --------
    >>> rng = SecureRandom.from_seed(1, b"doc")
    >>> len(rng.bytes(5))
    5
    >>> 0.0 <= float(rng.random(3).max()) < 1.0
    True
    """

    __slots__ = ("_drawn", "_encryptor")

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(32)
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidParameterError(
                f"`key` must be 32 bytes; got {type(key).__name__} of length "
                f"{len(key) if isinstance(key, bytes) else 'n/a'}"
            )
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
        self._drawn = 0

    @classmethod
    def from_seed(cls, seed: int | bytes, *labels: bytes) -> SecureRandom:
        """Derive a generator deterministically from ``seed`` and ``labels``.

        Parameters
        ----------
        seed:
            A non-negative integer or a byte string.
        labels:
            Domain-separation labels (for example a client id), hashed into the key.

        Returns
        -------
        SecureRandom
            A generator whose stream is a function of ``(seed, labels)`` only.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, bytes)):
            raise InvalidParameterError(f"`seed` must be an int or bytes; got {seed!r}")
        if isinstance(seed, int):
            if seed < 0:
                raise InvalidParameterError(f"`seed` must be >= 0; got {seed}")
            seed = seed.to_bytes(max(1, (seed.bit_length() + 7) // 8), "big")
        info = b"secrelay/secagg/v1/rng" + b"".join(
            len(label).to_bytes(4, "big") + label for label in labels
        )
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)
        return cls(key)

    def __repr__(self) -> str:
        return "SecureRandom(<key hidden>)"

    @property
    def bytes_drawn(self) -> int:
        """How many bytes the generator has produced (its position, not its key)."""
        return self._drawn

    def bytes(self, n: int) -> bytes:
        """Return ``n`` uniformly random bytes."""
        if n < 0:
            raise InvalidParameterError(f"`n` must be >= 0; got {n}")
        self._drawn += n
        return self._encryptor.update(bytes(n))

    def random(self, size: int) -> NDArray[np.float64]:
        """Return ``size`` uniform floats in ``[0, 1)`` with 53 random bits each."""
        words = np.frombuffer(self.bytes(8 * size), dtype="<u8")
        out: NDArray[np.float64] = (words >> np.uint64(11)).astype(np.float64)
        out *= _TWO_POW_MINUS_53
        return out

    def randbelow(self, upper: int) -> int:
        """Return a uniform integer in ``[0, upper)`` by rejection sampling."""
        if upper < 1:
            raise InvalidParameterError(f"`upper` must be >= 1; got {upper}")
        nbits = (upper - 1).bit_length()
        nbytes = (nbits + 7) // 8
        excess = 8 * nbytes - nbits
        while True:
            value = int.from_bytes(self.bytes(nbytes), "big") >> excess
            if value < upper:
                return value


#: Randomness accepted by the fixed-point encoder.
RandomSource: TypeAlias = "np.random.Generator | SecureRandom"


def uniform01(rng: np.random.Generator | SecureRandom, size: int) -> NDArray[np.float64]:
    """Draw ``size`` uniform floats in ``[0, 1)`` from ``rng``.

    Parameters
    ----------
    rng:
        A :class:`SecureRandom` (secure mode) or a seeded
        :class:`numpy.random.Generator` (reproducible experiments).
    size:
        Number of draws.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(size,)``.
    """
    if isinstance(rng, SecureRandom):
        return rng.random(size)
    if isinstance(rng, np.random.Generator):
        return rng.random(size, dtype=np.float64)
    raise InvalidParameterError(
        f"`rng` must be a SecureRandom or numpy.random.Generator; got {type(rng).__name__}"
    )
