"""The Flower app's SecAgg+ server loop (:class:`FlowerSecureSum`) with dropouts at the
consistency check: the server runs the top-up pass over Flower messages and the sum
is exact; a device that dies at the check or answers garbage leaves the round, which
completes without it. The devices are the real ClientApp handlers
(:func:`secrelay.flower.device.handle_secagg`, which rebuild their client by replay),
reached through an in-process stand-in for the Flower transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from protocols.secagg import SecAggConfig
from protocols.secagg.messages import MessageType, peek_type
from secrelay.config import load_config
from secrelay.flower import flower_available

pytestmark = [
    pytest.mark.skipif(
        not flower_available(), reason="flwr is not installed (the secrelay[flower] extra)"
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

N_DEVICES = 14


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower's runtime sets before messages are built (one process plays all)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _InProcessTransport:
    """Stands in for :class:`~secrelay.flower.server.FlowerTransport`: delivers each
    message to the device's ClientApp handler and returns the replies. ``drop`` maps a
    message type to devices that never answer it (a device that has died stays dead);
    ``garbage`` to devices that answer it with bytes the server must reject."""

    def __init__(
        self,
        job: Any,
        contexts: Mapping[int, Any],
        identity: Mapping[int, bytes],
        *,
        drop: Mapping[MessageType, set[int]] | None = None,
        garbage: Mapping[MessageType, set[int]] | None = None,
    ) -> None:
        self.job, self.contexts, self.identity = job, contexts, dict(identity)
        self.drop, self.garbage = drop or {}, garbage or {}
        self.dead: set[int] = set()
        self.exchanges: list[tuple[MessageType | None, tuple[int, ...]]] = []

    def send(self, kind: str, contents: Mapping[int, Any]) -> dict[int, Any]:
        from flwr.app import ConfigRecord, Message

        from secrelay.flower.device import handle_secagg

        types = set()
        out = {}
        for dev, content in sorted(contents.items()):
            rec = content.config_records["secagg"]
            mtype = peek_type(rec["data"]) if "data" in rec else None
            types.add(mtype)
            if mtype is not None and dev in self.drop.get(mtype, set()):
                self.dead.add(dev)
            if dev in self.dead:
                continue
            if mtype is not None and dev in self.garbage.get(mtype, set()):
                out[dev] = ConfigRecord({"data": b"\x01not a protocol message"})
                continue
            reply = handle_secagg(self.job, Message(content, dev, kind), self.contexts[dev])
            out[dev] = reply.content.config_records["reply"]
        assert len(types) == 1, "one stage per exchange"
        self.exchanges.append((types.pop(), tuple(sorted(contents))))
        return out


def _setting(
    n_users: int = N_DEVICES, **privacy: Any
) -> tuple[Any, dict[int, Any], dict[int, bytes], dict[int, Any]]:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from secrelay.flower.device import handle_register
    from secrelay.flower.job import FlowerJob
    from secrelay.flower.protocol import MSG_REGISTER

    config = load_config(
        run={"name": "flower-secure-sum", "seed": 3, "progress": False},
        data={"name": "synthetic", "options": {"n_users": n_users, "samples_per_user": 10}},
        privacy={"secure_aggregation": True, **privacy},  # keys from the OS
    )
    job = FlowerJob(config)
    rng = np.random.default_rng(0)
    contexts, keys, contributions = {}, {}, {}
    for dev in job.population:
        ctx = Context(0, dev, {"device-id": dev}, RecordDict(), {})
        reply = handle_register(job, Message(RecordDict(), dev, MSG_REGISTER), ctx)
        keys[dev] = reply.content.config_records["reply"]["identity"]
        contributions[dev] = {"delta": rng.uniform(-50.0, 50.0, 6), "weight": np.ones(1)}
        ctx.state["secrelay.contribution"] = ArrayRecord(
            {k: Array(v) for k, v in contributions[dev].items()}
        )
        ctx.state["secrelay.round"] = ConfigRecord({"round": 1})
        contexts[dev] = ctx
    return job, contexts, keys, contributions


def _aggregate(job: Any, transport: _InProcessTransport, population: tuple[int, ...]) -> Any:
    from secrelay.federated.transcript import Channel
    from secrelay.flower.server import FlowerSecureSum

    secure = FlowerSecureSum(transport, job.secure_settings, seed=job.config.run.seed)  # type: ignore[arg-type]
    placeholders = {dev: {"delta": np.zeros(6), "weight": np.zeros(1)} for dev in population}
    return secure.aggregate(1, placeholders, Channel())


def _expected(contributions: Mapping[int, Any], survivors: tuple[int, ...]) -> np.ndarray:
    return np.sum([contributions[d]["delta"] for d in survivors], axis=0)


def test_dropouts_at_the_consistency_check_run_the_top_up_pass_over_flower() -> None:
    job, contexts, keys, contributions = _setting(30, secagg_vote_slack=0)
    population = job.population
    cfg = SecAggConfig(n_clients=len(population), vector_length=8, vote_slack=0)
    assert cfg.active_security and cfg.quorum < len(population) - 2, "room for a top-up"
    # A device dies at the check: the survivors it was to vote for are short.
    dying = {population[7]}
    transport = _InProcessTransport(
        job, contexts, keys, drop={MessageType.CONSISTENCY_REQUEST: dying}
    )
    result = _aggregate(job, transport, population)
    checks = [
        devs for mtype, devs in transport.exchanges if mtype is MessageType.CONSISTENCY_REQUEST
    ]
    assert len(checks) == 2, "the server stayed at the check once for the top-up pass"
    assert set(checks[1]) < set(checks[0]) - dying, "the top-up asks only some signers"
    # Devices the top-up did not ask are still in the round: all live ones unmask.
    (unmask,) = [d for mtype, d in transport.exchanges if mtype is MessageType.FORWARDED_VOTES]
    assert set(unmask) == set(population) - dying
    # Their masked inputs were in: a drop at the check does not remove an input.
    assert result.survivors == population
    np.testing.assert_allclose(
        result.sums["delta"], _expected(contributions, population), atol=0.05
    )


def test_a_device_answering_garbage_is_dropped_and_the_round_completes() -> None:
    job, contexts, keys, contributions = _setting()
    population = job.population
    bad = population[4]
    transport = _InProcessTransport(
        job, contexts, keys, garbage={MessageType.SHARE_DELIVERY: {bad}}
    )
    result = _aggregate(job, transport, population)
    expected_survivors = tuple(d for d in population if d != bad)
    assert result.survivors == expected_survivors
    np.testing.assert_allclose(
        result.sums["delta"], _expected(contributions, expected_survivors), atol=0.05
    )
    # Dropped after its garbage: never asked again.
    later = [devs for mtype, devs in transport.exchanges[3:]]
    assert all(bad not in devs for devs in later)
