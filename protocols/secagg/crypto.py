"""Key agreement, key derivation, authenticated encryption and signatures.

Everything comes from the ``cryptography`` package; nothing is hand-rolled:

* X25519 key agreement (two key pairs per client and round: ``c`` for the
  share-exchange channel, ``s`` for pairwise masks);
* HKDF-SHA256 with the round id as salt and a purpose/party label as info;
* AES-256-GCM for the share-exchange ciphertexts, with a random 96-bit nonce
  and the associated data ``label || round id || stage || sender || receiver``;
* HMAC-SHA256 authenticator tags, under pairwise keys from the PKI's long-term
  X25519 identity keys (:mod:`.pki`), on key advertisements and on the survivor
  sets of the consistency check (malicious-server hardening).

Peer X25519 public keys are checked before use (:func:`x25519_key_problem`):
the five small-order points of Curve25519 and its twist and every
non-canonical encoding are refused, so a shared secret never degenerates.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import InvalidParameterError, MessageError
from protocols.secagg.rng import SecureRandom

__all__ = [
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "AUTH_TAG_BYTES",
    "PUBLIC_KEY_BYTES",
    "advertisement_payload",
    "aead_decrypt",
    "aead_encrypt",
    "associated_data",
    "auth_tag",
    "consistency_payload",
    "generate_x25519",
    "load_x25519",
    "pairwise_mask_seed",
    "share_encryption_key",
    "verify_auth_tag",
    "x25519_exchange",
    "x25519_key_problem",
    "x25519_public_from_private",
]

PUBLIC_KEY_BYTES: Final = 32
#: Length of an authenticator tag (full HMAC-SHA256).
AUTH_TAG_BYTES: Final = 32
AEAD_NONCE_BYTES: Final = 12
AEAD_TAG_BYTES: Final = 16
_LABEL: Final = b"secrelay/secagg/v1"


#: The field prime of Curve25519, ``2**255 - 19``.
_P25519: Final = (1 << 255) - 19
#: u-coordinates of the points of small order on Curve25519 and its twist
#: (orders 1, 2, 4 and 8): 0, 1, p - 1 and the two points of order 8 (RFC 7748
#: §7; the same list as libsodium's blocklist, whose other two entries, p and
#: p + 1, are non-canonical and refused as such).
_SMALL_ORDER_U: Final = frozenset(
    {
        0,
        1,
        _P25519 - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


def _check_rng(rng: object) -> None:
    if not isinstance(rng, SecureRandom):
        raise InvalidParameterError(
            f"`rng` must be a SecureRandom (the library's CSPRNG); got {type(rng).__name__}"
        )


def x25519_key_problem(public_key: bytes) -> str | None:
    """Why a raw X25519 public key must be refused, or ``None`` if it is acceptable.

    Refused: a length other than 32 bytes; a non-canonical encoding (the top bit
    set, or a u-coordinate ``>= 2**255 - 19``); a point of small order (its
    shared secret with any private key is one of at most 8 values, all-zero for
    the clamped scalars X25519 uses).

    Examples
    --------
    >>> x25519_key_problem(bytes(32))
    'a point of small order'
    >>> x25519_key_problem((9).to_bytes(32, "little")) is None
    True
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        return "not 32 bytes"
    if public_key[-1] & 0x80:
        return "a non-canonical encoding (bit 255 is set)"
    u = int.from_bytes(public_key, "little")
    if u >= _P25519:
        return "a non-canonical encoding (u >= 2**255 - 19)"
    if u in _SMALL_ORDER_U:
        return "a point of small order"
    return None


def generate_x25519(rng: SecureRandom) -> tuple[bytes, bytes]:
    """Generate an X25519 key pair from ``rng`` (a :class:`SecureRandom`).

    Returns
    -------
    tuple[bytes, bytes]
        ``(private_key_bytes, public_key_bytes)``, 32 bytes each.
    """
    _check_rng(rng)
    private = X25519PrivateKey.from_private_bytes(rng.bytes(32))
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def x25519_public_from_private(private_key: bytes) -> bytes:
    """The raw public key of a raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def load_x25519(private_key: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key (loading costs a scalar multiplication)."""
    return X25519PrivateKey.from_private_bytes(private_key)


def x25519_exchange(private_key: X25519PrivateKey | bytes, peer_public_key: bytes) -> bytes:
    """Raw X25519 shared secret; :class:`MessageError` for a degenerate peer key."""
    problem = x25519_key_problem(peer_public_key)
    if problem is not None:
        raise MessageError(f"invalid X25519 public key: {problem}")
    if isinstance(private_key, bytes):
        private_key = load_x25519(private_key)
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError as exc:  # all-zero shared secret (small-order point)
        raise MessageError(f"invalid X25519 public key: {exc}") from None


def _hkdf(ikm: bytes, round_id: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=round_id, info=info).derive(ikm)


def pairwise_mask_seed(shared_secret: bytes, round_id: bytes, u: int, v: int) -> bytes:
    """The 32-byte pairwise mask seed of clients ``u`` and ``v`` (symmetric in u, v)."""
    lo, hi = (u, v) if u < v else (v, u)
    return _hkdf(shared_secret, round_id, _LABEL + b"/pairwise-mask" + struct.pack(">II", lo, hi))


def share_encryption_key(
    shared_secret: bytes, round_id: bytes, sender: int, receiver: int
) -> bytes:
    """The 32-byte AES-GCM key for shares sent from ``sender`` to ``receiver``."""
    return _hkdf(
        shared_secret,
        round_id,
        _LABEL + b"/share-encryption" + struct.pack(">II", sender, receiver),
    )


def associated_data(round_id: bytes, stage_code: int, sender: int, receiver: int) -> bytes:
    """AEAD associated data binding round, stage, sender and receiver."""
    return _LABEL + round_id + struct.pack(">BII", stage_code, sender, receiver)


def aead_encrypt(key: bytes, plaintext: bytes, ad: bytes, rng: SecureRandom) -> bytes:
    """AES-256-GCM encryption; returns ``nonce || ciphertext || tag``."""
    _check_rng(rng)
    nonce = rng.bytes(AEAD_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def aead_decrypt(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """AES-256-GCM decryption; :class:`MessageError` if forged, truncated or re-routed."""
    if len(ciphertext) < AEAD_NONCE_BYTES + AEAD_TAG_BYTES:
        raise MessageError(f"ciphertext too short ({len(ciphertext)} bytes)")
    try:
        return AESGCM(key).decrypt(ciphertext[:AEAD_NONCE_BYTES], ciphertext[AEAD_NONCE_BYTES:], ad)
    except InvalidTag:
        raise MessageError(
            "ciphertext authentication failed (forged, corrupted, replayed from another "
            "round or stage, or addressed to another client)"
        ) from None


def advertisement_payload(
    round_id: bytes, sender: int, receiver: int, encryption_key: bytes, masking_key: bytes
) -> bytes:
    """The bytes the advertisement tag from ``sender`` to ``receiver`` covers."""
    return (
        _LABEL
        + b"/advertise"
        + round_id
        + struct.pack(">II", sender, receiver)
        + encryption_key
        + masking_key
    )


def consistency_payload(round_id: bytes, n_clients: int, shared: bytes, survivors: bytes) -> bytes:
    """The survivor sets a consistency vote covers (``U2`` and ``U3`` as bitmaps)."""
    return (
        _LABEL
        + b"/consistency"
        + round_id
        + struct.pack(">II", n_clients, len(shared))
        + shared
        + survivors
    )


def auth_tag(pairwise_key: bytes, payload: bytes, sender: int, receiver: int) -> bytes:
    """HMAC-SHA256 tag from ``sender`` to ``receiver`` over ``payload``."""
    mac = hmac.HMAC(pairwise_key, hashes.SHA256())
    mac.update(payload + struct.pack(">II", sender, receiver))
    return mac.finalize()


def verify_auth_tag(
    pairwise_key: bytes, payload: bytes, sender: int, receiver: int, tag: bytes, what: str
) -> None:
    """Check a tag (constant time); :class:`MessageError` naming ``what`` if it is wrong."""
    mac = hmac.HMAC(pairwise_key, hashes.SHA256())
    mac.update(payload + struct.pack(">II", sender, receiver))
    try:
        mac.verify(tag)
    except InvalidSignature:
        raise MessageError(f"invalid authenticator tag on {what}") from None
