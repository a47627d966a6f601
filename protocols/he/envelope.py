"""The versioned, length-checked envelope every HE object travels in.

Layout (big-endian)::

    magic    4 B   b"SRHE"
    version  u8    = 1
    kind     u8    EnvelopeKind
    parts    u16   number of parts
    body_len u32   exact length of the body
    digest   32 B  SHA-256 of (magic .. body_len) || body
    body     { len:u32 part[len] } * parts

The digest catches corruption (a flipped bit, a truncated download) before any byte
reaches the SEAL parser; it is an integrity check, not an authenticator — a peer that
forges an envelope passes it, and then SEAL's own validation (parameters id, sizes,
ranges) refuses malformed objects, still as :class:`~protocols.errors.MessageError`.
:func:`unpack` never raises anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Final

from cryptography.hazmat.primitives import hashes

from protocols.errors import MessageError

__all__ = ["DIGEST_BYTES", "HEADER_BYTES", "MAGIC", "MAX_ENVELOPE_BYTES", "VERSION", "EnvelopeKind"]

MAGIC: Final = b"SRHE"
VERSION: Final = 1
DIGEST_BYTES: Final = 32
_HEADER: Final = struct.Struct(">4sBBHI")
HEADER_BYTES: Final = _HEADER.size + DIGEST_BYTES
_LEN: Final = struct.Struct(">I")
#: Envelopes above this size are refused before parsing (a public context with
#: every Galois key at N = 16384 is ~150 MB).
MAX_ENVELOPE_BYTES: Final = 256 * 2**20


class EnvelopeKind(IntEnum):
    """What an envelope holds."""

    PUBLIC_CONTEXT = 1
    """Parameters, relinearisation and Galois keys: what a server may hold."""
    SECRET_CONTEXT = 2
    """The same plus the secret key: a device's own keys, never sent to a server."""
    CIPHERTEXTS = 3
    """One or more ciphertexts under one context."""


def _digest(header: bytes, body: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(header)
    h.update(body)
    return h.finalize()


def pack(kind: EnvelopeKind, parts: Sequence[bytes]) -> bytes:
    """Wrap ``parts`` in an envelope of ``kind``."""
    if len(parts) > 0xFFFF:
        raise MessageError(f"an envelope holds at most 65535 parts; got {len(parts)}")
    body = b"".join(_LEN.pack(len(p)) + bytes(p) for p in parts)
    if _HEADER.size + DIGEST_BYTES + len(body) > MAX_ENVELOPE_BYTES:
        raise MessageError(
            f"an envelope of {len(body)} body bytes exceeds MAX_ENVELOPE_BYTES = {MAX_ENVELOPE_BYTES}"
        )
    header = _HEADER.pack(MAGIC, VERSION, int(kind), len(parts), len(body))
    return header + _digest(header, body) + body


def peek_kind(data: bytes) -> EnvelopeKind:
    """The kind of an envelope, after checking only its magic and version."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"an HE envelope must be bytes; got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise MessageError(f"an HE envelope needs {HEADER_BYTES} header bytes; got {len(data)}")
    magic, version, kind, _, _ = _HEADER.unpack_from(bytes(data[: _HEADER.size]))
    if magic != MAGIC:
        raise MessageError(f"not an HE envelope: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MessageError(
            f"unsupported HE envelope version {version}; this library reads {VERSION}"
        )
    try:
        return EnvelopeKind(kind)
    except ValueError:
        raise MessageError(f"unknown HE envelope kind {kind}") from None


def unpack(data: bytes, *, expected: EnvelopeKind) -> tuple[bytes, ...]:
    """The parts of an envelope of kind ``expected``.

    Raises
    ------
    MessageError
        Not bytes, too short or too long, wrong magic / version / kind, a body length
        or part lengths that disagree with the bytes, or a digest mismatch.
    """
    kind = peek_kind(data)
    raw = bytes(data)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise MessageError(f"HE envelope of {len(raw)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    if kind is not expected:
        raise MessageError(f"expected an HE envelope of kind {expected.name}; got {kind.name}")
    if len(raw) < HEADER_BYTES:
        raise MessageError(f"an HE envelope needs {HEADER_BYTES} header bytes; got {len(raw)}")
    header = raw[: _HEADER.size]
    _, _, _, count, body_len = _HEADER.unpack(header)
    digest = raw[_HEADER.size : HEADER_BYTES]
    body = raw[HEADER_BYTES:]
    if len(body) != body_len:
        raise MessageError(
            f"HE envelope body has {len(body)} bytes; the header announces {body_len} (truncated?)"
        )
    if _digest(header, body) != digest:
        raise MessageError("HE envelope digest mismatch: the bytes were corrupted in transit")
    parts: list[bytes] = []
    pos = 0
    for i in range(count):
        if len(body) - pos < _LEN.size:
            raise MessageError(f"HE envelope part {i} has no length field")
        (n,) = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        if n > len(body) - pos:
            raise MessageError(
                f"HE envelope part {i} announces {n} bytes; {len(body) - pos} remain"
            )
        parts.append(body[pos : pos + n])
        pos += n
    if pos != len(body):
        raise MessageError(f"HE envelope has {len(body) - pos} trailing bytes after {count} parts")
    return tuple(parts)
