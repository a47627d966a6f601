"""The HE envelope: round trip, and only MessageError for anything malformed."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import MessageError
from protocols.he.envelope import HEADER_BYTES, MAGIC, EnvelopeKind, pack, peek_kind, unpack

PARTS = (b"alpha", b"", b"\x00" * 300)


def test_round_trip() -> None:
    blob = pack(EnvelopeKind.CIPHERTEXTS, PARTS)
    assert blob.startswith(MAGIC) and peek_kind(blob) is EnvelopeKind.CIPHERTEXTS
    assert unpack(blob, expected=EnvelopeKind.CIPHERTEXTS) == PARTS
    assert unpack(pack(EnvelopeKind.PUBLIC_CONTEXT, []), expected=EnvelopeKind.PUBLIC_CONTEXT) == ()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "header"),
        (lambda b: b + b"x", "announces"),
        (
            lambda b: b[:HEADER_BYTES] + bytes([b[HEADER_BYTES] ^ 1]) + b[HEADER_BYTES + 1 :],
            "digest",
        ),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x09" + b[5:], "version"),
        (lambda b: b[:5] + b"\x63" + b[6:], "kind"),
        (lambda b: b[:5] + bytes([EnvelopeKind.PUBLIC_CONTEXT]) + b[6:], "expected an HE envelope"),
    ],
)
def test_malformed_envelopes_are_refused_with_the_reason(mutate, match: str) -> None:
    blob = pack(EnvelopeKind.CIPHERTEXTS, PARTS)
    with pytest.raises(MessageError, match=match):
        unpack(mutate(blob), expected=EnvelopeKind.CIPHERTEXTS)


def test_non_bytes_are_refused() -> None:
    with pytest.raises(MessageError, match="must be bytes"):
        unpack("SRHE", expected=EnvelopeKind.CIPHERTEXTS)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    for kind in EnvelopeKind:
        with contextlib.suppress(MessageError):
            unpack(data, expected=kind)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=40), max_size=4),
    cut=st.integers(min_value=0, max_value=400),
    flip=st.integers(min_value=0, max_value=400 * 8),
)
def test_truncated_or_flipped_envelopes_raise_only_message_error(
    parts: list[bytes], cut: int, flip: int
) -> None:
    blob = bytearray(pack(EnvelopeKind.CIPHERTEXTS, parts))
    if cut < len(blob):
        with pytest.raises(MessageError):
            unpack(bytes(blob[:cut]), expected=EnvelopeKind.CIPHERTEXTS)
    if flip // 8 < len(blob):
        blob[flip // 8] ^= 1 << (flip % 8)
        with pytest.raises(MessageError):
            unpack(bytes(blob), expected=EnvelopeKind.CIPHERTEXTS)
