"""Fuzzing every decoder and both state machines: only MessageError (or ProtocolAbort)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import MessageError, ProtocolAbort
from protocols.secagg import PROTOCOL_STAGES, Stage, decode_message
from protocols.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    MessageType,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

DECODERS: list[Callable[[bytes], object]] = [
    decode_message,
    AdvertiseKeys.from_bytes,
    KeyDirectory.from_bytes,
    ShareKeys.from_bytes,
    ShareDelivery.from_bytes,
    MaskedInput.from_bytes,
    UnmaskRequest.from_bytes,
    UnmaskResponse.from_bytes,
]


@pytest.fixture(scope="module")
def valid_messages(make_round: Callable[..., Any]) -> list[bytes]:
    r = make_round(n=5, d=4, seed=21, dropouts={Stage.MASKED_INPUT: {3}}, sign_advertisements=True)
    r.finish()
    msgs = [m for table in (r.sent, r.received) for per in table.values() for m in per.values()]
    assert {MessageType(m[1]) for m in msgs} == set(MessageType)
    return msgs


def _decode_all(data: bytes) -> None:
    for decoder in DECODERS:
        with contextlib.suppress(MessageError):
            decoder(data)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_library_errors(data: bytes) -> None:
    _decode_all(data)


@settings(max_examples=400, deadline=None)
@given(
    prefix=st.sampled_from([1]),
    msg_type=st.integers(0, 9),
    rest=st.binary(min_size=0, max_size=300),
)
def test_random_bodies_with_plausible_header_raise_only_library_errors(
    prefix: int, msg_type: int, rest: bytes
) -> None:
    _decode_all(bytes([prefix, msg_type]) + rest)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
)


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, val in ops:
        if not buf:
            break
        p = pos % len(buf)
        if op == "flip":
            buf[p] ^= val
        elif op == "truncate":
            del buf[p:]
        elif op == "insert":
            buf.insert(p, val)
        else:
            del buf[p]
    return bytes(buf)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), ops=st.lists(mutations, min_size=1, max_size=4))
def test_mutated_valid_messages_raise_only_library_errors(
    valid_messages: list[bytes], data: st.DataObject, ops: list[tuple[str, int, int]]
) -> None:
    original = data.draw(st.sampled_from(valid_messages))
    _decode_all(_mutate(original, ops))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    stage=st.sampled_from(PROTOCOL_STAGES),
    ops=st.lists(mutations, min_size=1, max_size=3),
)
def test_state_machines_raise_only_library_errors_on_mutated_input(
    make_round: Callable[..., Any],
    valid_messages: list[bytes],
    data: st.DataObject,
    stage: Stage,
    ops: list[tuple[str, int, int]],
) -> None:
    r = make_round(n=5, d=4, seed=21, dropouts={Stage.MASKED_INPUT: {3}}, sign_advertisements=True)
    r.run_to(stage)
    bad = _mutate(data.draw(st.sampled_from(valid_messages)), ops)
    for target in (r.server.receive, r.clients[0].handle):
        with contextlib.suppress(MessageError, ProtocolAbort):
            target(bad)
