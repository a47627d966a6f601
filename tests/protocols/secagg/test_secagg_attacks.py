"""The four attacks of issue 13, run against the public state machines and messages.

Each attack is first reproduced where it still works — the honest-but-curious
protocol (``active_security=False``), whose clients follow a malicious server —
and then shown to fail against the malicious-server protocol (the default): a
client refuses, or the server aborts, with a :class:`ProtocolAbort` naming the
stage, and nothing is revealed.

1. Inconsistent survivor sets (SecAgg+ graph): an integer program (scipy's
   ``milp``) chooses one individually valid unmask request per client such that
   the answers rebuild the victim's self-mask seed *and* the masking key of every
   neighbour; the victim's exact encoded input comes out.
2. Server-chosen dropouts that split the ring into two arcs: the server learns the
   sum of an arc it chose.
3. Small-order / non-canonical X25519 public keys.
4. A corrupted seed share that silently corrupts the sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy.optimize import Bounds, LinearConstraint, milp

from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from protocols.secagg import (
    SecAggClient,
    SecAggConfig,
    SecureRandom,
    Stage,
    combine_shares,
    consistency_quorum,
    expand_mask,
    separator_size,
    split_secret,
)
from protocols.secagg.crypto import (
    generate_x25519,
    load_x25519,
    pairwise_mask_seed,
    x25519_exchange,
    x25519_key_problem,
)
from protocols.secagg.graph import ring_order
from protocols.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyVote,
    ForwardedVotes,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)

Round = Any


# ------------------------------------------------------------------ helpers


def _solve_inconsistent_requests(
    graph: tuple[frozenset[int], ...], victim: int, t: int
) -> dict[int, frozenset[int]]:
    """Integer program: for every client h the set of its share owners it is told
    *survived* (the rest: dropped), such that every request is individually valid
    (h survives, at least t survivors, exact cover) while at least t holders of the
    victim reveal its self-mask seed share and, for every neighbour v of the victim,
    at least t holders of v reveal v's masking-key share."""
    n = len(graph)
    owners = {h: sorted(graph[h] | {h}) for h in range(n)}
    index = {(h, w): i for i, (h, w) in enumerate((h, w) for h in range(n) for w in owners[h])}
    nvar = len(index)
    rows, lo, hi = [], [], []

    def row(pairs: list[tuple[int, int]]) -> np.ndarray:
        r = np.zeros(nvar)
        for p in pairs:
            r[index[p]] = 1
        return r

    for h in range(n):  # each request lists at least t survivors
        rows.append(row([(h, w) for w in owners[h]]))
        lo.append(t)
        hi.append(np.inf)
    # t holders reveal the victim's self-mask seed share (victim listed as survivor)
    rows.append(row([(h, victim) for h in owners[victim]]))
    lo.append(t)
    hi.append(np.inf)
    for v in graph[victim]:  # t holders reveal each neighbour's masking-key share
        holders = sorted(graph[v])  # v itself always says "survivor"
        rows.append(row([(h, v) for h in holders]))
        lo.append(-np.inf)
        hi.append(len(holders) - t)
    lb, ub = np.zeros(nvar), np.ones(nvar)
    for h in range(n):
        lb[index[(h, h)]] = 1  # a client must be a survivor in its own request
    res = milp(
        c=-np.ones(nvar),  # as few "dropped" claims as possible (plausible requests)
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(nvar),
        bounds=Bounds(lb, ub),
    )
    assert res.status == 0, res.message
    x = np.round(res.x).astype(int)
    return {h: frozenset(w for w in owners[h] if x[index[(h, w)]]) for h in range(n)}


def _unmask_victim(r: Round, victim: int, responses: dict[int, UnmaskResponse]) -> np.ndarray:
    """What the server computes from its view: the victim's decoded input."""
    cfg, graph = r.config, r.server.graph
    seed_shares = {
        h: dict(resp.mask_seed_shares)[victim]
        for h, resp in responses.items()
        if victim in dict(resp.mask_seed_shares)
    }
    seed = combine_shares(seed_shares, threshold=cfg.t)
    ads = {i: AdvertiseKeys.from_bytes(m) for i, m in r.sent[Stage.ADVERTISE_KEYS].items()}
    masked = MaskedInput.from_bytes(r.sent[Stage.MASKED_INPUT][victim]).values().astype(np.int64)
    modulus = 1 << cfg.modulus_bits
    dtype = cfg.encoder.dtype
    value = masked - expand_mask(seed, cfg.vector_length, dtype).astype(np.int64)
    for v in graph[victim]:
        key_shares = {
            h: dict(resp.key_shares)[v]
            for h, resp in responses.items()
            if v in dict(resp.key_shares)
        }
        s_sk_v = load_x25519(combine_shares(key_shares, threshold=cfg.t))
        secret = x25519_exchange(s_sk_v, ads[victim].masking_key)
        mask = expand_mask(
            pairwise_mask_seed(secret, r.round_id, victim, v), cfg.vector_length, dtype
        ).astype(np.int64)
        value = value - mask if victim < v else value + mask
    encoded = np.mod(value, modulus)
    return encoded * cfg.encoder.step - cfg.clip_range


# ------------------------------------ attack 1: inconsistent survivor sets


def _attack_one_passive(make_round: Callable[..., Round], n: int, k: int | None) -> None:
    r = make_round(n=n, d=8, seed=5, neighbours=k, active_security=False)
    r.run_to(Stage.UNMASKING)  # the server closed masked input: every client survived
    victim = 3
    claims = _solve_inconsistent_requests(r.server.graph, victim, r.config.t)
    responses = {}
    for h, client in enumerate(r.clients):
        owners = r.server.graph[h] | {h}
        survivors = tuple(sorted(claims[h]))
        dropped = tuple(sorted(owners - claims[h]))
        request = UnmaskRequest(r.round_id, h, survivors, dropped).to_bytes()
        # Every request passes every check the client makes on its own...
        responses[h] = UnmaskResponse.from_bytes(client.handle(request))
    # ...no client revealed both secrets of any owner...
    assert all(len(set(c.revealed)) == len(c.revealed) for c in r.clients)
    # ...yet the victim's whole input comes back (within one quantization step).
    recovered = _unmask_victim(r, victim, responses)
    truth = np.clip(r.inputs[victim], -1, 1)
    assert np.all(np.abs(recovered - truth) < r.config.encoder.step * (1 + 1e-9))


def test_attack1_solver_built_requests_unmask_one_input_in_the_passive_protocol(
    make_round: Callable[..., Round],
) -> None:
    _attack_one_passive(make_round, n=40, k=12)


def test_attack1_at_n100_with_default_graph_passive(make_round: Callable[..., Round]) -> None:
    # The setting: n = 100, default k = 34, t = 18.
    _attack_one_passive(make_round, n=100, k=None)


@pytest.mark.parametrize(
    ("n", "k", "forward"),
    [(40, 12, "matching"), (40, 12, "all"), (40, 12, "own group"), (100, None, "matching")],
)
def test_attack1_fails_against_the_consistency_check(
    make_round: Callable[..., Round], n: int, k: int | None, forward: str
) -> None:
    r = make_round(n=n, d=8, seed=5, neighbours=k)
    r.run_to(Stage.MASKED_INPUT)
    r.deliver(r.client_replies())
    # The malicious server skips its own checks and tells each client the survivor
    # set the solver chose for it (the global set minus the owners it should drop).
    victim = 3
    claims = _solve_inconsistent_requests(r.server.graph, victim, r.config.t)
    everyone = tuple(range(n))

    def claims_dropped(h: int) -> set[int]:
        return set((r.server.graph[h] | {h}) - claims[h])

    votes: dict[int, tuple[dict[int, bytes], frozenset[int]]] = {}
    for h, client in enumerate(r.clients):
        survivors = tuple(sorted(set(everyone) - claims_dropped(h)))
        # "own group": the server also names the vote recipients (as the honest server
        # names voting peers), asking each client to address tags only to the clients
        # it showed the same set, to concentrate the votes of each set. Whom a tag is
        # addressed to never changes which set it vouches for, so this gains nothing.
        recipients = None
        if forward == "own group":
            recipients = tuple(
                w
                for w in survivors
                if w != h and (set(everyone) - claims_dropped(w)) == set(survivors)
            )
        request = ConsistencyRequest(r.round_id, h, n, everyone, survivors, recipients).to_bytes()
        try:
            vote = ConsistencyVote.from_bytes(client.handle(request))
            if recipients is not None:  # the client addressed exactly the named recipients
                assert [w for w, _ in vote.tags] == list(recipients)
            votes[h] = (dict(vote.tags), frozenset(survivors))
        except ProtocolAbort as exc:  # e.g. the set the solver chose splits the graph
            assert exc.stage == "consistency_check"
    groups: dict[frozenset[int], list[int]] = {}
    for h, (_, s) in votes.items():
        groups.setdefault(s, []).append(h)
    if forward == "own group":  # the server did split the clients into several sets
        assert len(groups) > 1
    # No survivor set gathers the quorum: at most one ever can.
    assert max(len(g) for g in groups.values()) < r.config.quorum
    for h, (_, s) in votes.items():
        pool = sorted(votes) if forward == "all" else groups[s]
        tags = tuple((v, votes[v][0][h]) for v in sorted(pool) if v != h and h in votes[v][0])
        bundle = ForwardedVotes(r.round_id, h, tags)
        with pytest.raises(ProtocolAbort) as info:
            r.clients[h].handle(bundle.to_bytes())
        assert info.value.stage == "unmasking"
        assert "the quorum is" in info.value.reason
        if forward == "all":
            assert "do not verify over the survivor set" in info.value.reason
    assert all(not c.revealed for c in r.clients)  # nobody revealed a single share


def _two_set_program(graph: tuple[frozenset[int], ...], victim: int, t: int, quorum: int) -> int:
    """Integer program for the strongest two-set attack on the victim: honest
    clients each sign one of D1 = everyone, D2 = everyone minus the victim (both
    pass the surviving-graph rule); up to t - 1 colluders sign both and reveal
    anything. The server needs t seed shares of the victim under D1 and t
    masking-key shares of the victim under D2, and every set must gather
    ``quorum`` signatures. Returns scipy's status (0 feasible, 2 infeasible)."""
    n = len(graph)
    # variables: a[0..n) (1: signs D1, 0: signs D2), c[0..n) colluder, s1, s2
    nv = 4 * n
    a, c, s1, s2 = (np.arange(n) + i * n for i in range(4))
    rows, lo, hi = [], [], []

    def add(coef: dict[int, float], low: float, high: float) -> None:
        r = np.zeros(nv)
        for i, v in coef.items():
            r[i] += v
        rows.append(r)
        lo.append(low)
        hi.append(high)

    for h in range(n):
        add({s1[h]: 1, a[h]: -1}, 0, np.inf)  # s1 >= a
        add({s1[h]: 1, a[h]: -1, c[h]: -1}, -np.inf, 0)  # s1 <= a + c
        add({s2[h]: 1, a[h]: 1}, 1, np.inf)  # s2 >= 1 - a
        add({s2[h]: 1, a[h]: 1, c[h]: -1}, -np.inf, 1)  # s2 <= 1 - a + c
    add({int(i): 1 for i in c}, 0, t - 1)  # at most t - 1 colluders
    add({int(i): 1 for i in s1}, quorum, np.inf)
    add({int(i): 1 for i in s2}, quorum, np.inf)
    holders = sorted(graph[victim] | {victim})
    add({int(s1[h]): 1 for h in holders}, t, np.inf)  # seed shares under D1
    add({int(s2[h]): 1 for h in holders if h != victim}, t, np.inf)  # key shares under D2
    res = milp(
        c=np.zeros(nv),
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(nv),
        bounds=Bounds(np.zeros(nv), np.ones(nv)),
    )
    return int(res.status)


def test_quorum_is_what_stops_two_survivor_sets_with_a_colluder() -> None:
    # Both sets pass every per-client check, the graph rule included...
    n, k = 40, 12
    cfg = SecAggConfig(n_clients=n, vector_length=1, neighbours=k)
    order = ring_order(n, bytes(16))
    victim = 3
    for members in (range(n), [i for i in range(n) if i != victim]):
        assert (separator_size(order, k, members) or n) >= cfg.t
    from protocols.secagg import neighbour_graph

    graph = neighbour_graph(n, k, bytes(16))
    # ...so "t signatures over one set" (Bonawitz's rule with SecAgg+'s local t)
    # would let one colluding holder and two honest groups reveal both secrets...
    assert _two_set_program(graph, victim, cfg.t, quorum=cfg.t) == 0
    # ...while the quorum floor((n + t - 1) / 2) + 1 makes it infeasible.
    assert cfg.quorum == consistency_quorum(n, cfg.t) == 24
    assert _two_set_program(graph, victim, cfg.t, quorum=cfg.quorum) == 2


def test_quorum_arithmetic_for_every_small_configuration() -> None:
    for n in range(2, 200):
        for t in range(2, n + 1):
            q = consistency_quorum(n, t)
            assert q >= t and 2 * q - n >= t  # two quorums share >= t > t - 1 colluders
            assert q <= n


def test_client_signs_only_one_survivor_set(make_round: Callable[..., Round]) -> None:
    r = make_round(n=6, d=3, seed=2)
    r.run_to(Stage.CONSISTENCY_CHECK)
    first = r.clients[0].handle(r.outgoing[0])
    assert r.clients[0].handle(r.outgoing[0]) == first  # a retry gets the same signature
    other = ConsistencyRequest(r.round_id, 0, 6, tuple(range(6)), (0, 1, 2, 3, 4))
    before = r.clients[0]._state()
    with pytest.raises(MessageError, match="second, different survivor set"):
        r.clients[0].handle(other.to_bytes())
    assert r.clients[0]._state() == before


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        ("victim_dropped", "lists it as dropped"),
        ("withheld_neighbour", "the server withheld or invented shares"),
        ("too_few", "can never be reached"),
    ],
)
def test_client_refuses_impossible_survivor_sets(
    make_round: Callable[..., Round], tamper: str, fragment: str
) -> None:
    r = make_round(n=10, d=3, seed=4)
    r.run_to(Stage.CONSISTENCY_CHECK)
    everyone = tuple(range(10))
    survivors: tuple[int, ...] = everyone
    shared: tuple[int, ...] = everyone
    if tamper == "victim_dropped":
        survivors = everyone[1:]
    elif tamper == "withheld_neighbour":  # claims client 5 never shared
        shared = survivors = tuple(i for i in everyone if i != 5)
    else:
        survivors = everyone[:7]  # quorum is 8
    req = ConsistencyRequest(r.round_id, 0, 10, shared, survivors).to_bytes()
    with pytest.raises(ProtocolAbort, match=fragment) as info:
        r.clients[0].handle(req)
    assert info.value.stage == "consistency_check"
    assert not r.clients[0].revealed


# --------------------------------- attack 2: chosen dropouts split the ring


def _split_setup(make_round: Callable[..., Round], active: bool) -> tuple[Round, list[int]]:
    n, k = 40, 12
    r = make_round(n=n, d=6, seed=9, neighbours=k, active_security=active)
    order = ring_order(n, r.round_id)
    half = k // 2
    cut = set(order[0:half]) | set(order[20 : 20 + half])  # two runs of k/2 on the ring
    arc = [order[i] for i in range(half, 20)]  # one of the two arcs left
    r.dropouts = {Stage.SHARE_KEYS: cut}  # the server "loses" their shares
    r.run_to(Stage.MASKED_INPUT)
    r.deliver(r.client_replies())
    return r, arc


def test_attack2_chosen_dropouts_reveal_an_arc_sum_in_the_passive_protocol(
    make_round: Callable[..., Round],
) -> None:
    r, arc = _split_setup(make_round, active=False)
    assert separator_size(ring_order(40, r.round_id), 12, r.server._u2) == 0
    # The honest server now refuses; a malicious one sends the (honest-looking)
    # unmask requests anyway, and every client answers.
    with pytest.raises(ProtocolAbort, match="already split"):
        r.server.advance()
    u3 = set(r.sent[Stage.MASKED_INPUT])
    seeds: dict[int, dict[int, int]] = {u: {} for u in arc}
    for h in sorted(u3):
        owners = (r.server.graph[h] & u3) | {h}
        req = UnmaskRequest(r.round_id, h, tuple(sorted(owners)), ()).to_bytes()
        resp = UnmaskResponse.from_bytes(r.clients[h].handle(req))
        for owner, share in resp.mask_seed_shares:
            if owner in seeds:
                seeds[owner][h] = share
    cfg = r.config
    acc = np.zeros(cfg.vector_length, dtype=np.int64)
    for u in arc:
        y = MaskedInput.from_bytes(r.sent[Stage.MASKED_INPUT][u]).values().astype(np.int64)
        b = combine_shares(seeds[u], threshold=cfg.t)
        acc += y - expand_mask(b, cfg.vector_length, cfg.encoder.dtype).astype(np.int64)
    arc_sum = cfg.encoder.decode_sum(np.mod(acc, 1 << cfg.modulus_bits), n_summands=len(arc))
    truth = np.clip(r.inputs[arc], -1, 1).sum(axis=0)
    assert np.all(np.abs(arc_sum - truth) < len(arc) * cfg.encoder.step)  # a partial sum leaks


def test_attack2_fails_server_aborts_and_clients_refuse(make_round: Callable[..., Round]) -> None:
    r, _ = _split_setup(make_round, active=True)
    # An honest server aborts rather than unmask.
    with pytest.raises(ProtocolAbort) as info:
        r.server.advance()
    assert info.value.stage == "masked_input" and "already split" in info.value.reason
    # A malicious server that skips the check and shows the true sets: every
    # client checks the graph itself and refuses to sign, so nothing can follow.
    u2 = tuple(sorted(r.sent[Stage.SHARE_KEYS]))
    u3 = tuple(sorted(r.sent[Stage.MASKED_INPUT]))
    for h in u3:
        req = ConsistencyRequest(r.round_id, h, 40, u2, u3).to_bytes()
        with pytest.raises(ProtocolAbort) as refusal:
            r.clients[h].handle(req)
        assert refusal.value.stage == "consistency_check"
        assert "already split" in refusal.value.reason
        assert not r.clients[h].revealed


def test_graph_rule_counts_colluders(make_round: Callable[..., Round]) -> None:
    # One run of k/2 dropped clients leaves a path that t - 1 colluders could cut.
    r = make_round(n=40, d=4, seed=9, neighbours=12)
    order = ring_order(40, r.round_id)
    r.dropouts = {Stage.MASKED_INPUT: set(order[:6])}
    r.run_to(Stage.MASKED_INPUT)
    r.deliver(r.client_replies())
    with pytest.raises(ProtocolAbort, match=r"removing 6 survivor\(s\) splits"):
        r.server.advance()


def test_graph_depends_on_the_beacon_and_is_public() -> None:
    rid = bytes(range(16))
    a = ring_order(30, rid, b"A" * 32)
    assert a == ring_order(30, rid, b"A" * 32)  # every party derives the same graph
    assert a != ring_order(30, rid, b"B" * 32)  # the beacon, not the server, picks it
    assert ring_order(30, rid) != a
    with pytest.raises(InvalidParameterError, match="beacon"):
        ring_order(30, rid, b"short")


# ------------------------------------- attack 3: small-order X25519 keys

_P = (1 << 255) - 19
_BAD_KEYS = {
    "zero": (0).to_bytes(32, "little"),
    "one": (1).to_bytes(32, "little"),
    "minus_one": (_P - 1).to_bytes(32, "little"),
    "order8_a": (
        325606250916557431795983626356110631294008115727848805560023387167927233504
    ).to_bytes(32, "little"),
    "order8_b": (
        39382357235489614581723060781553021112529911719440698176882885853963445705823
    ).to_bytes(32, "little"),
    "p": _P.to_bytes(32, "little"),
    "p_plus_1": (_P + 1).to_bytes(32, "little"),
    "top_bit": ((1 << 255) | 9).to_bytes(32, "little"),
}


def test_small_order_list_matches_the_library_behaviour() -> None:
    # Independent check with `cryptography`: every small-order point gives an
    # all-zero shared secret (refused by the library) for random private keys.
    rng = SecureRandom.from_seed(0, b"small-order")
    for name in ("zero", "one", "minus_one", "order8_a", "order8_b"):
        for _ in range(3):
            sk, _pk = generate_x25519(rng)
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

            with pytest.raises(ValueError):
                X25519PrivateKey.from_private_bytes(sk).exchange(
                    X25519PublicKey.from_public_bytes(_BAD_KEYS[name])
                )
        assert x25519_key_problem(_BAD_KEYS[name]) == "a point of small order"
    for name in ("p", "p_plus_1", "top_bit"):
        assert "non-canonical" in (x25519_key_problem(_BAD_KEYS[name]) or "")
    for _ in range(50):  # honest keys pass
        assert x25519_key_problem(generate_x25519(rng)[1]) is None


@pytest.mark.parametrize("bad", sorted(_BAD_KEYS))
@pytest.mark.parametrize("which", ["encryption", "masking"])
def test_attack3_small_order_advertisement_is_rejected_naming_the_client(
    make_round: Callable[..., Round], bad: str, which: str
) -> None:
    r = make_round(n=6, d=3, seed=7, active_security=False)
    replies = r.client_replies()
    genuine = AdvertiseKeys.from_bytes(replies[4])
    keys = {"encryption": genuine.encryption_key, "masking": genuine.masking_key}
    keys[which] = _BAD_KEYS[bad]
    forged = AdvertiseKeys(r.round_id, 4, keys["encryption"], keys["masking"]).to_bytes()
    before = r.server._state()
    with pytest.raises(MessageError, match=f"from client 4: its {which} key is"):
        r.server.receive(forged)
    assert r.server._state() == before
    # The client with the bad key is simply absent; the round completes.
    r.deliver({i: m for i, m in replies.items() if i != 4})
    r.advance()
    r.active.discard(4)
    result = r.finish()
    assert result.survivors == (0, 1, 2, 3, 5)


def test_attack3_server_cannot_slip_a_small_order_key_into_a_directory(
    make_round: Callable[..., Round],
) -> None:
    r = make_round(n=6, d=3, seed=7, active_security=False)
    r.run_stage()
    kd = KeyDirectory.from_bytes(r.outgoing[0])
    victim = kd.advertisements[0]
    bad = AdvertiseKeys(r.round_id, victim.sender, victim.encryption_key, _BAD_KEYS["zero"])
    data = KeyDirectory(r.round_id, 0, (bad, *kd.advertisements[1:]))
    raw = data.to_bytes()
    before = r.clients[0]._state()
    with pytest.raises(MessageError, match=f"from client {victim.sender}: its masking key"):
        r.clients[0].handle(raw)
    assert r.clients[0]._state() == before
    r.finish()


# -------------------------------- attack 4: a corrupted seed share


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("position", ["extra", "first"])
def test_attack4_corrupted_seed_share_aborts_naming_the_holder(
    make_round: Callable[..., Round], active: bool, position: str
) -> None:
    r = make_round(n=10, d=4, seed=3, active_security=active)
    r.run_to(Stage.UNMASKING)
    replies = r.client_replies()
    liar = 0 if position == "first" else 9  # holder ids: 0 is among the t used first
    resp = UnmaskResponse.from_bytes(replies[liar])
    owner, value = resp.mask_seed_shares[1]
    from protocols.secagg.shamir import PRIME

    shares = list(resp.mask_seed_shares)
    shares[1] = (owner, (value + 1) % PRIME)  # a valid field element, just wrong
    replies[liar] = UnmaskResponse(resp.round_id, liar, tuple(shares), resp.key_shares).to_bytes()
    r.deliver(replies)
    with pytest.raises(ProtocolAbort) as info:
        r.server.advance()
    assert info.value.stage == "unmasking"
    assert f"client {owner}'s self-mask seed disagree: holders [{liar}]" in info.value.reason
    assert "nothing was unmasked" in info.value.reason
    with pytest.raises(ProtocolAbort):
        r.server.result()


def test_attack4_corrupted_key_share_is_caught_before_the_public_key_check(
    make_round: Callable[..., Round],
) -> None:
    r = make_round(n=10, d=4, seed=3, dropouts={Stage.MASKED_INPUT: {6}})
    r.run_to(Stage.UNMASKING)
    replies = r.client_replies()
    resp = UnmaskResponse.from_bytes(replies[8])
    (owner, value), *rest = resp.key_shares
    replies[8] = UnmaskResponse(
        resp.round_id, 8, resp.mask_seed_shares, ((owner, value ^ 1), *rest)
    ).to_bytes()
    r.deliver(replies)
    with pytest.raises(ProtocolAbort, match=r"client 6's masking key disagree: holders \[8\]"):
        r.server.advance()


# ------------------------------------------------ invariants (smaller defects)


def test_rng_must_be_the_library_csprng() -> None:
    cfg = SecAggConfig(n_clients=4, vector_length=2, active_security=False)
    with pytest.raises(InvalidParameterError, match="`rng` must be a SecureRandom"):
        SecAggClient(0, np.zeros(2), config=cfg, round_id=bytes(16), rng=np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="`rng` must be a SecureRandom"):
        generate_x25519(np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="`rng`"):
        split_secret(bytes(32), threshold=2, holder_ids=[0, 1], rng=np.random.default_rng(0))  # type: ignore[arg-type]


def test_failed_key_agreement_draws_no_randomness(
    make_round: Callable[..., Round], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the fix the mask seed, Shamir coefficients and nonces were drawn
    # before a late key agreement could fail: a rejected directory still moved
    # the client's CSPRNG. Now every check runs first.
    reference = make_round(n=6, d=3, seed=8)
    ref_result = reference.finish()
    r = make_round(n=6, d=3, seed=8)
    r.run_stage()
    import protocols.secagg.client as client_module

    real = client_module.x25519_exchange
    calls = {"n": 0}

    def flaky(private: Any, peer: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] == 5:  # the last neighbour's key agreement fails
            raise MessageError("invalid X25519 public key: simulated")
        return real(private, peer)

    monkeypatch.setattr(client_module, "x25519_exchange", flaky)
    before = r.clients[0]._state()
    with pytest.raises(MessageError, match="simulated"):
        r.clients[0].handle(r.outgoing[0])
    assert r.clients[0]._state() == before  # CSPRNG position included
    monkeypatch.setattr(client_module, "x25519_exchange", real)
    result = r.finish()
    assert r.server.view.received == reference.server.view.received
    np.testing.assert_array_equal(result.sum, ref_result.sum)


def test_forged_or_misaddressed_votes_are_rejected_or_do_not_count(
    make_round: Callable[..., Round],
) -> None:
    r = make_round(n=6, d=3, seed=1)
    r.run_to(Stage.CONSISTENCY_CHECK)
    replies = r.client_replies()
    genuine = ConsistencyVote.from_bytes(replies[2])
    before = r.server._state()
    # The server checks that a vote addresses every other survivor once...
    for bad in (
        ConsistencyVote(r.round_id, 2, genuine.tags[1:]),
        ConsistencyVote(r.round_id, 2, (*genuine.tags[1:], (9, bytes(32)))),
    ):
        with pytest.raises(MessageError, match="one tag for each of its"):
            r.server.receive(bad.to_bytes())
        assert r.server._state() == before
    # ...but cannot check the tags (they are keyed for the receivers): a forged
    # vote gets through and simply does not count at the clients.
    forged = ConsistencyVote(r.round_id, 2, tuple((w, bytes(32)) for w, _ in genuine.tags))
    r.deliver({**replies, 2: forged.to_bytes()})
    r.advance()  # 6 votes on record; every client can verify 4 others + itself = 5 = quorum
    assert r.config.quorum == 5
    result = r.finish()
    assert result.survivors == tuple(range(6))


def test_a_single_bad_vote_below_quorum_makes_clients_refuse(
    make_round: Callable[..., Round],
) -> None:
    r = make_round(n=6, d=3, seed=1, dropouts={Stage.CONSISTENCY_CHECK: {5}})
    r.run_to(Stage.CONSISTENCY_CHECK)
    replies = r.client_replies()
    genuine = ConsistencyVote.from_bytes(replies[2])
    forged = ConsistencyVote(r.round_id, 2, tuple((w, bytes(32)) for w, _ in genuine.tags))
    r.deliver({**replies, 2: forged.to_bytes()})
    r.advance()
    with pytest.raises(ProtocolAbort, match=r"votes of clients \[2\] do not verify") as info:
        r.clients[0].handle(r.outgoing[0])
    assert info.value.stage == "unmasking" and not r.clients[0].revealed


def test_range_check_catches_an_out_of_range_encoding(make_round: Callable[..., Round]) -> None:
    # A malicious client can bias the sum within the field; the cheap check the
    # server can make catches sums no clipped inputs could produce.
    r = make_round(n=6, d=64, seed=2)
    r.run_to(Stage.MASKED_INPUT)
    replies = r.client_replies()
    mi = MaskedInput.from_bytes(replies[0])
    bits = r.config.modulus_bits
    shifted = (mi.values().astype(np.int64) + (1 << (bits - 1))) % (1 << bits)
    replies[0] = MaskedInput(r.round_id, 0, bits, shifted.astype(mi.dtype).tobytes()).to_bytes()
    r.deliver(replies)
    r.advance()
    with pytest.raises(ProtocolAbort, match="range check failed") as info:
        r.finish()
    assert info.value.stage == "unmasking"


def test_local_signature_checks_would_not_suffice() -> None:
    # Why the quorum is global: if each client only verified its own neighbours'
    # signatures (O(k) instead of O(n)), a segment S of k/2 + 1 ring-consecutive
    # clients could sign D_y = (U3 = S) while the rest of the ring signs
    # D_x = (U3 = ring minus S, plus two colluders of S). Every client's local
    # checks and the surviving-graph rule pass for both sets...
    n, k = 40, 12
    h, t = k // 2, k // 2 + 1
    order = tuple(range(n))  # positions = ids for the construction

    def holders(a: int) -> set[int]:
        return {(a + o) % n for o in range(-h, h + 1)}

    segment = set(range(10, 10 + h + 1))
    colluders = {10, 11}
    u3_x = (set(range(n)) - segment) | colluders
    u3_y = segment
    for u3 in (u3_x, u3_y):
        assert (separator_size(order, k, u3) or n) >= t
    assert all(len(holders(a) & u3_x) >= t for a in u3_x - colluders)
    assert all(len(holders(s) & u3_y) >= t for s in segment)
    # ...yet an honest segment member's self-mask seed (from the segment, which
    # sees it survive) and masking key (from the outside, which sees it dropped)
    # both reach t shares: its input would leak. With the global quorum neither
    # set can gather floor((n + t - 1) / 2) + 1 signatures.
    s = 12
    seed_holders = holders(s) & u3_y
    key_holders = (holders(s) & (u3_x - colluders)) | (holders(s) & colluders)
    assert len(seed_holders) >= t and len(key_holders) >= t
    q = consistency_quorum(n, t)
    assert len(u3_y) < q
    assert len(segment - colluders) + len(colluders) < q
