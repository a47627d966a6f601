"""The public-key infrastructure of secure aggregation: long-term identity keys.

Against a malicious server (Bonawitz et al. 2017, §4) every client must be able
to tell what another client really said from what the server claims it said,
with keys the server does not control: a PKI. Here the PKI is an
:class:`IdentityDirectory`, a frozen table client id → long-term X25519 public
key that :class:`~protocols.secagg.SecAggConfig` names (``SecAggConfig(pki=...)``),
so every party of a round uses the same keys and the config's equality covers
them. A deployment fills it from its device-attestation or certificate service;
the in-process driver makes one at setup (:func:`make_identity_keys`).

How the keys authenticate. Clients ``u`` and ``v`` share the long-term key
``K_uv = HKDF-SHA256(X25519(id_sk_u, id_pk_v))`` (``= HKDF(X25519(id_sk_v,
id_pk_u))``), which the server cannot compute. A client vouches for a message
to a set of recipients with an *authenticator*: one HMAC-SHA256 tag per
recipient, under the pairwise keys (Castro and Liskov's PBFT authenticators).
A tag convinces only its recipient, which is all the protocol needs, and costs a
key agreement (cached: the key is long-term) and an HMAC instead of an Ed25519
verification per signer, which is what keeps the consistency check, whose
quorum is ``O(n)``, affordable.

Private keys belong to their clients: the directory holds public keys only;
:class:`IdentityKey` hides its secret in ``repr`` and only ever hands out keys
derived for one pair.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import InvalidParameterError, MessageError
from protocols.secagg.crypto import x25519_key_problem
from protocols.secagg.rng import SecureRandom

__all__ = ["IDENTITY_KEY_BYTES", "IdentityDirectory", "IdentityKey", "make_identity_keys"]

#: Length of a raw X25519 identity public key.
IDENTITY_KEY_BYTES: Final = 32
_LABEL: Final = b"secrelay/secagg/v1/pki"


@dataclass(frozen=True)
class IdentityDirectory:
    """Long-term X25519 identity public keys of the registered clients (a PKI snapshot).

    Parameters
    ----------
    public_keys:
        Entry ``i`` is client ``i``'s raw 32-byte X25519 identity public key; all
        distinct, canonical, and not of small order.

    Examples
    --------
    >>> keys, pki = make_identity_keys(3, rng=SecureRandom.from_seed(0, b"doc"))
    >>> len(pki), len(pki.fingerprint)
    (3, 32)
    >>> pki.public_key(1) == keys[1].public_key
    True
    """

    public_keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        keys = tuple(self.public_keys)
        problems = []
        if len(keys) < 2:
            problems.append(f"`public_keys` must hold at least 2 keys; got {len(keys)}")
        for i, key in enumerate(keys):
            problem = x25519_key_problem(key)
            if problem is not None:
                problems.append(f"the identity key of client {i} is {problem}")
        if len(set(keys)) != len(keys):
            problems.append("identity keys must be distinct (two clients share a key)")
        if problems:
            raise InvalidParameterError("invalid IdentityDirectory: " + "; ".join(problems))
        object.__setattr__(self, "public_keys", keys)

    @classmethod
    def from_mapping(cls, keys: Mapping[int, bytes], n_clients: int) -> IdentityDirectory:
        """A directory from a ``client id → public key`` mapping covering ``0 .. n - 1``."""
        missing = [i for i in range(n_clients) if i not in keys]
        if missing:
            raise InvalidParameterError(
                f"the identity keys must cover clients 0 .. {n_clients - 1}; missing {missing[:10]}"
            )
        return cls(tuple(keys[i] for i in range(n_clients)))

    def __len__(self) -> int:
        return len(self.public_keys)

    def __repr__(self) -> str:
        return f"IdentityDirectory(n={len(self)}, fingerprint={self.fingerprint.hex()[:16]}…)"

    def public_key(self, client_id: int) -> bytes:
        """Raw identity public key of ``client_id``."""
        if not 0 <= client_id < len(self.public_keys):
            raise MessageError(f"no identity key known for client {client_id}")
        return self.public_keys[client_id]

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 over every entry: the name of this PKI snapshot."""
        h = hashlib.sha256(_LABEL + struct.pack(">I", len(self.public_keys)))
        for key in self.public_keys:
            h.update(key)
        return h.digest()


class IdentityKey:
    """A client's long-term identity key and the pairwise keys derived from it.

    Parameters
    ----------
    private_key:
        Raw 32-byte X25519 private key.

    Notes
    -----
    :meth:`pairwise_key` memoizes ``HKDF(X25519(own, peer))`` per peer public
    key: a pure function of long-term keys, reused across rounds like a device
    would keep it. The cache is not protocol state.
    """

    __slots__ = ("_cache", "_private", "_public")

    def __init__(self, private_key: bytes) -> None:
        if not isinstance(private_key, bytes) or len(private_key) != 32:
            raise InvalidParameterError("`private_key` must be 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(private_key)
        self._public = self._private.public_key().public_bytes_raw()
        self._cache: dict[bytes, bytes] = {}

    @classmethod
    def generate(cls, rng: SecureRandom) -> IdentityKey:
        """A fresh identity key from ``rng`` (a :class:`SecureRandom`)."""
        if not isinstance(rng, SecureRandom):
            raise InvalidParameterError(f"`rng` must be a SecureRandom; got {type(rng).__name__}")
        return cls(rng.bytes(32))

    def __repr__(self) -> str:
        return f"IdentityKey(public={self._public.hex()[:16]}…, <private key hidden>)"

    @property
    def public_key(self) -> bytes:
        """The raw identity public key (what the PKI lists)."""
        return self._public

    def pairwise_key(self, peer_public_key: bytes) -> bytes:
        """The 32-byte key this client shares with the owner of ``peer_public_key``.

        Raises
        ------
        MessageError
            The peer key is not a usable X25519 public key.
        """
        key = self._cache.get(peer_public_key)
        if key is None:
            problem = x25519_key_problem(peer_public_key)
            if problem is not None:
                raise MessageError(f"invalid identity public key: {problem}")
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
            key = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + b"/pairwise"
            ).derive(shared)
            self._cache[peer_public_key] = key
        return key


def make_identity_keys(
    n_clients: int, *, rng: SecureRandom
) -> tuple[tuple[IdentityKey, ...], IdentityDirectory]:
    """Make an identity key per client and the directory of their public keys (setup).

    Parameters
    ----------
    n_clients:
        Number of clients, ``>= 2``.
    rng:
        A :class:`SecureRandom`: keyed from the OS (secure) or from a seed
        (reproducible simulations only: anyone with the seed can speak for any client).

    Returns
    -------
    tuple
        ``(identity keys indexed by client id, IdentityDirectory)``.
    """
    if not isinstance(rng, SecureRandom):
        raise InvalidParameterError(f"`rng` must be a SecureRandom; got {type(rng).__name__}")
    keys = tuple(IdentityKey.generate(rng) for _ in range(n_clients))
    return keys, IdentityDirectory(tuple(k.public_key for k in keys))
