"""Security properties: what the server sees, never-both, and message rejection.

Every rejection test checks that the receiving state machine is unchanged: the
round then continues with the genuine messages and must end byte-for-byte
identical to an untouched run with the same seed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols.errors import MessageError, ProtocolAbort
from protocols.secagg import (
    PASSIVE_STAGES,
    SecAggConfig,
    ShareKind,
    Stage,
    combine_shares,
    decode_message,
    expand_mask,
    simulate_secure_sum,
)
from protocols.secagg.messages import (
    HEADER_BYTES,
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    MessageType,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from protocols.secagg.server import ServerView

# The round every rejection test perturbs: complete graph of 6, client 4 drops
# at masked input so that unmasking asks for both kinds of shares.
PARAMS: dict[str, Any] = {
    "n": 6,
    "d": 5,
    "seed": 11,
    "dropouts": {Stage.MASKED_INPUT: {4}},
    "active_security": False,
}


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _homogeneity(a: np.ndarray, b: np.ndarray) -> float:
    table = np.array([a, b], dtype=float)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


# ------------------------------------------------------------- server's view


def _attacker_residual(view: ServerView, client: int) -> np.ndarray:
    """What the server can compute about ``client`` from its view: the masked
    input minus the self mask it legitimately rebuilt (pairwise masks remain)."""
    cfg = view.config
    seed_shares: dict[int, int] = {}
    for data in view.messages(Stage.UNMASKING):
        resp = UnmaskResponse.from_bytes(data)
        for owner, value in resp.mask_seed_shares:
            if owner == client:
                seed_shares[resp.sender] = value
    seed = combine_shares(seed_shares, threshold=cfg.t)
    masked = decode_message(view.by_stage()[Stage.MASKED_INPUT][client])
    values = masked.values().astype(np.uint64)  # type: ignore[union-attr]
    mask = expand_mask(seed, cfg.vector_length, cfg.encoder.dtype).astype(np.uint64)
    return (values - mask) % np.uint64(1 << cfg.modulus_bits)


def test_masked_inputs_look_uniform() -> None:
    d = 8192
    res = simulate_secure_sum([np.zeros(d)] * 3, seed=5)
    bits = res.config.modulus_bits
    for data in res.server_view.messages(Stage.MASKED_INPUT):
        values = decode_message(data).values()  # type: ignore[union-attr]
        for shift in (0, bits - 8):
            counts = np.bincount((values >> shift) & 0xFF, minlength=256)
            assert _chi2(counts) < 355  # chi2(255) 0.9999 quantile ~ 355
    residual = _attacker_residual(res.server_view, 0)
    assert _chi2(np.bincount((residual >> (bits - 8)) & 0xFF, minlength=256)) < 355


def test_same_sum_inputs_give_indistinguishable_views() -> None:
    d = 128
    a = [np.full(d, -1.0), np.full(d, 1.0), np.zeros(d)]
    b = [np.full(d, 1.0), np.full(d, -1.0), np.zeros(d)]
    hist: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    sums = []
    for seed in range(60):
        for name, inputs in (("a", a), ("b", b)):
            res = simulate_secure_sum(inputs, seed=seed)
            sums.append(res.sum)
            bits = res.config.modulus_bits
            hist[name].append(
                np.bincount(
                    (_attacker_residual(res.server_view, 0) >> (bits - 6)) & 0x3F, minlength=64
                )
            )
    ha, hb = sum(hist["a"]), sum(hist["b"])
    # Both uniform and homogeneous with each other (df = 63; 0.9999 quantile ~ 111).
    assert _chi2(ha) < 111 and _chi2(hb) < 111
    assert _homogeneity(ha, hb) < 111
    # ...while the sum is the same (zero) for both.
    assert all(np.all(np.abs(s) <= 3 * 2 / 65535) for s in sums)


@pytest.mark.parametrize(("n", "active"), [(12, False), (16, True)])
def test_server_never_receives_both_secrets_of_a_client(n: int, active: bool) -> None:
    inputs = list(np.random.default_rng(0).uniform(-1, 1, size=(n, 4)))
    res = simulate_secure_sum(
        inputs,
        config=SecAggConfig(n_clients=n, vector_length=4, active_security=active),
        seed=2,
        dropouts={"share_keys": {1}, "masked_input": {2, 3}, "unmasking": {5}},
    )
    seed_owners: set[int] = set()
    key_owners: set[int] = set()
    for data in res.server_view.messages(Stage.UNMASKING):
        resp = UnmaskResponse.from_bytes(data)
        seed_owners |= {o for o, _ in resp.mask_seed_shares}
        key_owners |= {o for o, _ in resp.key_shares}
    assert not seed_owners & key_owners
    assert seed_owners == set(res.survivors)
    assert key_owners == {2, 3}


def test_client_refuses_to_reveal_both_secrets(make_round: Callable[..., Any]) -> None:
    r = make_round(**PARAMS)
    r.run_to(Stage.UNMASKING)
    i = 0
    genuine = r.outgoing[i]
    first = r.clients[i].handle(genuine)
    # A retried identical request gets the identical answer.
    assert r.clients[i].handle(genuine) == first
    req = UnmaskRequest.from_bytes(genuine)
    assert 4 in req.dropped
    assert r.clients[i].revealed[4] is ShareKind.MASKING_KEY
    # Moving client 4 to the survivors would reveal its self-mask seed share too.
    flipped = UnmaskRequest(
        req.round_id, i, tuple(sorted((*req.survivors, 4))), tuple(x for x in req.dropped if x != 4)
    ).to_bytes()
    with pytest.raises(
        MessageError, match="refuses to reveal the self-mask seed share of client 4"
    ):
        r.clients[i].handle(flipped)
    # Moving a survivor to the dropped list is refused the same way.
    v = next(s for s in req.survivors if s != i)
    flipped2 = UnmaskRequest(
        req.round_id,
        i,
        tuple(s for s in req.survivors if s != v),
        tuple(sorted((*req.dropped, v))),
    ).to_bytes()
    with pytest.raises(MessageError, match=f"masking key share of client {v}"):
        r.clients[i].handle(flipped2)
    assert r.clients[i].revealed == {
        **dict.fromkeys(req.survivors, ShareKind.MASK_SEED),
        4: ShareKind.MASKING_KEY,
    }


def test_request_listing_a_client_on_both_sides_is_rejected_at_decoding() -> None:
    body = struct.pack(">III", 1, 2, 1) + struct.pack(">I", 2)
    header = struct.pack(
        ">BB16sIII", 1, MessageType.UNMASK_REQUEST, bytes(16), 0xFFFFFFFF, 0, len(body)
    )
    with pytest.raises(MessageError, match="both survivor and dropped"):
        decode_message(header + body)


def test_abort_reveals_nothing(make_round: Callable[..., Any]) -> None:
    # Too few survivors at masked input: the server aborts before asking anyone
    # for a share, so no client reveals anything.
    r = make_round(n=6, d=3, seed=1, dropouts={Stage.MASKED_INPUT: {0, 1, 2}})
    r.run_to(Stage.MASKED_INPUT)
    r.deliver(r.client_replies())
    with pytest.raises(ProtocolAbort, match="only 3 clients sent masked inputs"):
        r.server.advance()
    assert not r.server.view.messages(Stage.UNMASKING)
    assert all(not c.revealed for c in r.clients)


# ------------------------------------------------------ rejection machinery


@pytest.fixture(scope="module")
def reference(make_round: Callable[..., Any]) -> Any:
    r = make_round(**PARAMS)
    result = r.finish()
    return r, result


@pytest.fixture(scope="module")
def other_round(make_round: Callable[..., Any]) -> Any:
    """Same parameters, another round (different round id, keys, masks)."""
    r = make_round(**{**PARAMS, "seed": 12})
    r.finish()
    return r


def _assert_same_outcome(r: Any, reference: Any) -> None:
    ref_round, ref_result = reference
    result = r.finish()
    assert r.server.view.received == ref_round.server.view.received
    np.testing.assert_array_equal(result.sum, ref_result.sum)


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def _set_header(
    data: bytes,
    *,
    sender: int | None = None,
    receiver: int | None = None,
    round_id: bytes | None = None,
) -> bytes:
    version, mtype, rid, snd, rcv, blen = struct.unpack_from(">BB16sIII", data)
    return (
        struct.pack(
            ">BB16sIII",
            version,
            mtype,
            rid if round_id is None else round_id,
            snd if sender is None else sender,
            rcv if receiver is None else receiver,
            blen,
        )
        + data[HEADER_BYTES:]
    )


# Tamperers for client -> server messages: (replies of the stage, other round) -> bad bytes.
_Tamper = Callable[[dict[int, bytes], Any, Stage], bytes]

SERVER_TAMPERS: dict[str, _Tamper] = {
    "truncated_by_one": lambda rep, o, s: rep[0][:-1],
    "truncated_header": lambda rep, o, s: rep[0][: HEADER_BYTES - 3],
    "extended": lambda rep, o, s: rep[0] + b"\x00",
    "bad_version": lambda rep, o, s: b"\x02" + rep[0][1:],
    "unknown_type": lambda rep, o, s: rep[0][:1] + b"\x63" + rep[0][2:],
    "body_length_lie": lambda rep, o, s: (
        rep[0][:26] + struct.pack(">I", len(rep[0]) - HEADER_BYTES + 1) + rep[0][HEADER_BYTES:]
    ),
    "replayed_from_other_round": lambda rep, o, s: o.sent[s][0],
    "other_round_id_in_header": lambda rep, o, s: _set_header(rep[0], round_id=bytes(16)),
    "addressed_to_a_client": lambda rep, o, s: _set_header(rep[0], receiver=1),
    "unknown_sender_id": lambda rep, o, s: _set_header(rep[0], sender=77),
    "sender_is_server": lambda rep, o, s: _set_header(rep[0], sender=0xFFFFFFFF),
    "empty": lambda rep, o, s: b"",
}


@pytest.mark.parametrize("stage", PASSIVE_STAGES)
@pytest.mark.parametrize("kind", sorted(SERVER_TAMPERS))
def test_server_rejects_bad_client_messages_and_is_unchanged(
    stage: Stage, kind: str, reference: Any, make_round: Callable[..., Any], other_round: Any
) -> None:
    r = make_round(**PARAMS)
    r.run_to(stage)
    replies = r.client_replies()
    bad = SERVER_TAMPERS[kind](replies, other_round, stage)
    before = (r.server.stage, r.server.view, r.server.expected_senders())
    with pytest.raises(MessageError):
        r.server.receive(bad)
    assert (r.server.stage, r.server.view, r.server.expected_senders()) == before
    r.deliver(replies)
    r.advance()
    _assert_same_outcome(r, reference)


def _server_semantic_tampers(stage: Stage, rep: dict[int, bytes]) -> dict[str, bytes]:
    m = rep[0]
    out: dict[str, bytes] = {}
    if stage is Stage.ADVERTISE_KEYS:
        # Sent as client 5, after clients 0-4 have advertised.
        ad = AdvertiseKeys.from_bytes(rep[5])
        first = AdvertiseKeys.from_bytes(rep[0])
        rid = ad.round_id
        out["reused_public_key"] = AdvertiseKeys(
            rid, 5, first.encryption_key, ad.masking_key
        ).to_bytes()
        out["unexpected_tags"] = AdvertiseKeys(
            rid, 5, ad.encryption_key, ad.masking_key, ((0, bytes(32)),)
        ).to_bytes()
        out["equal_keys"] = AdvertiseKeys(rid, 5, ad.masking_key, ad.masking_key).to_bytes()
        out["forged_duplicate_sender"] = _set_header(rep[5], sender=0)
    elif stage is Stage.SHARE_KEYS:
        sk = ShareKeys.from_bytes(m)
        out["missing_receiver"] = ShareKeys(sk.round_id, 0, sk.ciphertexts[1:]).to_bytes()
        out["share_to_itself"] = ShareKeys(
            sk.round_id, 0, ((0, sk.ciphertexts[0][1]), *sk.ciphertexts[1:])
        ).to_bytes()
        out["forged_sender"] = _set_header(m, sender=1)
        out["short_ciphertext"] = ShareKeys(
            sk.round_id, 0, ((sk.ciphertexts[0][0], sk.ciphertexts[0][1][:-1]), *sk.ciphertexts[1:])
        ).to_bytes()
        out["unsorted_receivers"] = ShareKeys(
            sk.round_id, 0, tuple(reversed(sk.ciphertexts))
        ).to_bytes()
    elif stage is Stage.MASKED_INPUT:
        mi = MaskedInput.from_bytes(m)
        data = bytes(mi.data)
        out["wrong_length"] = MaskedInput(mi.round_id, 0, mi.modulus_bits, data[:-4]).to_bytes()
        out["wrong_modulus"] = MaskedInput(mi.round_id, 0, 32, data).to_bytes()
        out["word_not_reduced"] = m[:-1] + b"\xff"
        out["wrong_word_size"] = m[: HEADER_BYTES + 1] + b"\x08" + m[HEADER_BYTES + 2 :]
    else:
        resp = UnmaskResponse.from_bytes(m)
        out["missing_share"] = UnmaskResponse(
            resp.round_id, 0, resp.mask_seed_shares[1:], resp.key_shares
        ).to_bytes()
        out["seed_share_of_dropped"] = UnmaskResponse(
            resp.round_id, 0, resp.mask_seed_shares, ()
        ).to_bytes()
        out["both_secrets"] = UnmaskResponse(
            resp.round_id, 0, resp.mask_seed_shares, ((resp.mask_seed_shares[0][0], 5),)
        ).to_bytes()
        out["share_not_field_element"] = m[:-33] + b"\xff" * 33
    return out


@pytest.mark.parametrize("stage", PASSIVE_STAGES)
def test_server_rejects_protocol_violations_and_duplicates(
    stage: Stage, reference: Any, make_round: Callable[..., Any]
) -> None:
    r = make_round(**PARAMS)
    r.run_to(stage)
    replies = r.client_replies()
    early = {k: v for k, v in replies.items() if k != 5} if stage is Stage.ADVERTISE_KEYS else {}
    r.deliver(early)
    for name, bad in _server_semantic_tampers(stage, replies).items():
        before = r.server.view
        with pytest.raises(MessageError):
            r.server.receive(bad)
        assert r.server.view == before, name
    r.deliver({k: v for k, v in replies.items() if k not in early})
    with pytest.raises(MessageError, match="duplicate"):
        r.server.receive(replies[0])
    r.advance()
    _assert_same_outcome(r, reference)


def _client_tampers(stage: Stage, r: Any, o: Any) -> dict[str, bytes]:
    i = 0
    m = r.outgoing[i]
    out: dict[str, bytes] = {
        "truncated": m[:-1],
        "extended": m + b"\x00",
        "replayed_from_other_round": o.received[stage][i],
        "rerouted_to_other_client": r.outgoing[1],
        "other_round_id_in_header": _set_header(m, round_id=bytes(16)),
        "sent_by_a_client": _set_header(m, sender=2),
    }
    if stage is Stage.SHARE_KEYS:
        kd = KeyDirectory.from_bytes(m)
        other = KeyDirectory.from_bytes(r.outgoing[1])
        out["rerouted_with_rewritten_receiver"] = KeyDirectory(
            kd.round_id, i, other.advertisements
        ).to_bytes()
        swapped = AdvertiseKeys(
            kd.round_id,
            kd.advertisements[0].sender,
            kd.advertisements[1].encryption_key,
            kd.advertisements[0].masking_key,
        )
        out["reused_key"] = KeyDirectory(
            kd.round_id, i, (swapped, *kd.advertisements[1:])
        ).to_bytes()
    elif stage is Stage.MASKED_INPUT:
        sd = ShareDelivery.from_bytes(m)
        (s0, c0), (s1, c1) = sd.ciphertexts[:2]
        out["bit_flip_in_ciphertext"] = ShareDelivery(
            sd.round_id, i, ((s0, _flip(c0, 40)), *sd.ciphertexts[1:])
        ).to_bytes()
        out["bit_flip_in_tag"] = ShareDelivery(
            sd.round_id, i, ((s0, _flip(c0, len(c0) - 1)), *sd.ciphertexts[1:])
        ).to_bytes()
        out["swapped_senders"] = ShareDelivery(
            sd.round_id, i, ((s0, c1), (s1, c0), *sd.ciphertexts[2:])
        ).to_bytes()
        other = ShareDelivery.from_bytes(r.outgoing[1])
        out["rerouted_with_rewritten_receiver"] = _set_header(r.outgoing[1], receiver=i)
        out["ciphertext_from_other_round"] = ShareDelivery(
            sd.round_id,
            i,
            (
                (s0, ShareDelivery.from_bytes(o.received[stage][i]).ciphertexts[0][1]),
                *sd.ciphertexts[1:],
            ),
        ).to_bytes()
        out["non_neighbour_sender"] = (
            ShareDelivery(
                sd.round_id,
                i,
                (*sd.ciphertexts, (5 if 5 not in {s for s, _ in sd.ciphertexts} else 4, c0)),
            ).to_bytes()
            if len(other.ciphertexts)
            else b""
        )
    else:
        req = UnmaskRequest.from_bytes(m)
        out["self_listed_dropped"] = UnmaskRequest(
            req.round_id, i, req.survivors[1:], tuple(sorted((*req.dropped, i)))
        ).to_bytes()
        out["missing_owner"] = UnmaskRequest(
            req.round_id, i, req.survivors[:-1], req.dropped
        ).to_bytes()
        out["unknown_owner"] = UnmaskRequest(
            req.round_id, i, req.survivors, tuple(sorted((*req.dropped, 99)))
        ).to_bytes()
    return {k: v for k, v in out.items() if v}


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING])
def test_client_rejects_bad_server_messages_and_is_unchanged(
    stage: Stage, reference: Any, make_round: Callable[..., Any], other_round: Any
) -> None:
    r = make_round(**PARAMS)
    r.run_to(stage)
    tampers = _client_tampers(stage, r, other_round)
    assert len(tampers) >= 7

    def inject(i: int, client: Any) -> None:
        if i != 0:
            return
        for name, bad in tampers.items():
            before = (client.stage, client.revealed)
            with pytest.raises(MessageError):
                client.handle(bad)
            assert (client.stage, client.revealed) == before, name

    r.deliver(r.client_replies(before_client=inject))
    r.advance()
    _assert_same_outcome(r, reference)


def test_authenticated_advertisements_reject_forgeries(make_round: Callable[..., Any]) -> None:
    r = make_round(n=5, d=3, seed=3, sign_advertisements=True, active_security=False)
    replies = r.client_replies()
    ad = AdvertiseKeys.from_bytes(replies[0])
    # The server checks who the tags are addressed to (it cannot check the tags:
    # they are keyed for the neighbours).
    untagged = AdvertiseKeys(ad.round_id, 0, ad.encryption_key, ad.masking_key).to_bytes()
    with pytest.raises(MessageError, match="one advertisement tag to each neighbour"):
        r.server.receive(untagged)
    r.deliver(replies)
    r.advance()
    kd = KeyDirectory.from_bytes(r.outgoing[0])
    assert all(len(a.tags) == 1 and a.tags[0][0] == 0 for a in kd.advertisements)
    victim = kd.advertisements[1]
    cases = {
        # A malicious server substitutes client 2's masking key in client 0's directory.
        "substituted key": AdvertiseKeys(
            victim.round_id, victim.sender, victim.encryption_key, bytes(range(1, 33)), victim.tags
        ),
        # ... or forwards the tag another client got.
        "tag of another receiver": AdvertiseKeys(
            victim.round_id,
            victim.sender,
            victim.encryption_key,
            victim.masking_key,
            ((0, AdvertiseKeys.from_bytes(replies[victim.sender]).tags[-1][1]),),
        ),
        "no tag": AdvertiseKeys(
            victim.round_id, victim.sender, victim.encryption_key, victim.masking_key
        ),
    }
    for name, evil in cases.items():
        bad = KeyDirectory(
            kd.round_id, 0, (kd.advertisements[0], evil, *kd.advertisements[2:])
        ).to_bytes()
        before = r.clients[0]._state()
        with pytest.raises(MessageError, match=r"authenticator tag|carries no tag"):
            r.clients[0].handle(bad)
        assert r.clients[0]._state() == before, name
    r.finish()


# ------------------------------------------ every (expected, received) stage pair


_CLIENT_EXPECTS = {
    False: {
        Stage.ADVERTISE_KEYS: None,
        Stage.SHARE_KEYS: MessageType.KEY_DIRECTORY,
        Stage.MASKED_INPUT: MessageType.SHARE_DELIVERY,
        Stage.UNMASKING: MessageType.UNMASK_REQUEST,
    },
    True: {
        Stage.ADVERTISE_KEYS: None,
        Stage.SHARE_KEYS: MessageType.KEY_DIRECTORY,
        Stage.MASKED_INPUT: MessageType.SHARE_DELIVERY,
        Stage.CONSISTENCY_CHECK: MessageType.CONSISTENCY_REQUEST,
        Stage.UNMASKING: MessageType.FORWARDED_VOTES,
    },
}
_SERVER_EXPECTS = {
    False: {
        Stage.ADVERTISE_KEYS: MessageType.ADVERTISE_KEYS,
        Stage.SHARE_KEYS: MessageType.SHARE_KEYS,
        Stage.MASKED_INPUT: MessageType.MASKED_INPUT,
        Stage.UNMASKING: MessageType.UNMASK_RESPONSE,
        Stage.DONE: None,
    },
    True: {
        Stage.ADVERTISE_KEYS: MessageType.ADVERTISE_KEYS,
        Stage.SHARE_KEYS: MessageType.SHARE_KEYS,
        Stage.MASKED_INPUT: MessageType.MASKED_INPUT,
        Stage.CONSISTENCY_CHECK: MessageType.CONSISTENCY_VOTE,
        Stage.UNMASKING: MessageType.UNMASK_RESPONSE,
        Stage.DONE: None,
    },
}
_PAIR_PARAMS: dict[str, Any] = {"n": 6, "d": 5, "seed": 11, "dropouts": {Stage.MASKED_INPUT: {4}}}


@pytest.fixture(scope="module")
def samples(make_round: Callable[..., Any]) -> dict[MessageType, bytes]:
    """One message of every type, from a finished passive and a finished active round."""
    out: dict[MessageType, bytes] = {}
    for active in (False, True):
        r = make_round(**_PAIR_PARAMS, active_security=active)
        r.finish()
        for table in (r.sent, r.received):
            for msgs in table.values():
                data = msgs[0]
                decode_message(data)
                out[MessageType(data[1])] = data
    assert set(out) == set(MessageType)
    return out


_CLIENT_PAIRS = [(a, s) for a in (False, True) for s in _CLIENT_EXPECTS[a]]
_SERVER_PAIRS = [(a, s) for a in (False, True) for s in _SERVER_EXPECTS[a]]


@pytest.mark.parametrize(("active", "stage"), _CLIENT_PAIRS)
@pytest.mark.parametrize("msg_type", list(MessageType))
def test_client_checks_every_stage_pair(
    active: bool,
    stage: Stage,
    msg_type: MessageType,
    samples: dict[MessageType, bytes],
    make_round: Callable[..., Any],
) -> None:
    sample = samples[msg_type]
    r = make_round(**_PAIR_PARAMS, active_security=active)
    r.run_to(stage)
    client = r.clients[0]
    if _CLIENT_EXPECTS[active][stage] is msg_type:
        # The expected type from the same round is accepted (as its own message).
        client.handle(r.outgoing[0])
        return
    before = client._state()
    if active and stage is Stage.UNMASKING and msg_type is MessageType.CONSISTENCY_REQUEST:
        # The identical survivor sets again (same seed, same round): the client
        # re-sends the signature it already gave, nothing else.
        assert client.handle(sample) == r.sent[Stage.CONSISTENCY_CHECK][0]
    else:
        with pytest.raises(MessageError, match="expects"):
            client.handle(sample)
    assert client._state() == before
    if stage is not Stage.ADVERTISE_KEYS:
        with pytest.raises(MessageError, match="belongs to stage 'advertise_keys'"):
            client.advertise_keys()


@pytest.mark.parametrize(("active", "stage"), _SERVER_PAIRS)
@pytest.mark.parametrize("msg_type", list(MessageType))
def test_server_checks_every_stage_pair(
    active: bool,
    stage: Stage,
    msg_type: MessageType,
    samples: dict[MessageType, bytes],
    make_round: Callable[..., Any],
) -> None:
    sample = samples[msg_type]
    r = make_round(**_PAIR_PARAMS, active_security=active)
    if stage is Stage.DONE:
        r.finish()
    else:
        r.run_to(stage)
    if _SERVER_EXPECTS[active][stage] is msg_type:
        r.server.receive(r.client_replies()[0])
        return
    before = r.server._state()
    with pytest.raises(MessageError, match="expects"):
        r.server.receive(sample)
    assert r.server.stage is stage and r.server._state() == before
