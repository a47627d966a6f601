"""Shamir ``t``-of-``m`` secret sharing of 32-byte secrets over GF(p).

The field is the prime ``p = 2**256 + 297``, the smallest prime above
``2**256``: every 32-byte secret (self-mask seeds and X25519 private keys) is
read as one big-endian integer ``< 2**256 < p`` and shared with a single
polynomial, no chunking. A share is the pair ``(x, f(x))`` with the holder's
evaluation point ``x = client_id + 1`` (never 0); ``f(x)`` is serialized as 33
big-endian bytes (:data:`SHARE_BYTES`).

Security: the ``t - 1`` non-constant coefficients are uniform in GF(p) from a
CSPRNG, so any ``t - 1`` shares are jointly uniform and independent of the
secret (perfect secrecy); any ``t`` shares determine it by Lagrange
interpolation at 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from protocols.errors import InvalidParameterError, MessageError
from protocols.secagg.rng import SecureRandom

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "combine_shares",
    "evaluation_point",
    "share_from_bytes",
    "share_to_bytes",
    "split_secret",
]

#: The field modulus, ``2**256 + 297`` (prime).
PRIME: Final = (1 << 256) + 297
#: Length of a secret in bytes.
SECRET_BYTES: Final = 32
#: Length of a serialized share value in bytes.
SHARE_BYTES: Final = 33


def evaluation_point(holder_id: int) -> int:
    """The evaluation point of holder ``holder_id``: ``holder_id + 1``."""
    if holder_id < 0:
        raise InvalidParameterError(f"`holder_id` must be >= 0; got {holder_id}")
    return holder_id + 1


def split_secret(
    secret: bytes, *, threshold: int, holder_ids: Sequence[int], rng: SecureRandom
) -> dict[int, int]:
    """Split a 32-byte secret into shares, one per holder.

    Parameters
    ----------
    secret:
        Exactly 32 bytes.
    threshold:
        ``t``: any ``t`` shares reconstruct; ``2 <= t <= len(holder_ids)``.
    holder_ids:
        Distinct non-negative holder ids (client ids).
    rng:
        CSPRNG for the polynomial coefficients.

    Returns
    -------
    dict[int, int]
        Holder id → share value ``f(holder_id + 1)`` in ``[0, p)``.

    Examples
    --------
    >>> rng = SecureRandom.from_seed(0)
    >>> shares = split_secret(bytes(range(32)), threshold=2, holder_ids=[0, 1, 2], rng=rng)
    >>> combine_shares({0: shares[0], 2: shares[2]}, threshold=2) == bytes(range(32))
    True
    """
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise InvalidParameterError(
            f"`secret` must be {SECRET_BYTES} bytes; got "
            f"{len(secret) if isinstance(secret, bytes) else type(secret).__name__}"
        )
    ids = list(holder_ids)
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise InvalidParameterError(f"`holder_ids` must be distinct and >= 0; got {ids}")
    if not 2 <= threshold <= len(ids):
        raise InvalidParameterError(
            f"`threshold` must be in [2, {len(ids)}] for {len(ids)} holders; got {threshold}"
        )
    coeffs = [int.from_bytes(secret, "big")]
    coeffs.extend(rng.randbelow(PRIME) for _ in range(threshold - 1))
    shares: dict[int, int] = {}
    for holder in ids:
        x = evaluation_point(holder)
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        shares[holder] = acc
    return shares


def combine_shares(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """Reconstruct a secret from at least ``threshold`` shares.

    Uses the ``threshold`` shares of the smallest holder ids (deterministic), by
    Lagrange interpolation at 0.

    Parameters
    ----------
    shares:
        Holder id → share value in ``[0, p)``.
    threshold:
        ``t >= 2``.

    Returns
    -------
    bytes
        The 32-byte secret.

    Raises
    ------
    InvalidParameterError
        Fewer than ``threshold`` shares, or a share value outside ``[0, p)``.
    MessageError
        The interpolated value is not a 32-byte secret (inconsistent shares).
    """
    if threshold < 2:
        raise InvalidParameterError(f"`threshold` must be >= 2; got {threshold}")
    if len(shares) < threshold:
        raise InvalidParameterError(
            f"need at least {threshold} shares to reconstruct; got {len(shares)}"
        )
    chosen = sorted(shares)[:threshold]
    xs = [evaluation_point(h) for h in chosen]
    secret = 0
    for i, (holder, xi) in enumerate(zip(chosen, xs)):
        value = shares[holder]
        if not 0 <= value < PRIME:
            raise InvalidParameterError(f"share of holder {holder} is not in [0, p)")
        num = 1
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + value * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise MessageError("shares are inconsistent: the interpolated secret exceeds 256 bits")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    """Serialize a share value as :data:`SHARE_BYTES` big-endian bytes."""
    if not 0 <= value < PRIME:
        raise InvalidParameterError("share value must be in [0, p)")
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Parse a serialized share value; raises :class:`MessageError` if invalid."""
    if len(data) != SHARE_BYTES:
        raise MessageError(f"a share must be {SHARE_BYTES} bytes; got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise MessageError("share value is not a field element (>= p)")
    return value
