"""Key agreement, key derivation, authenticated encryption and signatures.

Everything comes from the ``cryptography`` package; nothing is hand-rolled:

* X25519 key agreement (two key pairs per client and round: ``c`` for the
  share-exchange channel, ``s`` for pairwise masks);
* HKDF-SHA256 with the round id as salt and a purpose/party label as info;
* AES-256-GCM for the share-exchange ciphertexts, with a random 96-bit nonce
  and the associated data ``label || round id || stage || sender || receiver``;
* Ed25519 signatures on key advertisements (malicious-server hardening).
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import MessageError
from protocols.secagg.rng import SecureRandom

__all__ = [
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "advertisement_payload",
    "aead_decrypt",
    "aead_encrypt",
    "associated_data",
    "generate_x25519",
    "load_x25519",
    "pairwise_mask_seed",
    "share_encryption_key",
    "sign",
    "verify_signature",
    "x25519_exchange",
    "x25519_public_from_private",
]

PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
AEAD_NONCE_BYTES: Final = 12
AEAD_TAG_BYTES: Final = 16
_LABEL: Final = b"secrelay/secagg/v1"


def generate_x25519(rng: SecureRandom) -> tuple[bytes, bytes]:
    """Generate an X25519 key pair from ``rng``.

    Returns
    -------
    tuple[bytes, bytes]
        ``(private_key_bytes, public_key_bytes)``, 32 bytes each.
    """
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
    round_id: bytes, sender: int, encryption_key: bytes, masking_key: bytes
) -> bytes:
    """The bytes an Ed25519 key-advertisement signature covers."""
    return (
        _LABEL + b"/advertise" + round_id + struct.pack(">I", sender) + encryption_key + masking_key
    )


def sign(identity_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``payload``."""
    return identity_key.sign(payload)


def verify_signature(public_key: bytes, payload: bytes, signature: bytes) -> None:
    """Verify an Ed25519 signature; raises :class:`MessageError` if invalid."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        raise MessageError("invalid Ed25519 signature on key advertisement") from None
