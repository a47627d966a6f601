"""Fuzzing every decoder and both state machines: only MessageError (or ProtocolAbort),
and a rejected message (MessageError) leaves the receiver's state unchanged."""

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
    ConsistencyRequest,
    ConsistencyVote,
    ForwardedVotes,
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
    ConsistencyRequest.from_bytes,
    ConsistencyVote.from_bytes,
    ForwardedVotes.from_bytes,
]


@pytest.fixture(scope="module")
def valid_messages(make_round: Callable[..., Any]) -> list[bytes]:
    msgs = []
    for active in (False, True):
        r = make_round(
            n=5,
            d=4,
            seed=21,
            dropouts={Stage.MASKED_INPUT: {3}},
            sign_advertisements=True,
            active_security=active,
        )
        r.finish()
        msgs += [
            m for table in (r.sent, r.received) for per in table.values() for m in per.values()
        ]
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
    active=st.booleans(),
)
def test_state_machines_raise_only_library_errors_on_mutated_input(
    make_round: Callable[..., Any],
    valid_messages: list[bytes],
    data: st.DataObject,
    stage: Stage,
    ops: list[tuple[str, int, int]],
    active: bool,
) -> None:
    if not active and stage is Stage.CONSISTENCY_CHECK:
        stage = Stage.UNMASKING
    r = make_round(
        n=5,
        d=4,
        seed=21,
        dropouts={Stage.MASKED_INPUT: {3}},
        sign_advertisements=True,
        active_security=active,
    )
    r.run_to(stage)
    bad = _mutate(data.draw(st.sampled_from(valid_messages)), ops)
    for target, owner in ((r.server.receive, r.server), (r.clients[0].handle, r.clients[0])):
        before = owner._state()
        try:
            target(bad)
        except MessageError:
            assert owner._state() == before  # rejected: nothing changed
        except ProtocolAbort:
            pass


# --------------------------------------------- the consistency-check messages

_SETS = st.integers(2, 70).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.sets(st.integers(0, n - 1)),
        st.sets(st.integers(0, n - 1)),
    )
)


@settings(max_examples=200, deadline=None)
@given(sets=_SETS, receiver=st.integers(0, 1000), rid=st.binary(min_size=16, max_size=16))
def test_consistency_request_round_trips(
    sets: tuple[int, set[int], set[int]], receiver: int, rid: bytes
) -> None:
    n, a, b = sets
    shared, survivors = tuple(sorted(a | b)), tuple(sorted(b))
    msg = ConsistencyRequest(rid, receiver, n, shared, survivors)
    assert decode_message(msg.to_bytes()) == msg


@settings(max_examples=200, deadline=None)
@given(
    peers=st.lists(st.integers(0, 2**20), unique=True, max_size=20),
    receiver=st.integers(2**20 + 1, 2**21),
    data=st.data(),
)
def test_vote_messages_round_trip(peers: list[int], receiver: int, data: st.DataObject) -> None:
    tags = tuple((s, data.draw(st.binary(min_size=32, max_size=32))) for s in sorted(peers))
    fwd = ForwardedVotes(bytes(16), receiver, tags)
    assert decode_message(fwd.to_bytes()) == fwd
    vote = ConsistencyVote(bytes(16), receiver, tags)
    assert decode_message(vote.to_bytes()) == vote


@settings(max_examples=300, deadline=None)
@given(
    msg_type=st.sampled_from(
        [
            MessageType.CONSISTENCY_REQUEST,
            MessageType.CONSISTENCY_VOTE,
            MessageType.FORWARDED_VOTES,
        ]
    ),
    body=st.binary(max_size=200),
    sender=st.sampled_from([0, 1, 0xFFFFFFFF]),
    receiver=st.sampled_from([0, 1, 0xFFFFFFFF]),
)
def test_new_message_bodies_raise_only_library_errors(
    msg_type: MessageType, body: bytes, sender: int, receiver: int
) -> None:
    import struct

    data = struct.pack(">BB16sIII", 1, msg_type, bytes(16), sender, receiver, len(body)) + body
    _decode_all(data)
