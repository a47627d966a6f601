"""Shared fixtures for the secure-aggregation tests: a step-by-step round harness."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols.secagg import (
    IdentityDirectory,
    IdentityKey,
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
        config = SecAggConfig(n_clients=n, vector_length=d, **cfg)
        master = SecureRandom.from_seed(seed, b"test-round")
        self.round_id = master.bytes(16)
        self.inputs = np.random.default_rng(seed).uniform(-1, 1, size=(n, d))
        ident: dict[int, IdentityKey] = {}
        pub: dict[int, bytes] = {}
        if config.sign_advertisements:
            for i in range(n):
                ident[i] = IdentityKey.generate(master)
                pub[i] = ident[i].public_key
            if config.pki is None:
                config = dataclasses.replace(config, pki=IdentityDirectory.from_mapping(pub, n))
        self.config = config
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
            )
            for i in range(n)
        ]
        self.server = SecAggServer(config=self.config, round_id=self.round_id)
        self.dropouts = dropouts or {}
        self.active = set(range(n))
        self.outgoing: dict[int, bytes] = {}
        self.stage_index = 0
        #: the server stayed at the consistency check for a top-up pass
        self.top_up = False
        #: client id -> top-up vote sent / top-up request received
        self.top_up_sent: dict[int, bytes] = {}
        self.top_up_received: dict[int, bytes] = {}
        #: stage -> client id -> message the client sent
        self.sent: dict[Stage, dict[int, bytes]] = {}
        #: stage -> client id -> message the server sent (consumed at that stage)
        self.received: dict[Stage, dict[int, bytes]] = {}

    @property
    def stage(self) -> Stage:
        return self.config.stages[self.stage_index]

    def client_replies(
        self, before_client: Callable[[int, SecAggClient], None] | None = None
    ) -> dict[int, bytes]:
        """Every active client's message for the current stage."""
        stage = self.stage
        if not self.top_up:
            self.active -= self.dropouts.get(stage, set())
        received: dict[int, bytes] = {}
        replies = {}
        asked = set()
        for i in sorted(self.active):
            client = self.clients[i]
            if before_client is not None:
                before_client(i, client)
            if stage is Stage.ADVERTISE_KEYS:
                replies[i] = client.advertise_keys()
            elif i in self.outgoing:
                asked.add(i)
                received[i] = self.outgoing[i]
                replies[i] = client.handle(self.outgoing[i])
        if self.top_up:
            self.active -= asked - set(replies)
            self.top_up_sent, self.top_up_received = replies, received
        else:
            if received:
                self.received.setdefault(stage, {}).update(received)
            self.active &= set(replies)
            self.sent[stage] = replies
        return replies

    def deliver(self, replies: dict[int, bytes]) -> None:
        for data in replies.values():
            self.server.receive(data)

    def advance(self) -> dict[int, bytes]:
        before = self.server.stage
        self.outgoing = self.server.advance()
        self.top_up = self.server.stage is before  # the consistency check's top-up pass
        if not self.top_up:
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
        while self.stage_index < len(self.config.stages):
            self.run_stage()
        return self.server.result()


@pytest.fixture(scope="session")
def make_round() -> Callable[..., Round]:
    """The :class:`Round` harness class."""
    return Round


@pytest.fixture(scope="module")
def reference_round() -> Round:
    """A completed passive round with one dropout at masked input."""
    r = Round(n=6, d=5, seed=11, dropouts={Stage.MASKED_INPUT: {4}}, active_security=False)
    r.finish()
    return r
