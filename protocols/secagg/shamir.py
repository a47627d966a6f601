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
    "InconsistentSharesError",
    "combine_shares",
    "combine_shares_verified",
    "evaluation_point",
    "find_bad_shares",
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
    if not isinstance(rng, SecureRandom):
        raise InvalidParameterError(
            f"`rng` must be a SecureRandom (the library's CSPRNG); got {type(rng).__name__}"
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


class InconsistentSharesError(MessageError):
    """The shares of one secret do not lie on one polynomial of degree ``t - 1``.

    Attributes
    ----------
    suspects:
        Holder ids whose shares disagree with the polynomial that all the others
        agree on (Berlekamp–Welch decoding), or every holder when the
        disagreement is too large to tell who is wrong.
    holders:
        Every holder whose share was used.
    """

    def __init__(self, message: str, *, suspects: tuple[int, ...], holders: tuple[int, ...]):
        super().__init__(message)
        self.suspects = suspects
        self.holders = holders


def _barycentric_weights(xs: list[int]) -> list[int]:
    """``b_i = 1 / prod_{j != i} (x_i - x_j)`` modulo p."""
    out = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den *= xi - xj
        out.append(pow(den % PRIME, -1, PRIME))
    return out


def _evaluate(xs: list[int], ys: list[int], weights: list[int], x: int) -> int:
    """The interpolating polynomial through ``(xs, ys)`` evaluated at ``x`` (modulo p)."""
    if x in xs:
        return ys[xs.index(x)]
    full = 1
    for xj in xs:
        full *= x - xj
    acc = 0
    for xi, yi, bi in zip(xs, ys, weights):
        acc += yi * (bi * (full // (x - xi)) % PRIME)
    return acc % PRIME


def combine_shares_verified(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """Reconstruct a secret and check it against every extra share.

    The secret is interpolated from the ``threshold`` shares of the smallest
    holder ids; every other share must lie on the same polynomial of degree
    ``threshold - 1``. A corrupted share (a faulty or lying holder) is thus
    detected whenever at least one share beyond ``threshold`` arrived; with
    exactly ``threshold`` shares there is nothing to check against.

    Parameters
    ----------
    shares:
        Holder id → share value in ``[0, p)``, at least ``threshold`` of them.
    threshold:
        ``t >= 2``.

    Returns
    -------
    bytes
        The 32-byte secret.

    Raises
    ------
    InconsistentSharesError
        The shares disagree; ``suspects`` names the holders whose shares are off
        the polynomial the others agree on (when that is decidable).

    Examples
    --------
    >>> from protocols.secagg.rng import SecureRandom
    >>> sh = split_secret(bytes(32), threshold=2, holder_ids=[0, 1, 2, 3], rng=SecureRandom.from_seed(1))
    >>> combine_shares_verified(sh, threshold=2) == bytes(32)
    True
    >>> sh[3] = (sh[3] + 1) % PRIME
    >>> combine_shares_verified(sh, threshold=2)
    Traceback (most recent call last):
    ...
    protocols.secagg.shamir.InconsistentSharesError: shares disagree: holders [3] sent shares off the polynomial of the other 3 (4 shares, threshold 2)
    """
    if threshold < 2:
        raise InvalidParameterError(f"`threshold` must be >= 2; got {threshold}")
    if len(shares) < threshold:
        raise InvalidParameterError(
            f"need at least {threshold} shares to reconstruct; got {len(shares)}"
        )
    holders = sorted(shares)
    for h in holders:
        if not 0 <= shares[h] < PRIME:
            raise InvalidParameterError(f"share of holder {h} is not in [0, p)")
    base = holders[:threshold]
    xs = [evaluation_point(h) for h in base]
    ys = [shares[h] for h in base]
    weights = _barycentric_weights(xs)
    bad = [h for h in holders[threshold:] if _evaluate(xs, ys, weights, h + 1) != shares[h]]
    if bad:
        suspects = find_bad_shares(shares, threshold=threshold)
        if suspects:
            detail = (
                f"holders {list(suspects)} sent shares off the polynomial of the other "
                f"{len(holders) - len(suspects)}"
            )
        else:
            suspects = tuple(holders)
            detail = f"too many disagree to tell which of holders {holders} are wrong"
        raise InconsistentSharesError(
            f"shares disagree: {detail} ({len(holders)} shares, threshold {threshold})",
            suspects=suspects,
            holders=tuple(holders),
        )
    secret = _evaluate(xs, ys, weights, 0)
    if secret >> (8 * SECRET_BYTES):
        raise InconsistentSharesError(
            "shares are inconsistent: the interpolated secret exceeds 256 bits",
            suspects=tuple(holders),
            holders=tuple(holders),
        )
    return secret.to_bytes(SECRET_BYTES, "big")


def _solve_mod_p(rows: list[list[int]], rhs: list[int]) -> list[int] | None:
    """One solution of ``rows · z = rhs`` over GF(p) (free variables 0), or None."""
    m, k = len(rows), len(rows[0]) if rows else 0
    a = [[*row, b] for row, b in zip(rows, rhs)]
    pivots: list[int] = []
    r = 0
    for c in range(k):
        piv = next((i for i in range(r, m) if a[i][c] % PRIME), None)
        if piv is None:
            continue
        a[r], a[piv] = a[piv], a[r]
        inv = pow(a[r][c], -1, PRIME)
        a[r] = [v * inv % PRIME for v in a[r]]
        for i in range(m):
            if i != r and a[i][c]:
                f = a[i][c]
                a[i] = [(vi - f * vr) % PRIME for vi, vr in zip(a[i], a[r])]
        pivots.append(c)
        r += 1
        if r == m:
            break
    if any(a[i][k] % PRIME for i in range(r, m)):
        return None
    z = [0] * k
    for i, c in enumerate(pivots):
        z[c] = a[i][k]
    return z


def _poly_divmod(num: list[int], den: list[int]) -> tuple[list[int], list[int]]:
    """Polynomial division over GF(p); coefficient lists, lowest degree first."""
    num = num[:]
    q = [0] * max(1, len(num) - len(den) + 1)
    inv = pow(den[-1], -1, PRIME)
    for i in range(len(num) - len(den), -1, -1):
        coef = num[i + len(den) - 1] * inv % PRIME
        q[i] = coef
        for j, d in enumerate(den):
            num[i + j] = (num[i + j] - coef * d) % PRIME
    return q, num[: len(den) - 1]


def find_bad_shares(shares: Mapping[int, int], *, threshold: int) -> tuple[int, ...]:
    """Holders whose shares are off the degree-``t - 1`` polynomial the others agree on.

    Berlekamp–Welch decoding of the Reed–Solomon code the shares form: with
    ``m`` shares it corrects up to ``e = floor((m - t) / 2)`` wrong ones.

    Returns
    -------
    tuple[int, ...]
        The holders with wrong shares (empty if all agree), or ``()`` also when
        more than ``e`` are wrong and the decoder cannot tell which (check with
        :func:`combine_shares_verified` first).
    """
    holders = sorted(shares)
    m, t = len(holders), threshold
    e = (m - t) // 2
    if e < 1:
        return ()
    xs = [evaluation_point(h) for h in holders]
    ys = [shares[h] for h in holders]
    rows, rhs = [], []
    for x, y in zip(xs, ys):
        powers = [pow(x, j, PRIME) for j in range(e + t)]
        rows.append(powers[: e + t] + [(-y * powers[j]) % PRIME for j in range(e)])
        rhs.append(y * pow(x, e, PRIME) % PRIME)
    z = _solve_mod_p(rows, rhs)
    if z is None:
        return ()
    q_coeffs, e_coeffs = z[: e + t], [*z[e + t :], 1]
    poly, rem = _poly_divmod(q_coeffs, e_coeffs)
    if any(rem):
        return ()
    bad = []
    for h, x, y in zip(holders, xs, ys):
        acc = 0
        for c in reversed(poly):
            acc = (acc * x + c) % PRIME
        if acc != y:
            bad.append(h)
    return tuple(bad) if len(bad) <= e else ()


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
