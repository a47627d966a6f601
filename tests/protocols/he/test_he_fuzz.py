"""Corrupted, truncated or forged HE objects raise MessageError — never a TenSEAL/SEAL
exception or a crash. Forged envelopes (valid digest, garbage inside) reach SEAL's own
parser, whose refusals must also come out as MessageError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import MessageError
from protocols.he import PublicContext, SecretContext
from protocols.he.envelope import EnvelopeKind, pack, unpack

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def blobs(small_device: SecretContext) -> dict[str, bytes]:
    server = small_device.public_context()
    ct = server.load_ciphertexts(small_device.encrypt([1.0, 2.0]))[0]
    return {
        "context": small_device.serialize(),
        "fresh": small_device.encrypt([1.0, 2.0, 3.0]),
        "result": server.dump_ciphertexts([server.multiply_plain(ct, [3.0], rescale=True)]),
    }


def _mutate(blob: bytes, cut: int, flips: list[int]) -> bytes:
    b = bytearray(blob[: max(0, len(blob) - cut)] if cut else blob)
    for f in flips:
        if b:
            b[f % len(b)] ^= 1 << (f % 8)
    return bytes(b)


def _reforge(blob: bytes, kind: EnvelopeKind, cut: int, flips: list[int], part: int) -> bytes:
    """The same envelope with one part corrupted *and* a recomputed digest (a forger)."""
    parts = list(unpack(blob, expected=kind))
    i = part % len(parts)
    parts[i] = _mutate(parts[i], cut, flips)
    return pack(kind, parts)


def _consume(small_device: SecretContext, server: PublicContext, data: bytes, what: str) -> None:
    try:
        if what == "context":
            PublicContext.from_bytes(data)
        elif what == "fresh":
            server.load_ciphertexts(data)
        else:
            small_device.decrypt(data)
    except MessageError:
        pass


@FUZZ
@given(
    what=st.sampled_from(["context", "fresh", "result"]),
    cut=st.integers(0, 5000),
    flips=st.lists(st.integers(0, 10**7), max_size=4),
)
def test_corrupted_or_truncated_objects_raise_message_error(
    small_device: SecretContext, blobs: dict[str, bytes], what: str, cut: int, flips: list[int]
) -> None:
    data = _mutate(blobs[what], cut, flips)
    if data != blobs[what]:
        server = small_device.public_context()
        with pytest.raises(MessageError):
            if what == "context":
                PublicContext.from_bytes(data)
            elif what == "fresh":
                server.load_ciphertexts(data)
            else:
                small_device.decrypt(data)


@FUZZ
@given(
    what=st.sampled_from(["context", "fresh", "result"]),
    cut=st.integers(0, 400),
    flips=st.lists(st.integers(0, 10**7), max_size=6),
    part=st.integers(0, 3),
)
def test_forged_envelopes_reach_seal_and_raise_only_message_error(
    small_device: SecretContext,
    blobs: dict[str, bytes],
    what: str,
    cut: int,
    flips: list[int],
    part: int,
) -> None:
    kind = EnvelopeKind.PUBLIC_CONTEXT if what == "context" else EnvelopeKind.CIPHERTEXTS
    data = _reforge(blobs[what], kind, cut, flips, part)
    _consume(small_device, small_device.public_context(), data, what)


@FUZZ
@given(garbage=st.binary(max_size=300), what=st.sampled_from(["context", "fresh", "result"]))
def test_garbage_parts_raise_only_message_error(
    small_device: SecretContext, garbage: bytes, what: str
) -> None:
    kind = EnvelopeKind.PUBLIC_CONTEXT if what == "context" else EnvelopeKind.CIPHERTEXTS
    parts = [garbage] * (4 if what == "context" else 1)
    _consume(small_device, small_device.public_context(), pack(kind, parts), what)


@FUZZ
@given(cut=st.integers(0, 300), flips=st.lists(st.integers(0, 10**7), min_size=1, max_size=6))
def test_forged_ciphertexts_that_load_are_evaluated_without_crashing(
    small_device: SecretContext, blobs: dict[str, bytes], cut: int, flips: list[int]
) -> None:
    """A forged upload that SEAL accepts is evaluated; every failure is MessageError."""
    import numpy as np

    from protocols.he import PackedMatVec

    plan = PackedMatVec(np.eye(3, 2), params=small_device.params)
    server = small_device.public_context()
    data = _reforge(blobs["fresh"], EnvelopeKind.CIPHERTEXTS, cut, flips, 0)
    try:
        ct = server.load_ciphertexts(data, count=1)[0]
        out = server.dump_ciphertexts(plan.evaluate(server, ct))
        plan.decode_output(small_device.decrypt(out))
    except MessageError:
        pass


def test_regression_transparent_results_are_library_errors(small_device: SecretContext) -> None:
    """A product by an all-zero plaintext is a transparent ciphertext, which SEAL's
    evaluator refuses with a RuntimeError: it comes out as MessageError, and a matrix
    plan with an all-zero chunk is refused when built."""
    import numpy as np

    from protocols.errors import InvalidParameterError
    from protocols.he import PackedMatVec

    server = small_device.public_context()
    ct = server.load_ciphertexts(small_device.encrypt([1.0]))[0]
    with pytest.raises(MessageError, match="transparent"):
        server.multiply_plain(ct, np.zeros(1))
    with pytest.raises(InvalidParameterError, match="all zero"):
        PackedMatVec(np.zeros((3, 2)), params=small_device.params)
