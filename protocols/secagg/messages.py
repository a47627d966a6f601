"""Versioned binary messages of the secure-aggregation protocol.

Every message is ``header || body``. The 30-byte header (big-endian)::

    version  u8     = 1
    type     u8     MessageType
    round_id 16 B   public round id
    sender   u32    client id, or SERVER_ID = 0xFFFFFFFF
    receiver u32    client id, or SERVER_ID
    body_len u32    exact length of the body that follows

Bodies (all counts and lengths explicit; id lists strictly increasing)::

    ADVERTISE_KEYS   c_pk[32] s_pk[32] count:u16 { receiver:u32 tag[32] } * count
    KEY_DIRECTORY    count:u32 { len:u32 advertise_keys_message[len] } * count
    SHARE_KEYS       count:u32 { receiver:u32 len:u32 ciphertext[len] } * count
    SHARE_DELIVERY   count:u32 { sender:u32   len:u32 ciphertext[len] } * count
    MASKED_INPUT     modulus_bits:u8 word_bytes:u8 length:u32 words[length*word_bytes] (LE)
    UNMASK_REQUEST   n:u32 survivor:u32 * n  m:u32 dropped:u32 * m
    UNMASK_RESPONSE  n:u32 {owner:u32 share[33]} * n  m:u32 {owner:u32 share[33]} * m
    CONSISTENCY_REQUEST  n:u32 shared[ceil(n/8)] survivors[ceil(n/8)]   (bitmaps)
    CONSISTENCY_VOTE     count:u32 { receiver:u32 tag[32] } * count
    FORWARDED_VOTES      count:u32 { voter:u32 tag[32] } * count

Bitmaps hold client ``i`` in bit ``i % 8`` (least significant first) of byte
``i // 8``; the padding bits of the last byte are zero.

Decoding validates every length and field and raises
:class:`~protocols.errors.MessageError` with the reason; it never raises
anything else. Semantic checks (is this sender expected now?) belong to the
state machines in :mod:`.client` and :mod:`.server`.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

from protocols.errors import MessageError
from protocols.secagg.config import MAX_CLIENTS, Stage
from protocols.secagg.crypto import (
    AEAD_NONCE_BYTES,
    AEAD_TAG_BYTES,
    AUTH_TAG_BYTES,
    PUBLIC_KEY_BYTES,
    x25519_key_problem,
)
from protocols.secagg.encoding import word_dtype
from protocols.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes

__all__ = [
    "HEADER_BYTES",
    "MESSAGE_STAGE",
    "ROUND_ID_BYTES",
    "SERVER_ID",
    "SHARE_CIPHERTEXT_BYTES",
    "SHARE_PLAINTEXT_BYTES",
    "VERSION",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencyVote",
    "ForwardedVotes",
    "KeyDirectory",
    "MaskedInput",
    "Message",
    "MessageType",
    "ShareDelivery",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "bitmap_to_ids",
    "decode_message",
    "ids_to_bitmap",
    "peek_type",
]

VERSION: Final = 1
SERVER_ID: Final = 0xFFFFFFFF
ROUND_ID_BYTES: Final = 16
_HEADER: Final = struct.Struct(">BB16sIII")
HEADER_BYTES: Final = _HEADER.size
#: ``sender:u32 receiver:u32 b_share[33] sk_share[33]``
SHARE_PLAINTEXT_BYTES: Final = 8 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES: Final = AEAD_NONCE_BYTES + SHARE_PLAINTEXT_BYTES + AEAD_TAG_BYTES


class MessageType(IntEnum):
    """Message type byte."""

    ADVERTISE_KEYS = 1
    KEY_DIRECTORY = 2
    SHARE_KEYS = 3
    SHARE_DELIVERY = 4
    MASKED_INPUT = 5
    UNMASK_REQUEST = 6
    UNMASK_RESPONSE = 7
    CONSISTENCY_REQUEST = 8
    CONSISTENCY_VOTE = 9
    FORWARDED_VOTES = 10


#: The stage at which a message of each type is consumed by its receiver.
MESSAGE_STAGE: Final[dict[MessageType, Stage]] = {
    MessageType.ADVERTISE_KEYS: Stage.ADVERTISE_KEYS,
    MessageType.KEY_DIRECTORY: Stage.SHARE_KEYS,
    MessageType.SHARE_KEYS: Stage.SHARE_KEYS,
    MessageType.SHARE_DELIVERY: Stage.MASKED_INPUT,
    MessageType.MASKED_INPUT: Stage.MASKED_INPUT,
    MessageType.UNMASK_REQUEST: Stage.UNMASKING,
    MessageType.UNMASK_RESPONSE: Stage.UNMASKING,
    MessageType.CONSISTENCY_REQUEST: Stage.CONSISTENCY_CHECK,
    MessageType.CONSISTENCY_VOTE: Stage.CONSISTENCY_CHECK,
    MessageType.FORWARDED_VOTES: Stage.UNMASKING,
}

#: Message types a client sends to the server (the rest go the other way).
_TO_SERVER: Final = frozenset(
    {
        MessageType.ADVERTISE_KEYS,
        MessageType.SHARE_KEYS,
        MessageType.MASKED_INPUT,
        MessageType.UNMASK_RESPONSE,
        MessageType.CONSISTENCY_VOTE,
    }
)


class _Reader:
    """Bounds-checked cursor over a byte string."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: memoryview, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, field_name: str) -> bytes:
        if n > self.remaining:
            raise MessageError(
                f"{self._what}: truncated while reading {field_name} "
                f"(need {n} bytes, {self.remaining} left)"
            )
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def view(self, n: int, field_name: str) -> memoryview:
        """Like :meth:`take`, without copying."""
        if n > self.remaining:
            raise MessageError(
                f"{self._what}: truncated while reading {field_name} "
                f"(need {n} bytes, {self.remaining} left)"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def u16(self, field_name: str) -> int:
        return int.from_bytes(self.take(2, field_name), "big")

    def u32(self, field_name: str) -> int:
        return int.from_bytes(self.take(4, field_name), "big")

    def count(self, field_name: str, min_entry_bytes: int) -> int:
        n = self.u32(field_name)
        if n * min_entry_bytes > self.remaining:
            raise MessageError(
                f"{self._what}: {field_name} = {n} entries cannot fit in the "
                f"{self.remaining} bytes left"
            )
        return n

    def client_id(self, field_name: str) -> int:
        value = self.u32(field_name)
        if value == SERVER_ID:
            raise MessageError(f"{self._what}: {field_name} must be a client id; got the server id")
        return value

    def finish(self) -> None:
        if self.remaining:
            raise MessageError(f"{self._what}: {self.remaining} trailing bytes")


def _check_increasing(ids: list[int], what: str) -> None:
    for a, b in itertools.pairwise(ids):
        if b <= a:
            raise MessageError(f"{what} must be strictly increasing; got {a} then {b}")


_TAG_ENTRY = struct.Struct(">I32s")


def _encode_tags(tags: tuple[tuple[int, bytes], ...], count_bytes: int) -> bytes:
    parts = [len(tags).to_bytes(count_bytes, "big")]
    pack = _TAG_ENTRY.pack
    for peer, tag in tags:
        if len(tag) != AUTH_TAG_BYTES:
            raise MessageError(f"an authenticator tag must be {AUTH_TAG_BYTES} bytes")
        if not 0 <= peer <= 0xFFFFFFFF:
            raise MessageError(f"`peer` does not fit in 32 bits; got {peer}")
        parts.append(pack(peer, tag))
    return b"".join(parts)


def _decode_tags(r: _Reader, what: str, count_bytes: int) -> tuple[tuple[int, bytes], ...]:
    n = r.u16(f"{what} count") if count_bytes == 2 else r.u32(f"{what} count")
    size = n * _TAG_ENTRY.size
    if size > r.remaining:
        raise MessageError(f"{r._what}: {n} {what}s cannot fit in the {r.remaining} bytes left")
    out = tuple(_TAG_ENTRY.iter_unpack(r.take(size, f"{what}s")))
    peers = [peer for peer, _ in out]
    if SERVER_ID in peers:
        raise MessageError(f"{r._what}: a {what} must be a client id; got the server id")
    _check_increasing(peers, f"{r._what}: {what}s")
    return out


def _u32(value: int, name: str) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise MessageError(f"`{name}` does not fit in 32 bits; got {value}")
    return value.to_bytes(4, "big")


def _pack(msg_type: MessageType, round_id: bytes, sender: int, receiver: int, body: bytes) -> bytes:
    if len(round_id) != ROUND_ID_BYTES:
        raise MessageError(f"`round_id` must be {ROUND_ID_BYTES} bytes; got {len(round_id)}")
    for name, value in (("sender", sender), ("receiver", receiver)):
        if not 0 <= value <= SERVER_ID:
            raise MessageError(f"`{name}` does not fit in 32 bits; got {value}")
    return _HEADER.pack(VERSION, msg_type, round_id, sender, receiver, len(body)) + body


@dataclass(frozen=True)
class _Header:
    msg_type: MessageType
    round_id: bytes
    sender: int
    receiver: int


def _unpack(data: bytes) -> tuple[_Header, _Reader]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"a message must be bytes; got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise MessageError(
            f"message truncated: {len(data)} bytes, the header alone is {HEADER_BYTES}"
        )
    version, type_byte, round_id, sender, receiver, body_len = _HEADER.unpack_from(data)
    if version != VERSION:
        raise MessageError(f"unsupported message version {version}; expected {VERSION}")
    try:
        msg_type = MessageType(type_byte)
    except ValueError:
        raise MessageError(f"unknown message type {type_byte}") from None
    if body_len != len(data) - HEADER_BYTES:
        raise MessageError(
            f"{msg_type.name}: header announces a {body_len}-byte body; "
            f"got {len(data) - HEADER_BYTES} bytes"
        )
    to_server = msg_type in _TO_SERVER
    client, server = (sender, receiver) if to_server else (receiver, sender)
    if server != SERVER_ID:
        role = "receiver" if to_server else "sender"
        raise MessageError(f"{msg_type.name}: the {role} must be the server; got {server}")
    if client == SERVER_ID:
        role = "sender" if to_server else "receiver"
        raise MessageError(f"{msg_type.name}: the {role} must be a client; got the server id")
    return _Header(msg_type, round_id, sender, receiver), _Reader(
        memoryview(data)[HEADER_BYTES:], msg_type.name
    )


def _expect(header: _Header, msg_type: MessageType) -> None:
    if header.msg_type != msg_type:
        raise MessageError(f"expected a {msg_type.name} message; got {header.msg_type.name}")


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, client → server: the client's two X25519 public keys.

    Attributes
    ----------
    round_id, sender:
        Round and client id.
    encryption_key:
        ``c_pk`` (32 bytes), for the share-exchange channel.
    masking_key:
        ``s_pk`` (32 bytes), for pairwise masks.
    tags:
        The authenticator: ``(receiver, HMAC tag)`` for each neighbour, sorted by
        receiver (:func:`~protocols.secagg.crypto.advertisement_payload`), or
        ``()`` when advertisements are not authenticated. The server forwards to
        each neighbour only the tag addressed to it.
    """

    round_id: bytes
    sender: int
    encryption_key: bytes
    masking_key: bytes
    tags: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)

    def to_bytes(self) -> bytes:
        """Serialize."""
        if (
            len(self.encryption_key) != PUBLIC_KEY_BYTES
            or len(self.masking_key) != PUBLIC_KEY_BYTES
        ):
            raise MessageError("public keys must be 32 bytes")
        if len(self.tags) > 0xFFFF:
            raise MessageError("too many advertisement tags")
        body = self.encryption_key + self.masking_key + _encode_tags(self.tags, 2)
        return _pack(MessageType.ADVERTISE_KEYS, self.round_id, self.sender, SERVER_ID, body)

    def tag_for(self, receiver: int) -> bytes | None:
        """The tag addressed to ``receiver``, if any."""
        for peer, tag in self.tags:
            if peer == receiver:
                return tag
        return None

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.ADVERTISE_KEYS)
        c_pk = r.take(PUBLIC_KEY_BYTES, "encryption key")
        s_pk = r.take(PUBLIC_KEY_BYTES, "masking key")
        tags = _decode_tags(r, "tag receiver", 2)
        r.finish()
        if c_pk == s_pk:
            raise MessageError(
                f"ADVERTISE_KEYS from client {header.sender}: the two public keys must differ"
            )
        for name, key in (("encryption", c_pk), ("masking", s_pk)):
            problem = x25519_key_problem(key)
            if problem is not None:
                raise MessageError(
                    f"ADVERTISE_KEYS from client {header.sender}: its {name} key is {problem}; "
                    "refused (it would make every shared secret with it predictable)"
                )
        if any(peer == header.sender for peer, _ in tags):
            raise MessageError("ADVERTISE_KEYS: a client cannot address a tag to itself")
        return cls(header.round_id, header.sender, c_pk, s_pk, tags)


@dataclass(frozen=True)
class KeyDirectory:
    """Stage 1, server → client: the advertisements of the client's neighbours."""

    round_id: bytes
    receiver: int
    advertisements: tuple[AdvertiseKeys, ...]

    def to_bytes(self) -> bytes:
        """Serialize."""
        parts = [len(self.advertisements).to_bytes(4, "big")]
        for ad in self.advertisements:
            raw = ad.to_bytes()
            parts.append(len(raw).to_bytes(4, "big") + raw)
        return _pack(
            MessageType.KEY_DIRECTORY, self.round_id, SERVER_ID, self.receiver, b"".join(parts)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyDirectory:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.KEY_DIRECTORY)
        n = r.count("advertisement count", 4 + HEADER_BYTES + 2 * PUBLIC_KEY_BYTES + 2)
        ads = []
        for i in range(n):
            length = r.u32(f"advertisement {i} length")
            ad = AdvertiseKeys.from_bytes(r.take(length, f"advertisement {i}"))
            if ad.round_id != header.round_id:
                raise MessageError(f"KEY_DIRECTORY: advertisement {i} is from another round")
            ads.append(ad)
        r.finish()
        _check_increasing([ad.sender for ad in ads], "KEY_DIRECTORY: advertisement senders")
        return cls(header.round_id, header.receiver, tuple(ads))


def _encode_ciphertexts(entries: tuple[tuple[int, bytes], ...]) -> bytes:
    parts = [len(entries).to_bytes(4, "big")]
    for peer, ct in entries:
        parts.append(_u32(peer, "peer") + len(ct).to_bytes(4, "big") + ct)
    return b"".join(parts)


def _decode_ciphertexts(r: _Reader, peer_name: str) -> tuple[tuple[int, bytes], ...]:
    n = r.count("ciphertext count", 8 + SHARE_CIPHERTEXT_BYTES)
    out = []
    for i in range(n):
        peer = r.client_id(f"{peer_name} {i}")
        length = r.u32(f"ciphertext {i} length")
        if length != SHARE_CIPHERTEXT_BYTES:
            raise MessageError(
                f"{r._what}: ciphertext {i} must be {SHARE_CIPHERTEXT_BYTES} bytes; got {length}"
            )
        out.append((peer, r.take(length, f"ciphertext {i}")))
    r.finish()
    _check_increasing([p for p, _ in out], f"{r._what}: {peer_name}s")
    return tuple(out)


@dataclass(frozen=True)
class ShareKeys:
    """Stage 1, client → server: encrypted shares, one ciphertext per neighbour.

    ``ciphertexts`` holds ``(receiver id, ciphertext)`` sorted by receiver.
    """

    round_id: bytes
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        """Serialize."""
        return _pack(
            MessageType.SHARE_KEYS,
            self.round_id,
            self.sender,
            SERVER_ID,
            _encode_ciphertexts(self.ciphertexts),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareKeys:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.SHARE_KEYS)
        entries = _decode_ciphertexts(r, "receiver")
        if any(peer == header.sender for peer, _ in entries):
            raise MessageError("SHARE_KEYS: a client cannot send shares to itself")
        return cls(header.round_id, header.sender, entries)


@dataclass(frozen=True)
class ShareDelivery:
    """Stage 2, server → client: ciphertexts addressed to the client.

    ``ciphertexts`` holds ``(sender id, ciphertext)`` sorted by sender.
    """

    round_id: bytes
    receiver: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        """Serialize."""
        return _pack(
            MessageType.SHARE_DELIVERY,
            self.round_id,
            SERVER_ID,
            self.receiver,
            _encode_ciphertexts(self.ciphertexts),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareDelivery:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.SHARE_DELIVERY)
        entries = _decode_ciphertexts(r, "sender")
        if any(peer == header.receiver for peer, _ in entries):
            raise MessageError("SHARE_DELIVERY: a client cannot receive shares from itself")
        return cls(header.round_id, header.receiver, entries)


@dataclass(frozen=True)
class MaskedInput:
    """Stage 2, client → server: the masked, encoded input vector.

    ``data`` holds ``length`` little-endian words of the smallest unsigned dtype
    holding ``modulus_bits`` bits, each ``< 2**modulus_bits`` (after decoding, a
    zero-copy read-only view into the message bytes).
    """

    round_id: bytes
    sender: int
    modulus_bits: int
    data: bytes | memoryview = field(repr=False)

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """Word dtype of :attr:`data`."""
        return word_dtype(self.modulus_bits)

    def values(self) -> NDArray[np.unsignedinteger]:
        """The masked vector as a read-only array."""
        return np.frombuffer(self.data, dtype=self.dtype)

    def to_bytes(self) -> bytes:
        """Serialize."""
        itemsize = self.dtype.itemsize
        if len(self.data) % itemsize:
            raise MessageError("MASKED_INPUT: data is not a whole number of words")
        body = (
            bytes([self.modulus_bits, itemsize])
            + _u32(len(self.data) // itemsize, "length")
            + self.data
        )
        return _pack(MessageType.MASKED_INPUT, self.round_id, self.sender, SERVER_ID, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.MASKED_INPUT)
        bits = r.u8("modulus bits")
        if not 1 <= bits <= 64:
            raise MessageError(f"MASKED_INPUT: modulus bits must be in [1, 64]; got {bits}")
        dtype = word_dtype(bits)
        itemsize = r.u8("word bytes")
        if itemsize != dtype.itemsize:
            raise MessageError(
                f"MASKED_INPUT: {bits}-bit words take {dtype.itemsize} bytes; got {itemsize}"
            )
        length = r.u32("length")
        if length == 0:
            raise MessageError("MASKED_INPUT: the vector must not be empty")
        words = r.view(length * itemsize, "vector")
        r.finish()
        if bits < 8 * itemsize:
            arr = np.frombuffer(words, dtype=dtype)
            if int(arr.max()) >> bits:
                raise MessageError(f"MASKED_INPUT: a word is not reduced modulo 2**{bits}")
        return cls(header.round_id, header.sender, bits, words)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3, server → client: which of the client's share owners survived.

    ``survivors`` (their self-mask seed shares are requested) and ``dropped``
    (their masking-key shares are requested) are sorted client ids.
    """

    round_id: bytes
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def to_bytes(self) -> bytes:
        """Serialize."""
        body = b"".join(
            [len(self.survivors).to_bytes(4, "big")]
            + [_u32(i, "survivor") for i in self.survivors]
            + [len(self.dropped).to_bytes(4, "big")]
            + [_u32(i, "dropped") for i in self.dropped]
        )
        return _pack(MessageType.UNMASK_REQUEST, self.round_id, SERVER_ID, self.receiver, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.UNMASK_REQUEST)
        n = r.count("survivor count", 4)
        survivors = [r.client_id(f"survivor {i}") for i in range(n)]
        m = r.count("dropped count", 4)
        dropped = [r.client_id(f"dropped {i}") for i in range(m)]
        r.finish()
        _check_increasing(survivors, "UNMASK_REQUEST: survivors")
        _check_increasing(dropped, "UNMASK_REQUEST: dropped")
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise MessageError(
                f"UNMASK_REQUEST: client {both[0]} is listed as both survivor and dropped; "
                "revealing both of its secrets would unmask its input"
            )
        return cls(header.round_id, header.receiver, tuple(survivors), tuple(dropped))


def _encode_shares(entries: tuple[tuple[int, int], ...]) -> bytes:
    return len(entries).to_bytes(4, "big") + b"".join(
        _u32(owner, "owner") + share_to_bytes(value) for owner, value in entries
    )


def _decode_shares(r: _Reader, what: str) -> tuple[tuple[int, int], ...]:
    n = r.count(f"{what} count", 4 + SHARE_BYTES)
    out = []
    for i in range(n):
        owner = r.client_id(f"{what} {i} owner")
        out.append((owner, share_from_bytes(r.take(SHARE_BYTES, f"{what} {i}"))))
    _check_increasing([o for o, _ in out], f"UNMASK_RESPONSE: {what} owners")
    return tuple(out)


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 3, client → server: the requested shares.

    ``mask_seed_shares`` are ``(owner, share)`` of survivors' self-mask seeds;
    ``key_shares`` are ``(owner, share)`` of dropped clients' masking keys. An
    owner never appears in both.
    """

    round_id: bytes
    sender: int
    mask_seed_shares: tuple[tuple[int, int], ...] = field(repr=False)
    key_shares: tuple[tuple[int, int], ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        """Serialize."""
        body = _encode_shares(self.mask_seed_shares) + _encode_shares(self.key_shares)
        return _pack(MessageType.UNMASK_RESPONSE, self.round_id, self.sender, SERVER_ID, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.UNMASK_RESPONSE)
        seed_shares = _decode_shares(r, "mask-seed share")
        key_shares = _decode_shares(r, "key share")
        r.finish()
        both = sorted({o for o, _ in seed_shares} & {o for o, _ in key_shares})
        if both:
            raise MessageError(f"UNMASK_RESPONSE: both secrets of client {both[0]} are revealed")
        return cls(header.round_id, header.sender, seed_shares, key_shares)


def ids_to_bitmap(ids: tuple[int, ...] | frozenset[int], n_clients: int) -> bytes:
    """The bitmap of ``ids`` (each in ``[0, n_clients)``) over ``n_clients`` bits.

    Examples
    --------
    >>> ids_to_bitmap((0, 3, 9), 10).hex()
    '0902'
    >>> bitmap_to_ids(bytes.fromhex("0902"), 10)
    (0, 3, 9)
    """
    bits = np.zeros(8 * ((n_clients + 7) // 8), dtype=np.uint8)
    idx = np.fromiter(ids, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_clients):
        raise MessageError(f"client ids must be in [0, {n_clients})")
    bits[idx] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def bitmap_to_ids(bitmap: bytes, n_clients: int) -> tuple[int, ...]:
    """The sorted ids whose bits are set; :class:`MessageError` if a padding bit is set."""
    if len(bitmap) != (n_clients + 7) // 8:
        raise MessageError(
            f"a bitmap of {n_clients} clients takes {(n_clients + 7) // 8} bytes; got {len(bitmap)}"
        )
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    if bits[n_clients:].any():
        raise MessageError("bitmap sets a bit beyond the last client")
    return tuple(int(i) for i in np.flatnonzero(bits))


@dataclass(frozen=True)
class ConsistencyRequest:
    """Consistency check, server → client: the survivor sets the client must sign.

    ``shared`` is ``U2`` (clients whose shares were delivered), ``survivors`` is
    ``U3 ⊆ U2`` (clients whose masked inputs are in the sum), both sorted, over
    the ``n_clients`` registered clients. ``recipients`` (sorted, a subset of
    ``survivors`` without the receiver) are the survivors the client addresses a
    vote tag to; ``None`` means every other survivor. It is not part of what the
    vote covers: who receives a vote cannot change which set it is for. The wire
    format is three bitmaps.
    """

    round_id: bytes
    receiver: int
    n_clients: int
    shared: tuple[int, ...]
    survivors: tuple[int, ...]
    recipients: tuple[int, ...] | None = None

    def bitmaps(self) -> tuple[bytes, bytes]:
        """``(U2 bitmap, U3 bitmap)``: what a vote covers."""
        return (
            ids_to_bitmap(self.shared, self.n_clients),
            ids_to_bitmap(self.survivors, self.n_clients),
        )

    def vote_recipients(self) -> tuple[int, ...]:
        """The survivors this request asks the receiver to address a vote tag to."""
        if self.recipients is None:
            return tuple(w for w in self.survivors if w != self.receiver)
        return self.recipients

    def to_bytes(self) -> bytes:
        """Serialize."""
        shared, survivors = self.bitmaps()
        recipients = ids_to_bitmap(self.vote_recipients(), self.n_clients)
        body = _u32(self.n_clients, "n_clients") + shared + survivors + recipients
        return _pack(MessageType.CONSISTENCY_REQUEST, self.round_id, SERVER_ID, self.receiver, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencyRequest:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.CONSISTENCY_REQUEST)
        n = r.u32("client count")
        if not 2 <= n <= MAX_CLIENTS:
            raise MessageError(
                f"CONSISTENCY_REQUEST: client count must be in [2, {MAX_CLIENTS}]; got {n}"
            )
        width = (n + 7) // 8
        shared = bitmap_to_ids(r.take(width, "shared bitmap"), n)
        survivors = bitmap_to_ids(r.take(width, "survivor bitmap"), n)
        recipients = bitmap_to_ids(r.take(width, "recipient bitmap"), n)
        r.finish()
        extra = sorted(set(survivors) - set(shared))
        if extra:
            raise MessageError(
                f"CONSISTENCY_REQUEST: client {extra[0]} is listed as a survivor but not as "
                "having shared its keys (U3 must be a subset of U2)"
            )
        others = tuple(w for w in survivors if w != header.receiver)
        stray = sorted(set(recipients) - set(others))
        if stray:
            raise MessageError(
                f"CONSISTENCY_REQUEST: vote recipient {stray[0]} is not another survivor "
                "(recipients must be a subset of U3 without the receiver)"
            )
        return cls(
            header.round_id,
            header.receiver,
            n,
            shared,
            survivors,
            None if recipients == others else recipients,
        )


@dataclass(frozen=True)
class ConsistencyVote:
    """Consistency check, client → server: the client's authenticator over the survivor
    sets it was sent — one tag (:func:`~protocols.secagg.crypto.auth_tag` over
    :func:`~protocols.secagg.crypto.consistency_payload`) for every other survivor,
    ``(receiver, tag)`` sorted by receiver."""

    round_id: bytes
    sender: int
    tags: tuple[tuple[int, bytes], ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        """Serialize."""
        return _pack(
            MessageType.CONSISTENCY_VOTE,
            self.round_id,
            self.sender,
            SERVER_ID,
            _encode_tags(self.tags, 4),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencyVote:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.CONSISTENCY_VOTE)
        tags = _decode_tags(r, "receiver", 4)
        r.finish()
        if any(peer == header.sender for peer, _ in tags):
            raise MessageError("CONSISTENCY_VOTE: a client cannot address a tag to itself")
        return cls(header.round_id, header.sender, tags)


@dataclass(frozen=True)
class ForwardedVotes:
    """Unmasking (active security), server → client: the tags other survivors addressed
    to this client over the survivor sets it voted for, ``(voter, tag)`` sorted by
    voter. It replaces the ``UNMASK_REQUEST`` of the honest-but-curious protocol:
    the client derives what to reveal from the sets it voted for."""

    round_id: bytes
    receiver: int
    tags: tuple[tuple[int, bytes], ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        """Serialize."""
        return _pack(
            MessageType.FORWARDED_VOTES,
            self.round_id,
            SERVER_ID,
            self.receiver,
            _encode_tags(self.tags, 4),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ForwardedVotes:
        """Parse and validate; raises :class:`MessageError`."""
        header, r = _unpack(data)
        _expect(header, MessageType.FORWARDED_VOTES)
        tags = _decode_tags(r, "voter", 4)
        r.finish()
        if any(peer == header.receiver for peer, _ in tags):
            raise MessageError("FORWARDED_VOTES: a client's own vote is not forwarded to it")
        return cls(header.round_id, header.receiver, tags)


Message: TypeAlias = (
    "AdvertiseKeys | KeyDirectory | ShareKeys | ShareDelivery | MaskedInput "
    "| UnmaskRequest | UnmaskResponse | ConsistencyRequest | ConsistencyVote "
    "| ForwardedVotes"
)

_CLASSES: Final[dict[MessageType, type[Message]]] = {
    MessageType.ADVERTISE_KEYS: AdvertiseKeys,
    MessageType.KEY_DIRECTORY: KeyDirectory,
    MessageType.SHARE_KEYS: ShareKeys,
    MessageType.SHARE_DELIVERY: ShareDelivery,
    MessageType.MASKED_INPUT: MaskedInput,
    MessageType.UNMASK_REQUEST: UnmaskRequest,
    MessageType.UNMASK_RESPONSE: UnmaskResponse,
    MessageType.CONSISTENCY_REQUEST: ConsistencyRequest,
    MessageType.CONSISTENCY_VOTE: ConsistencyVote,
    MessageType.FORWARDED_VOTES: ForwardedVotes,
}


def peek_type(data: bytes) -> MessageType:
    """The type of a message, after checking only the header's first two bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 2:
        raise MessageError("message truncated: no header")
    if data[0] != VERSION:
        raise MessageError(f"unsupported message version {data[0]}; expected {VERSION}")
    try:
        return MessageType(data[1])
    except ValueError:
        raise MessageError(f"unknown message type {data[1]}") from None


def decode_message(data: bytes) -> Message:
    """Decode any message, dispatching on its type byte.

    Raises
    ------
    MessageError
        For every malformed input; no other exception escapes.

    Examples
    --------
    >>> msg = UnmaskRequest(bytes(16), 3, (1, 3), (2,))
    >>> decode_message(msg.to_bytes()) == msg
    True
    """
    return _CLASSES[peek_type(data)].from_bytes(data)
