"""Mask expansion: a 32-byte seed → a vector of uniform words (AES-256-CTR).

``expand_mask(seed, length, dtype)`` is the AES-256-CTR keystream of key
``seed`` with a 16-byte all-zero initial counter block, read as little-endian
words of ``dtype`` with :func:`numpy.frombuffer` (no per-element Python loop).
Word ``i`` of a ``w``-byte dtype is bytes ``[w i, w (i+1))`` of the keystream, so
the first 16 bytes are ``AES_seed(0^128)``, the next 16 ``AES_seed(0^127 1)``, …

The **full** 32-byte seed keys the cipher (Flower's SecAgg+ folds its seed to 32
bits and uses Mersenne Twister; a 32-bit seed space is enumerable and MT is
predictable from its output). Reducing the words modulo ``2**b`` for ``b`` up to
the word width keeps them exactly uniform, since ``2**b`` divides ``2**(8w)``.
Every key is used for one stream only: self-mask seeds are fresh per round and
pairwise seeds are derived per round and per pair (see :mod:`.crypto`).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from protocols.errors import InvalidParameterError

__all__ = ["SEED_BYTES", "expand_mask"]

#: Length of a mask seed in bytes.
SEED_BYTES: Final = 32
_ZERO_BLOCK: Final = bytes(16)


def expand_mask(
    seed: bytes, length: int, dtype: np.dtype[np.unsignedinteger]
) -> NDArray[np.unsignedinteger]:
    """Expand ``seed`` into ``length`` uniform words of ``dtype``.

    Parameters
    ----------
    seed:
        32-byte seed (an AES-256 key).
    length:
        Number of words, ``>= 0``.
    dtype:
        Unsigned little-endian integer dtype (``<u1``, ``<u2``, ``<u4``, ``<u8``).

    Returns
    -------
    numpy.ndarray
        Read-only array of shape ``(length,)``.

    Examples
    --------
    >>> import numpy as np
    >>> m = expand_mask(bytes(32), 4, np.dtype("<u4"))
    >>> m.shape, m.dtype.str
    ((4,), '<u4')
    """
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise InvalidParameterError(f"`seed` must be {SEED_BYTES} bytes")
    if length < 0:
        raise InvalidParameterError(f"`length` must be >= 0; got {length}")
    dt = np.dtype(dtype)
    if dt.kind != "u":
        raise InvalidParameterError(f"`dtype` must be an unsigned integer dtype; got {dt}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_BLOCK)).encryptor()
    stream = encryptor.update(bytes(length * dt.itemsize))
    return np.frombuffer(stream, dtype=dt.newbyteorder("<"))
