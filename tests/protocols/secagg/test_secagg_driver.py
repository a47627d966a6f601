"""The server's stage loop (:func:`protocols.secagg.drive_server`), which the
in-process driver and the Flower app share: who is asked at each stage, the top-up
pass, replies the server rejects, and a server that is not fresh."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from protocols.errors import InvalidParameterError, MessageError
from protocols.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecureRandom,
    Stage,
    drive_server,
    make_graph,
    simulate_secure_sum,
)
from protocols.secagg.pki import IdentityDirectory, IdentityKey


def _senders(result, stage: Stage) -> set[int]:
    return {m.sender for m in result.server_view.received if m.stage is stage}


def test_clients_a_top_up_did_not_ask_stay_in_the_round() -> None:
    n = 30
    xs = [np.full(4, i / 100) for i in range(n)]  # within the default clip range
    config = SecAggConfig(n_clients=n, vector_length=4, vote_slack=0)
    res = simulate_secure_sum(xs, config=config, seed=3, dropouts={"consistency_check": {7}})
    votes = [m.sender for m in res.server_view.received if m.stage is Stage.CONSISTENCY_CHECK]
    assert len(votes) > n - 1, "a top-up pass ran (some signers voted twice)"
    assert len(set(votes)) == n - 1
    # Every live client unmasks, including those the top-up pass did not ask.
    assert _senders(res, Stage.UNMASKING) == set(range(n)) - {7}
    np.testing.assert_allclose(res.sum, np.full(4, sum(range(n)) / 100), atol=res.error_bound)


def _round(n: int, seed: int) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    rng = SecureRandom.from_seed(seed, b"test")
    keys = [IdentityKey.generate(rng) for _ in range(n)]
    config = SecAggConfig(
        n_clients=n, vector_length=3, pki=IdentityDirectory(tuple(k.public_key for k in keys))
    )
    round_id = rng.bytes(16)
    graph = make_graph(n, config.k, round_id, None)
    clients = {
        i: SecAggClient(
            i,
            np.full(3, 0.5),
            config=config,
            round_id=round_id,
            rng=SecureRandom.from_seed(seed, b"client", bytes([i])),
            identity_key=keys[i],
            graph=graph,
        )
        for i in range(n)
    }
    return SecAggServer(config=config, round_id=round_id, graph=graph), clients


def _honest(clients: Mapping[int, SecAggClient], bad: int | None = None, at: Stage | None = None):
    def exchange(stage: Stage, requests: Mapping[int, bytes | None]) -> dict[int, bytes]:
        out = {}
        for i, message in requests.items():
            if i == bad and stage is at:
                out[i] = b"\x01garbage"
            elif message is None:
                out[i] = clients[i].advertise_keys()
            else:
                out[i] = clients[i].handle(message)
        return out

    return exchange


def test_a_rejected_reply_drops_its_sender_only_when_asked_to() -> None:
    server, clients = _round(10, seed=1)
    stats = drive_server(
        server, _honest(clients, bad=4, at=Stage.MASKED_INPUT), n_clients=10, drop_rejected=True
    )
    assert set(stats.rejected) == {4}
    assert server.result().survivors == tuple(i for i in range(10) if i != 4)
    np.testing.assert_allclose(server.result().sum, np.full(3, 4.5), atol=1e-3)
    assert set(stats.server_stage_seconds) >= {Stage.ADVERTISE_KEYS, Stage.UNMASKING}

    server, clients = _round(10, seed=2)
    with pytest.raises(MessageError):
        drive_server(server, _honest(clients, bad=4, at=Stage.MASKED_INPUT), n_clients=10)


def test_a_server_past_advertise_keys_is_refused() -> None:
    server, clients = _round(6, seed=4)
    drive_server(server, _honest(clients), n_clients=6)
    with pytest.raises(InvalidParameterError, match="fresh"):
        drive_server(server, _honest(clients), n_clients=6)
