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

__all__ = ["SEED_BYTES", "MaskExpander", "expand_mask"]

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


class MaskExpander:
    """Reusable buffers for expanding many seeds to the same length.

    ``MaskExpander(length, dtype).expand(seed)`` returns the same words as
    :func:`expand_mask`, written with ``update_into`` into one preallocated
    buffer (no allocation per seed). The returned array is a read-only view
    that the next :meth:`expand` call overwrites.

    Parameters
    ----------
    length:
        Number of words per mask, ``>= 1``.
    dtype:
        Unsigned integer dtype of the words.

    Examples
    --------
    >>> import numpy as np
    >>> ex = MaskExpander(5, np.dtype("<u2"))
    >>> bool(np.array_equal(ex.expand(bytes(32)), expand_mask(bytes(32), 5, np.dtype("<u2"))))
    True
    """

    __slots__ = ("_buf", "_dtype", "_length", "_nbytes", "_zeros")

    def __init__(self, length: int, dtype: np.dtype[np.unsignedinteger]) -> None:
        dt = np.dtype(dtype)
        if dt.kind != "u":
            raise InvalidParameterError(f"`dtype` must be an unsigned integer dtype; got {dt}")
        if length < 1:
            raise InvalidParameterError(f"`length` must be >= 1; got {length}")
        self._dtype = dt.newbyteorder("<")
        self._length = length
        self._nbytes = length * dt.itemsize
        self._zeros = bytes(self._nbytes)
        # update_into needs room for one extra block.
        self._buf = bytearray(self._nbytes + 16)

    def expand(self, seed: bytes) -> NDArray[np.unsignedinteger]:
        """The mask of ``seed`` (a view into the shared buffer)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise InvalidParameterError(f"`seed` must be {SEED_BYTES} bytes")
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_BLOCK)).encryptor()
        written = encryptor.update_into(self._zeros, self._buf)
        if written != self._nbytes:
            raise AssertionError("AES-CTR wrote an unexpected number of bytes")
        view = np.frombuffer(self._buf, dtype=self._dtype, count=self._length)
        view.flags.writeable = False
        return view
