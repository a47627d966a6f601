"""The ClientApp's SecAgg+ setup checks (attack tests): with a trusted directory and a
public beacon, a device refuses a round whose identity keys were substituted or whose
beacon was ground by the server, and its state is unchanged; without them (trust on
first use) the substituted key goes through — the gap docs/deploy.md states."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from protocols.errors import MessageError
from secrelay.config import load_config
from secrelay.flower import flower_available

pytestmark = pytest.mark.skipif(
    not flower_available(), reason="flwr is not installed (the secrelay[flower] extra)"
)

DEVICES = (1, 2, 3, 4)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower's runtime sets in a ServerApp/ClientApp process before messages
    are built (here: one process plays both sides)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _public_beacon(round: int, round_id: bytes) -> bytes:
    return bytes([round % 256]) * 16 + round_id


def _setting(*, trusted: bool) -> tuple[Any, dict[int, Any], dict[int, bytes]]:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from secrelay.flower.device import handle_register
    from secrelay.flower.job import FlowerJob
    from secrelay.flower.protocol import MSG_REGISTER

    config = load_config(
        run={"name": "flower-device", "seed": 1, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 4, "samples_per_user": 10}},
        privacy={"secure_aggregation": True},  # secure randomness: keys from the OS
    )
    job = FlowerJob(config)
    contexts, keys = {}, {}
    for dev in DEVICES:
        ctx = Context(0, dev, {"device-id": dev}, RecordDict(), {})
        reply = handle_register(job, Message(RecordDict(), dev, MSG_REGISTER), ctx)
        keys[dev] = reply.content.config_records["reply"]["identity"]
        ctx.state["secrelay.contribution"] = ArrayRecord(
            {"delta": Array(np.full(6, 0.1 * dev)), "weight": Array(np.ones(1))}
        )
        ctx.state["secrelay.round"] = ConfigRecord({"round": 1})
        contexts[dev] = ctx
    if trusted:
        job.directory = lambda dev: keys[dev]
        job.beacon = _public_beacon
    return job, contexts, keys


def _setup_message(pki: tuple[bytes, ...], beacon: bytes, round_id: bytes) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict

    from secrelay.flower.protocol import MSG_SECAGG, RoundSetup

    setup = RoundSetup(
        round=1, devices=DEVICES, round_id=round_id, beacon=beacon, pki=pki, encoding="scaled"
    )
    rec = ConfigRecord({"setup": True, **setup.to_record()})
    return Message(RecordDict({"secagg": rec}), 1, MSG_SECAGG)


def test_honest_setup_is_accepted() -> None:
    from secrelay.flower.device import handle_secagg

    job, contexts, keys = _setting(trusted=True)
    round_id = os.urandom(16)
    msg = _setup_message(tuple(keys[d] for d in DEVICES), _public_beacon(1, round_id), round_id)
    reply = handle_secagg(job, msg, contexts[1])
    assert len(reply.content.config_records["reply"]["data"]) > 64  # the advertisement


@pytest.mark.parametrize("attack", ["substituted key", "ground beacon"])
def test_device_refuses_a_forged_setup_and_keeps_its_state(attack: str) -> None:
    from secrelay.flower.device import handle_secagg

    job, contexts, keys = _setting(trusted=True)
    round_id = os.urandom(16)
    pki = [keys[d] for d in DEVICES]
    beacon = _public_beacon(1, round_id)
    if attack == "substituted key":
        from protocols.secagg import IdentityKey, SecureRandom

        pki[2] = IdentityKey.generate(SecureRandom()).public_key  # the server's own key
    else:
        beacon = os.urandom(32)
    ctx = contexts[1]
    before = repr(ctx.state)
    with pytest.raises(MessageError, match=r"PKI|beacon"):
        handle_secagg(job, _setup_message(tuple(pki), beacon, round_id), ctx)
    assert repr(ctx.state) == before


def test_without_a_trusted_directory_a_substituted_key_goes_through() -> None:
    from protocols.secagg import IdentityKey, SecureRandom
    from secrelay.flower.device import handle_secagg

    job, contexts, keys = _setting(trusted=False)
    round_id = os.urandom(16)
    pki = [keys[d] for d in DEVICES]
    pki[2] = IdentityKey.generate(SecureRandom()).public_key
    reply = handle_secagg(job, _setup_message(tuple(pki), os.urandom(32), round_id), contexts[1])
    assert reply.content.config_records["reply"]["data"]
