"""End-to-end correctness: decoded secure sum vs plaintext sum, dropouts, aborts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidParameterError, ProtocolAbort
from protocols.secagg import (
    PASSIVE_STAGES,
    PROTOCOL_STAGES,
    SecAggConfig,
    Stage,
    simulate_secure_sum,
)

D = 7


def _config(n: int, rate: float, active: bool = True) -> SecAggConfig:
    # n = 100 with 30 % dropout needs more neighbours than the 10 % default.
    return SecAggConfig(
        n_clients=n, vector_length=D, max_dropout_rate=max(rate, 0.1), active_security=active
    )


def _check(result: Any, inputs: np.ndarray) -> None:
    survivors = list(result.survivors)
    clipped = np.clip(inputs[survivors], -1.0, 1.0).sum(axis=0)
    bound = len(survivors) * result.config.encoder.step
    assert result.error_bound == pytest.approx(bound)
    assert np.all(np.abs(result.sum - clipped) < bound * (1 + 1e-9))


# 0 % dropout is one run per protocol; the active (malicious-server) protocol with
# 10 % dropout at each of its five stages; the honest-but-curious protocol, which
# tolerates more dropouts, with 10 % and 30 % at each of its four stages (30 % is
# beyond what the consistency quorum of small rounds tolerates).
GRID = (
    [(n, 0.0, Stage.ADVERTISE_KEYS, a) for n in (3, 10, 100) for a in (True, False)]
    + [(n, 0.1, stage, True) for n in (3, 10, 100) for stage in PROTOCOL_STAGES]
    + [
        (n, rate, stage, False)
        for n in (3, 10, 100)
        for rate in (0.1, 0.3)
        for stage in PASSIVE_STAGES
    ]
)


@pytest.mark.parametrize(("n", "rate", "stage", "active"), GRID)
def test_secure_sum_matches_plaintext_sum(n: int, rate: float, stage: Stage, active: bool) -> None:
    rng = np.random.default_rng(n * 1000 + int(rate * 100))
    inputs = rng.uniform(-1.2, 1.2, size=(n, D))  # a few coordinates get clipped
    dropped = set(rng.choice(n, size=round(rate * n), replace=False).tolist())
    result = simulate_secure_sum(
        list(inputs), config=_config(n, rate, active), dropouts={stage: dropped}, seed=n + 7
    )
    late = (Stage.CONSISTENCY_CHECK, Stage.UNMASKING)
    expected_survivors = set(range(n)) if stage in late else set(range(n)) - dropped
    assert set(result.survivors) == expected_survivors
    assert not result.aborted_clients
    _check(result, inputs)


@pytest.mark.parametrize("active", [True, False])
def test_dropouts_at_every_stage_in_one_round(active: bool) -> None:
    n = 24
    inputs = np.random.default_rng(1).normal(0, 0.5, size=(n, D))
    dropouts = {
        Stage.ADVERTISE_KEYS: {0},
        Stage.SHARE_KEYS: {5},
        Stage.MASKED_INPUT: {7, 8},
        Stage.UNMASKING: {12},
    }
    if active:
        dropouts[Stage.CONSISTENCY_CHECK] = {10}
    cfg = SecAggConfig(n_clients=n, vector_length=D, active_security=active)
    result = simulate_secure_sum(list(inputs), config=cfg, dropouts=dropouts, seed=3)
    assert set(result.survivors) == set(range(n)) - {0, 5, 7, 8}
    _check(result, inputs)


@pytest.mark.parametrize(
    ("n", "dropouts"),
    [
        (7, {"masked_input": {1}}),
        (40, {"masked_input": {1}, "share_keys": {3}, "consistency_check": {5}}),
    ],
)
def test_secagg_plus_graph_with_dropouts(n: int, dropouts: dict[str, set[int]]) -> None:
    cfg = SecAggConfig(n_clients=n, vector_length=D, neighbours=4 if n == 7 else 12)
    assert not cfg.is_plain_secagg
    inputs = np.random.default_rng(n).uniform(-1, 1, size=(n, D))
    result = simulate_secure_sum(list(inputs), config=cfg, dropouts=dropouts, seed=2)
    _check(result, inputs)


def test_signed_advertisements_round() -> None:
    cfg = SecAggConfig(n_clients=6, vector_length=D, sign_advertisements=True)
    inputs = np.random.default_rng(2).uniform(-1, 1, size=(6, D))
    result = simulate_secure_sum(list(inputs), config=cfg, dropouts={"masked_input": {2}}, seed=1)
    _check(result, inputs)
    ads = result.server_view.messages(Stage.ADVERTISE_KEYS)
    assert all(len(a) == 30 + 64 + 2 + 5 * (4 + 32) for a in ads)  # one tag per neighbour


def test_several_vectors_per_client_are_concatenated() -> None:
    rng = np.random.default_rng(4)
    clients = [[rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, 4)] for _ in range(5)]
    result = simulate_secure_sum(clients, seed=0)
    assert [p.shape for p in result.parts] == [(2, 3), (4,)]
    bound = result.error_bound * (1 + 1e-9)
    np.testing.assert_allclose(result.parts[0], sum(c[0] for c in clients), atol=bound, rtol=0)
    np.testing.assert_allclose(result.parts[1], sum(c[1] for c in clients), atol=bound, rtol=0)
    # Per-client byte counts: every client sent and received something.
    assert all(result.bytes_sent[i] > 0 and result.bytes_received[i] > 0 for i in range(5))
    with pytest.raises(InvalidParameterError, match="part shapes"):
        simulate_secure_sum([clients[0], [clients[1][0]]], seed=0)


def test_byte_counts_match_server_view() -> None:
    inputs = list(np.random.default_rng(5).uniform(-1, 1, size=(6, D)))
    result = simulate_secure_sum(inputs, seed=9, dropouts={"unmasking": {1}})
    view = result.server_view
    for i in range(6):
        assert result.bytes_sent[i] == sum(len(m.data) for m in view.received if m.sender == i)
        sent_to_i = sum(len(b) for _, c, b in view.sent if c == i)
        # Client 1 dropped before reading its unmask request.
        assert result.bytes_received[i] == sent_to_i or (
            i == 1 and result.bytes_received[i] < sent_to_i
        )
    assert set(view.by_stage()[Stage.UNMASKING]) == set(range(6)) - {1}


def test_seeded_runs_are_reproducible_and_unseeded_differ() -> None:
    inputs = list(np.random.default_rng(6).uniform(-1, 1, size=(4, D)))
    a = simulate_secure_sum(inputs, seed=1)
    b = simulate_secure_sum(inputs, seed=1)
    assert a.server_view.received == b.server_view.received
    c = simulate_secure_sum(inputs)
    d = simulate_secure_sum(inputs)
    assert c.server_view.round_id != d.server_view.round_id
    np.testing.assert_allclose(c.sum, a.sum, atol=2 * a.error_bound)


@pytest.mark.parametrize(
    ("stage", "dropped", "fragment"),
    [
        (Stage.ADVERTISE_KEYS, {0, 1, 2, 3, 4}, "only 5 clients advertised keys"),
        (Stage.SHARE_KEYS, {0, 1, 2, 3, 4}, "only 5 clients shared their keys"),
        (Stage.MASKED_INPUT, {0, 1, 2, 3, 4}, "only 5 clients sent masked inputs"),
        (Stage.UNMASKING, {0, 1, 2, 3, 4}, "only 5 clients answered the unmask request"),
        (
            Stage.CONSISTENCY_CHECK,
            {0, 1, 2},
            "only 7 of the 10 clients voted for the survivor set (survivors [3, 4, 5, 6, 7, 8, 9])",
        ),
        (
            Stage.MASKED_INPUT,
            {0, 1, 2},
            "only 7 of the 10 clients sent masked inputs (survivors [3, 4, 5, 6, 7, 8, 9])",
        ),
    ],
)
def test_too_few_survivors_abort_naming_counts(
    stage: Stage, dropped: set[int], fragment: str
) -> None:
    inputs = list(np.random.default_rng(7).uniform(-1, 1, size=(10, D)))
    with pytest.raises(ProtocolAbort) as info:
        simulate_secure_sum(inputs, dropouts={stage: dropped}, seed=0)
    assert info.value.stage == stage.value
    assert fragment in info.value.reason
    if len(dropped) == 3:  # the quorum, not the threshold, stops the round: say so and why
        for part in (
            "q = floor((n + t - 1) / 2) + 1 = 8",
            "at most n - q = 2 dropouts",
            "k + 1 - t = 4",
            "secagg_active_security = false",
        ):
            assert part in info.value.reason
    else:
        assert "threshold = 6" in info.value.reason


def test_abort_when_a_secret_loses_its_holders(make_round: Callable[..., Any]) -> None:
    # SecAgg+ ring with k = 4 (t = 3): client u's holders are u and its four ring
    # neighbours. If u drops at masked input and two neighbours drop at
    # unmasking, only 2 holders can send shares of u's masking key: abort,
    # nothing reconstructed.
    r = make_round(n=12, d=D, seed=1, neighbours=4)
    assert r.config.t == 3
    u = 0
    a, b = sorted(r.server.graph[u])[:2]
    r.dropouts = {Stage.MASKED_INPUT: {u}, Stage.UNMASKING: {a, b}}
    with pytest.raises(ProtocolAbort) as info:
        r.finish()
    assert info.value.stage == "unmasking"
    # The dry run finds a secret with too few holders before rebuilding anything.
    assert "cannot rebuild the masking key of client 0" in info.value.reason
    assert "2 of its share holders survived, threshold 3" in info.value.reason
    assert r.server.stage is Stage.ABORTED
    with pytest.raises(ProtocolAbort):
        r.server.result()


@pytest.mark.parametrize("active", [True, False])
def test_client_aborts_when_its_neighbourhood_collapses(
    make_round: Callable[..., Any], active: bool
) -> None:
    # Ring k = 2, t = 2: if both neighbours of client 0 never advertise keys, it
    # cannot share its secrets; it aborts (treated as a dropout). On a Harary
    # ring that hole is also a cut: the survivors form a path that one
    # colluder (t - 1 = 1) could split, so the server aborts rather than unmask.
    r = make_round(n=9, d=D, seed=4, neighbours=2, active_security=active)
    r.dropouts = {Stage.ADVERTISE_KEYS: set(r.server.graph[0])}
    r.run_stage()
    with pytest.raises(ProtocolAbort, match="1 of client 0's 3 share holders survived"):
        r.clients[0].handle(r.outgoing[0])
    assert r.clients[0].stage is Stage.ABORTED
    r.active.discard(0)  # an aborted client is a dropout
    r.run_to(Stage.MASKED_INPUT)
    r.deliver(r.client_replies())
    with pytest.raises(ProtocolAbort) as info:
        r.server.advance()
    assert info.value.stage == "masked_input"
    assert "removing 1 survivor(s) splits the survivors' graph" in info.value.reason
    assert all(not c.revealed for c in r.clients)


def test_driver_validates_arguments() -> None:
    inputs = [np.zeros(3)] * 4
    with pytest.raises(InvalidParameterError, match="`dropouts` keys"):
        simulate_secure_sum(inputs, dropouts={"setup": {1}})
    passive = SecAggConfig(n_clients=4, vector_length=3, active_security=False)
    with pytest.raises(InvalidParameterError, match="exists only with `active_security`"):
        simulate_secure_sum(inputs, config=passive, dropouts={"consistency_check": {1}})
    with pytest.raises(InvalidParameterError, match="unknown client ids"):
        simulate_secure_sum(inputs, dropouts={"share_keys": {9}})
    with pytest.raises(InvalidParameterError, match="`config` is for"):
        simulate_secure_sum(inputs, config=SecAggConfig(n_clients=5, vector_length=3))
    with pytest.raises(InvalidParameterError, match="at least 2"):
        simulate_secure_sum([np.zeros(3)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), active=st.booleans(), seed=st.integers(0, 2**16))
def test_random_rounds_with_dropouts_at_every_stage_are_exact_or_abort(
    data: st.DataObject, active: bool, seed: int
) -> None:
    """Random sizes, graphs and dropouts at every stage (the consistency check
    included): a round either returns the exact sum of exactly the clients whose
    masked inputs arrived, or raises ProtocolAbort — never anything else."""
    n = data.draw(st.integers(3, 24), label="n")
    ks = [n - 1, *range(2, n - 1, 2)]
    k = data.draw(st.sampled_from(ks), label="k")
    cfg = SecAggConfig(n_clients=n, vector_length=5, neighbours=k, active_security=active)
    stages = list(cfg.stages)
    drops = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(stages), max_size=max(1, n // 5)),
        label="drops",
    )
    dropouts: dict[Stage, set[int]] = {}
    for client, stage in drops.items():
        dropouts.setdefault(stage, set()).add(client)
    inputs = np.random.default_rng(seed).uniform(-1, 1, size=(n, 5))
    try:
        result = simulate_secure_sum(list(inputs), config=cfg, dropouts=dropouts, seed=seed)
    except ProtocolAbort as exc:
        assert exc.stage in {s.value for s in stages}
        return
    late = {Stage.CONSISTENCY_CHECK, Stage.UNMASKING}
    gone = {c for s, ids in dropouts.items() if s not in late for c in ids}
    assert set(result.survivors) <= set(range(n)) - gone
    assert set(result.survivors) | set(result.aborted_clients) >= set(range(n)) - gone
    _check(result, inputs)


def test_random_rounds_mostly_complete_within_the_design_dropout_rate() -> None:
    # Liveness: at the default graph and 5 % random dropouts (spread over the
    # stages) the malicious-server protocol completes essentially always.
    done = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n = 50
        stages = list(PROTOCOL_STAGES)
        dropouts: dict[Stage, set[int]] = {}
        for c in rng.choice(n, size=3, replace=False):
            dropouts.setdefault(stages[int(rng.integers(len(stages)))], set()).add(int(c))
        inputs = rng.uniform(-1, 1, size=(n, 3))
        res = simulate_secure_sum(
            list(inputs),
            config=SecAggConfig(n_clients=n, vector_length=3),
            dropouts=dropouts,
            seed=seed,
        )
        _check(res, inputs)
        done += 1
    assert done == 5
