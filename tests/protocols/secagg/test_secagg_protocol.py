"""End-to-end correctness: decoded secure sum vs plaintext sum, dropouts, aborts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols.errors import InvalidParameterError, ProtocolAbort
from protocols.secagg import (
    PROTOCOL_STAGES,
    SecAggConfig,
    Stage,
    simulate_secure_sum,
)

D = 7


def _config(n: int, rate: float) -> SecAggConfig:
    # n = 100 with 30 % dropout needs more neighbours than the 10 % default.
    return SecAggConfig(n_clients=n, vector_length=D, max_dropout_rate=max(rate, 0.1))


def _check(result: Any, inputs: np.ndarray) -> None:
    survivors = list(result.survivors)
    clipped = np.clip(inputs[survivors], -1.0, 1.0).sum(axis=0)
    bound = len(survivors) * result.config.encoder.step
    assert result.error_bound == pytest.approx(bound)
    assert np.all(np.abs(result.sum - clipped) < bound * (1 + 1e-9))


# 0 % dropout is one run; 10 % and 30 % dropout at each of the four stages.
GRID = [(n, 0.0, Stage.ADVERTISE_KEYS) for n in (3, 10, 100)] + [
    (n, rate, stage) for n in (3, 10, 100) for rate in (0.1, 0.3) for stage in PROTOCOL_STAGES
]


@pytest.mark.parametrize(("n", "rate", "stage"), GRID)
def test_secure_sum_matches_plaintext_sum(n: int, rate: float, stage: Stage) -> None:
    rng = np.random.default_rng(n * 1000 + int(rate * 100))
    inputs = rng.uniform(-1.2, 1.2, size=(n, D))  # a few coordinates get clipped
    dropped = set(rng.choice(n, size=round(rate * n), replace=False).tolist())
    result = simulate_secure_sum(
        list(inputs), config=_config(n, rate), dropouts={stage: dropped}, seed=n + 7
    )
    expected_survivors = set(range(n)) if stage is Stage.UNMASKING else set(range(n)) - dropped
    assert set(result.survivors) == expected_survivors
    assert not result.aborted_clients
    _check(result, inputs)


def test_dropouts_at_every_stage_in_one_round() -> None:
    n = 20
    inputs = np.random.default_rng(1).normal(0, 0.5, size=(n, D))
    dropouts = {
        Stage.ADVERTISE_KEYS: {0},
        Stage.SHARE_KEYS: {5},
        Stage.MASKED_INPUT: {7, 8},
        Stage.UNMASKING: {12},
    }
    result = simulate_secure_sum(list(inputs), dropouts=dropouts, seed=3)
    assert set(result.survivors) == set(range(n)) - {0, 5, 7, 8}
    _check(result, inputs)


@pytest.mark.parametrize("n", [7, 40])
def test_secagg_plus_graph_with_dropouts(n: int) -> None:
    cfg = SecAggConfig(n_clients=n, vector_length=D, neighbours=4 if n == 7 else 12)
    assert not cfg.is_plain_secagg
    inputs = np.random.default_rng(n).uniform(-1, 1, size=(n, D))
    result = simulate_secure_sum(
        list(inputs), config=cfg, dropouts={"masked_input": {1}, "share_keys": {3}}, seed=2
    )
    _check(result, inputs)


def test_signed_advertisements_round() -> None:
    cfg = SecAggConfig(n_clients=6, vector_length=D, sign_advertisements=True)
    inputs = np.random.default_rng(2).uniform(-1, 1, size=(6, D))
    result = simulate_secure_sum(list(inputs), config=cfg, dropouts={"masked_input": {2}}, seed=1)
    _check(result, inputs)
    ads = result.server_view.messages(Stage.ADVERTISE_KEYS)
    assert all(len(a) == 30 + 64 + 2 + 64 for a in ads)


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
    ],
)
def test_too_few_survivors_abort_naming_counts(
    stage: Stage, dropped: set[int], fragment: str
) -> None:
    inputs = list(np.random.default_rng(7).uniform(-1, 1, size=(10, D)))
    with pytest.raises(ProtocolAbort) as info:
        simulate_secure_sum(inputs, dropouts={stage: dropped}, seed=0)
    assert info.value.stage == stage.value
    assert fragment in info.value.reason and "threshold = 6" in info.value.reason


def test_abort_when_a_secret_loses_its_holders(make_round: Callable[..., Any]) -> None:
    # SecAgg+ ring with k = 2 (t = 2): client u's holders are u and its two ring
    # neighbours. If u drops at masked input and both neighbours drop at
    # unmasking, u's masking key cannot be rebuilt: abort, nothing reconstructed.
    cfg = SecAggConfig(n_clients=8, vector_length=D, neighbours=2)
    r = make_round(n=8, d=D, seed=1, neighbours=2)
    u = 0
    a, b = sorted(r.server.graph[u])
    r.dropouts = {Stage.MASKED_INPUT: {u}, Stage.UNMASKING: {a, b}}
    assert cfg.t == 2
    with pytest.raises(ProtocolAbort) as info:
        r.finish()
    assert info.value.stage == "unmasking"
    # The dry run finds a secret with too few holders before rebuilding anything.
    assert "share holders survived, threshold 2" in info.value.reason
    assert "cannot rebuild the" in info.value.reason
    assert r.server.stage is Stage.ABORTED
    with pytest.raises(ProtocolAbort):
        r.server.result()


def test_client_aborts_when_its_neighbourhood_collapses() -> None:
    # Ring k = 2, t = 2: if both neighbours of client 0 never advertise keys, it
    # cannot share its secrets; it aborts (treated as a dropout) and the round
    # completes without it.
    n = 9
    cfg = SecAggConfig(n_clients=n, vector_length=D, neighbours=2)
    inputs = list(np.random.default_rng(8).uniform(-1, 1, size=(n, D)))
    probe = simulate_secure_sum(inputs, config=cfg, seed=4)
    from protocols.secagg import neighbour_graph

    graph = neighbour_graph(n, 2, probe.server_view.round_id)
    result = simulate_secure_sum(
        inputs,
        config=cfg,
        seed=4,
        dropouts={"advertise_keys": set(graph[0])},
    )
    assert 0 in result.aborted_clients
    assert "1 of client 0's 3 share holders survived" in result.aborted_clients[0]
    assert 0 not in result.survivors
    _check(result, np.array(inputs))


def test_driver_validates_arguments() -> None:
    inputs = [np.zeros(3)] * 4
    with pytest.raises(InvalidParameterError, match="`dropouts` keys"):
        simulate_secure_sum(inputs, dropouts={"setup": {1}})
    with pytest.raises(InvalidParameterError, match="unknown client ids"):
        simulate_secure_sum(inputs, dropouts={"share_keys": {9}})
    with pytest.raises(InvalidParameterError, match="`config` is for"):
        simulate_secure_sum(inputs, config=SecAggConfig(n_clients=5, vector_length=3))
    with pytest.raises(InvalidParameterError, match="at least 2"):
        simulate_secure_sum([np.zeros(3)])
