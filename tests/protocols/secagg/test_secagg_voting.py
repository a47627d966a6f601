"""Consistency votes addressed to voting peers (not to every survivor): the honest
server's choice, its liveness (the slack), and the message rules around it. The
security side — a server that picks the recipients adversarially still cannot get
two survivor sets accepted — is in ``test_secagg_attacks.py`` ("own group")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from protocols.secagg import (
    SecAggConfig,
    Stage,
    default_vote_slack,
    make_graph,
    simulate_secure_sum,
    voting_degree,
    voting_peers,
)
from protocols.secagg.messages import ConsistencyRequest, ConsistencyVote, ForwardedVotes


def _exact(r: Any, result: Any) -> None:
    survivors = list(result.survivors)
    truth = np.clip(r.inputs[survivors], -1, 1).sum(axis=0)
    assert np.all(np.abs(result.sum - truth) <= len(survivors) * r.config.encoder.step)


def test_honest_server_addresses_votes_to_voting_peers(make_round: Callable[..., Any]) -> None:
    r = make_round(n=40, d=6, seed=2, vote_slack=4)
    cfg = r.config
    assert cfg.vote_slack == 4
    degree = voting_degree(40, cfg.quorum, cfg.vote_slack)
    assert degree == cfg.quorum - 1 + cfg.vote_slack == 32 < 39  # a real subset
    r.run_to(Stage.CONSISTENCY_CHECK)
    order = make_graph(40, cfg.k, r.round_id).order
    assert order is not None
    peers = voting_peers(range(40), degree, order)
    for h, raw in r.outgoing.items():
        request = ConsistencyRequest.from_bytes(raw)
        assert request.vote_recipients() == tuple(sorted(peers[h]))
        # The SecAgg+ neighbours (whose pairwise keys the advertisement tags already
        # derived) are among the voting peers: no extra key agreement for them.
        assert r.server.graph[h] <= peers[h]
    votes = r.client_replies()
    for h, raw in votes.items():
        assert [w for w, _ in ConsistencyVote.from_bytes(raw).tags] == sorted(peers[h])
    r.deliver(votes)
    r.advance()
    for h, raw in r.outgoing.items():
        assert {v for v, _ in ForwardedVotes.from_bytes(raw).tags} == peers[h]
    _exact(r, r.finish())


@pytest.mark.parametrize(("dropped", "slack"), [(4, 4), (5, 4), (11, 0), (11, None)])
def test_dropouts_at_the_consistency_check(
    make_round: Callable[..., Any], dropped: int, slack: int | None
) -> None:
    # n = 40, quorum 29. With vote_slack = 4 (32 voting peers) up to 4 dropouts
    # anywhere leave every survivor its quorum in the first pass; 5 ring-consecutive
    # dropouts leave some survivors 27 < 28 other votes, and the server asks the
    # other signers for votes to them (the top-up pass); with vote_slack = 0 every
    # dropout needs one. Either way the check absorbs n - q = 11 dropouts. The
    # default slack at n = 40 is n - q = 11 (every survivor votes to every other).
    probe = make_round(n=40, d=6, seed=4)
    order = make_graph(40, probe.config.k, probe.round_id).order
    assert order is not None and probe.config.vote_slack == 11
    gone = set(order[10 : 10 + dropped])
    r = make_round(n=40, d=6, seed=4, vote_slack=slack, dropouts={Stage.CONSISTENCY_CHECK: gone})
    r.run_to(Stage.CONSISTENCY_CHECK)
    r.run_stage()
    assert r.top_up == (dropped > r.config.vote_slack)
    if r.top_up:
        degree = voting_degree(40, r.config.quorum, r.config.vote_slack)
        peers = voting_peers(range(40), degree, order)
        short = {u for u in set(range(40)) - gone if len(peers[u] - gone) < r.config.quorum - 1}
        assert short
        for v, raw in r.outgoing.items():
            request = ConsistencyRequest.from_bytes(raw)
            # Only votes to survivors left short, from signers that had not voted to them.
            assert set(request.vote_recipients()) <= short and v not in gone
            assert not set(request.vote_recipients()) & peers[v]
        r.run_stage()
        assert r.top_up_sent and not r.top_up
    assert r.stage is Stage.UNMASKING
    assert set(r.outgoing) == set(range(40)) - gone  # every survivor reaches the quorum
    result = r.finish()
    assert set(result.survivors) == set(range(40))  # U3: their inputs are in the sum
    _exact(r, result)


def test_more_dropouts_at_the_check_than_the_quorum_allows_abort_cleanly(
    make_round: Callable[..., Any],
) -> None:
    # 12 > n - q = 11 dropouts: fewer than q signers, so no client can ever reach
    # the quorum; the server aborts with the shortfall, nothing is revealed.
    r = make_round(
        n=40, d=6, seed=4, vote_slack=0, dropouts={Stage.CONSISTENCY_CHECK: set(range(12))}
    )
    r.run_to(Stage.CONSISTENCY_CHECK)
    with pytest.raises(ProtocolAbort) as info:
        r.run_stage()
    assert info.value.stage == "consistency_check" and "28" in info.value.reason
    assert r.config.quorum == 29 and all(not c.revealed for c in r.clients)


def test_repeated_request_same_sets_other_recipients(make_round: Callable[..., Any]) -> None:
    r = make_round(n=12, d=4, seed=1, vote_slack=0)
    r.run_to(Stage.CONSISTENCY_CHECK)
    h = 0
    request = ConsistencyRequest.from_bytes(r.outgoing[h])
    client = r.clients[h]
    vote = client.handle(r.outgoing[h])
    state = client._state()
    assert client.handle(r.outgoing[h]) == vote  # the identical request: the same vote
    # A top-up (the same sets, other recipients): tags over the same sets, so the
    # same tag for a recipient it already voted to, and no state change.
    others = tuple(w for w in request.survivors if w != h)
    top_up = dataclasses.replace(request, recipients=others[:3])
    extra = ConsistencyVote.from_bytes(client.handle(top_up.to_bytes()))
    first = dict(ConsistencyVote.from_bytes(vote).tags)
    assert [w for w, _ in extra.tags] == list(others[:3])
    assert all(first[w] == tag for w, tag in extra.tags if w in first)
    assert client._state() == state
    # Another survivor set is refused, state unchanged.
    other_set = dataclasses.replace(request, survivors=request.survivors[:-1], recipients=None)
    with pytest.raises(MessageError, match="second, different survivor set"):
        client.handle(other_set.to_bytes())
    assert client._state() == state


def test_no_more_votes_after_unmasking(make_round: Callable[..., Any]) -> None:
    r = make_round(n=12, d=4, seed=1)
    r.run_to(Stage.UNMASKING)
    request = ConsistencyRequest.from_bytes(r.received[Stage.CONSISTENCY_CHECK][0])
    r.clients[0].handle(r.outgoing[0])  # unmasks
    with pytest.raises(MessageError):
        r.clients[0].handle(dataclasses.replace(request, recipients=(1,)).to_bytes())


def test_server_checks_top_up_votes(make_round: Callable[..., Any]) -> None:
    r = make_round(n=40, d=6, seed=4, vote_slack=0, dropouts={Stage.CONSISTENCY_CHECK: {0}})
    r.run_to(Stage.CONSISTENCY_CHECK)
    r.run_stage()
    assert r.top_up
    asked = sorted(r.outgoing)
    not_asked = sorted(set(range(1, 40)) - set(asked))
    assert not_asked  # a single dropout: only some signers are asked for more
    replies = r.client_replies()
    before = r.server._state()
    v = asked[0]
    genuine = ConsistencyVote.from_bytes(replies[v])
    for bad in (
        ConsistencyVote(r.round_id, v, genuine.tags[1:] or ((39, bytes(32)),)),
        ConsistencyVote(r.round_id, not_asked[0], genuine.tags),
    ):
        with pytest.raises(MessageError):
            r.server.receive(bad.to_bytes())
        assert r.server._state() == before
    r.deliver(replies)
    with pytest.raises(MessageError, match="duplicate"):
        r.server.receive(replies[v])
    r.advance()
    _exact(r, r.finish())


@pytest.mark.parametrize("bad", ["receiver", "non-survivor"])
def test_recipients_must_be_other_survivors(bad: str) -> None:
    rid = bytes(16)
    survivors = (0, 1, 2, 4)
    recipients = (0, 1) if bad == "receiver" else (1, 3)
    raw = ConsistencyRequest(rid, 0, 6, (0, 1, 2, 3, 4), survivors, recipients).to_bytes()
    with pytest.raises(MessageError, match="recipient"):
        ConsistencyRequest.from_bytes(raw)


def test_every_other_survivor_decodes_as_the_default() -> None:
    rid = bytes(16)
    explicit = ConsistencyRequest(rid, 2, 6, (0, 1, 2, 3), (0, 2, 3), (0, 3))
    decoded = ConsistencyRequest.from_bytes(explicit.to_bytes())
    assert decoded.recipients is None and decoded.vote_recipients() == (0, 3)
    assert decoded.to_bytes() == explicit.to_bytes()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(4, 60),
    degree=st.integers(0, 70),
    drop=st.sets(st.integers(0, 59), max_size=20),
    seed=st.binary(min_size=16, max_size=16),
)
def test_voting_peers_are_symmetric_and_regular(
    n: int, degree: int, drop: set[int], seed: bytes
) -> None:
    members = sorted(set(range(n)) - drop)
    if len(members) < 2:
        return
    k = n - 1 if n < 6 else 2 * max(1, (n // 4) // 2)
    graph = make_graph(n, k, seed)
    peers = voting_peers(members, degree, graph.order)
    m = len(members)
    want = min(m - 1, 2 * -(-degree // 2))
    for u in members:
        assert u not in peers[u] and peers[u] <= set(members)
        assert len(peers[u]) == want
        assert all(u in peers[v] for v in peers[u])
        if graph.order is not None and 2 * -(-degree // 2) >= k:
            assert graph[u] & set(members) <= peers[u]


def test_voting_peers_refuses_bad_input() -> None:
    with pytest.raises(InvalidParameterError, match="degree"):
        voting_peers(range(4), -1)
    with pytest.raises(InvalidParameterError, match="every member"):
        voting_peers(range(4), 2, (0, 1, 2))


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("n", [5, 10, 50, 100, 333, 1000])
def test_default_vote_slack_is_the_smallest_meeting_the_design_rule(n: int, rate: float) -> None:
    binom = pytest.importorskip("scipy.stats").binom
    cfg = SecAggConfig(n_clients=n, vector_length=1, max_dropout_rate=rate)
    q, s = cfg.quorum, cfg.vote_slack
    assert s is not None and s == default_vote_slack(n, cfg.t, max_dropout_rate=rate)

    def meets(slack: int) -> bool:  # union bound over clients, scipy's binomial tail
        return bool(n * binom.sf(slack, q - 1 + slack, rate) <= 2.0**-20)

    if s == max(1, n - q):  # capped: every survivor votes to every other
        return
    assert meets(s)
    assert s == 1 or not meets(s - 1)


def test_voting_degree_never_exceeds_the_other_survivors() -> None:
    for n in (3, 10, 40, 100, 1000):
        cfg = SecAggConfig(n_clients=n, vector_length=1)
        assert cfg.vote_slack is not None
        for alive in range(cfg.quorum, n + 1):
            d = voting_degree(alive, cfg.quorum, cfg.vote_slack)
            assert cfg.quorum - 1 <= d <= alive - 1
    with pytest.raises(InvalidParameterError, match="vote_slack"):
        SecAggConfig(n_clients=10, vector_length=1, vote_slack=-1)


def test_a_top_up_voter_dropping_leaves_only_its_recipients_short(
    make_round: Callable[..., Any],
) -> None:
    # Slack 0, one dropout at the check: the top-up asks exactly the missing votes;
    # one asked signer drops in the top-up pass. The survivors that needed its
    # vote cannot unmask (the server does not ask them); the others' shares still
    # rebuild every secret, and the sum is exact.
    r = make_round(n=40, d=6, seed=4, vote_slack=0, dropouts={Stage.CONSISTENCY_CHECK: {0}})
    r.run_to(Stage.CONSISTENCY_CHECK)
    r.run_stage()
    assert r.top_up
    quitter = sorted(r.outgoing)[0]
    left_short = set(ConsistencyRequest.from_bytes(r.outgoing[quitter]).vote_recipients())
    r.active.discard(quitter)
    r.run_stage()
    assert r.stage is Stage.UNMASKING
    assert set(r.outgoing) == set(range(1, 40)) - left_short
    result = r.finish()
    assert set(result.survivors) == set(range(40))  # U3: both sent masked inputs
    _exact(r, result)


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_simulated_rounds_with_top_ups_give_exact_sums(data: st.DataObject) -> None:
    n = data.draw(st.integers(12, 30), label="n")
    slack = data.draw(st.sampled_from([0, 1, None]), label="slack")
    cfg = SecAggConfig(n_clients=n, vector_length=5, vote_slack=slack)
    gone = data.draw(st.sets(st.integers(0, n - 1), max_size=n - cfg.quorum), label="gone")
    rng = np.random.default_rng(n)
    vectors = rng.uniform(-1, 1, (n, 5))
    result = simulate_secure_sum(
        list(vectors), config=cfg, dropouts={Stage.CONSISTENCY_CHECK: gone}, seed=n
    )
    survivors = list(result.survivors)
    assert set(survivors) == set(range(n))  # dropped at the check: still in U3
    truth = vectors[survivors].sum(axis=0)
    assert np.all(np.abs(result.sum - truth) <= result.error_bound)
