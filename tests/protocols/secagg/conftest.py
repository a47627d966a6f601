"""Shared fixtures for the secure-aggregation tests: a step-by-step round harness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.secagg import (
    PROTOCOL_STAGES,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecureRandom,
    Stage,
)
from protocols.secagg.server import AggregateResult


class Round:
    """One deterministic round driven stage by stage (all randomness from ``seed``)."""

    def __init__(
        self,
        n: int = 5,
        d: int = 6,
        seed: int = 0,
        dropouts: dict[Stage, set[int]] | None = None,
        **cfg: Any,
    ) -> None:
        self.config = SecAggConfig(n_clients=n, vector_length=d, **cfg)
        master = SecureRandom.from_seed(seed, b"test-round")
        self.round_id = master.bytes(16)
        self.inputs = np.random.default_rng(seed).uniform(-1, 1, size=(n, d))
        ident: dict[int, Ed25519PrivateKey] = {}
        pub: dict[int, bytes] = {}
        if self.config.sign_advertisements:
            for i in range(n):
                ident[i] = Ed25519PrivateKey.from_private_bytes(master.bytes(32))
                pub[i] = ident[i].public_key().public_bytes_raw()
        self.identity_keys = ident
        self.identity_public = pub
        self.clients = [
            SecAggClient(
                i,
                self.inputs[i],
                config=self.config,
                round_id=self.round_id,
                rng=SecureRandom.from_seed(seed, b"client", bytes([i])),
                identity_key=ident.get(i),
                identity_public_keys=pub or None,
            )
            for i in range(n)
        ]
        self.server = SecAggServer(
            config=self.config, round_id=self.round_id, identity_public_keys=pub or None
        )
        self.dropouts = dropouts or {}
        self.active = set(range(n))
        self.outgoing: dict[int, bytes] = {}
        self.stage_index = 0
        #: stage -> client id -> message the client sent
        self.sent: dict[Stage, dict[int, bytes]] = {}
        #: stage -> client id -> message the server sent (consumed at that stage)
        self.received: dict[Stage, dict[int, bytes]] = {}

    @property
    def stage(self) -> Stage:
        return PROTOCOL_STAGES[self.stage_index]

    def client_replies(
        self, before_client: Callable[[int, SecAggClient], None] | None = None
    ) -> dict[int, bytes]:
        """Every active client's message for the current stage."""
        stage = self.stage
        self.active -= self.dropouts.get(stage, set())
        replies = {}
        for i in sorted(self.active):
            client = self.clients[i]
            if before_client is not None:
                before_client(i, client)
            if stage is Stage.ADVERTISE_KEYS:
                replies[i] = client.advertise_keys()
            elif i in self.outgoing:
                self.received.setdefault(stage, {})[i] = self.outgoing[i]
                replies[i] = client.handle(self.outgoing[i])
        self.active &= set(replies)
        self.sent[stage] = replies
        return replies

    def deliver(self, replies: dict[int, bytes]) -> None:
        for data in replies.values():
            self.server.receive(data)

    def advance(self) -> dict[int, bytes]:
        self.outgoing = self.server.advance()
        self.stage_index += 1
        return self.outgoing

    def run_stage(self) -> dict[int, bytes]:
        replies = self.client_replies()
        self.deliver(replies)
        self.advance()
        return replies

    def run_to(self, stage: Stage) -> None:
        """Run complete stages until ``stage`` is the current one."""
        while self.stage is not stage:
            self.run_stage()

    def finish(self) -> AggregateResult:
        while self.stage_index < len(PROTOCOL_STAGES):
            self.run_stage()
        return self.server.result()


@pytest.fixture(scope="session")
def make_round() -> Callable[..., Round]:
    """The :class:`Round` harness class."""
    return Round


@pytest.fixture(scope="module")
def reference_round() -> Round:
    """A completed round with one dropout at masked input (all message kinds occur)."""
    r = Round(n=6, d=5, seed=11, dropouts={Stage.MASKED_INPUT: {4}})
    r.finish()
    return r
