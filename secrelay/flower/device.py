"""The ClientApp's side of a secure relay round: register, train, SecAgg+ stages.

Everything a device keeps between messages lives in its Flower ``Context.state``
(the SuperNode's per-node state): its identity key (secure mode), its private state
from earlier rounds, this round's contribution, and this round's SecAgg+ progress.
A deployed SuperNode starts a fresh ClientApp process per message, so the SecAgg+
client object cannot stay in memory between stages: the device keeps the round's
32-byte secret (its protocol CSPRNG key) and the server messages it has handled,
and rebuilds its :class:`~protocols.secagg.SecAggClient` by replaying them — the
client is deterministic given its CSPRNG, so the replay reproduces its state
exactly (the cost: earlier stages' client work again, about 2.5× the client's
protocol time over the five stages). Nothing in ``Context.state`` is ever sent.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from protocols.errors import MessageError
from protocols.secagg import IdentityDirectory, IdentityKey, SecAggClient, SecureRandom, make_graph
from secrelay.federated.client import DeviceTask
from secrelay.flower.job import FlowerJob
from secrelay.flower.protocol import (
    REC_MODELS,
    REC_REPLY,
    REC_SECAGG,
    REC_TASK,
    RoundSetup,
    encode_shapes,
    get_bytes,
    get_int,
    get_list,
    round_seed,
    scaled_vector,
)
from secrelay.privacy.distributed_dp import _DDGEncoding
from secrelay.privacy.user_dp import pack_contributions

__all__ = ["device_id_of", "handle_register", "handle_secagg", "handle_train"]

_IDENTITY = "secrelay.identity"
_DEVICE = "secrelay.device"
_PRIVATE = "secrelay.private"
_CONTRIB = "secrelay.contribution"
_ROUND = "secrelay.round"


def device_id_of(job: FlowerJob, context: Context) -> int:
    """This node's device id: ``node_config["device-id"]`` on a deployed SuperNode,
    else the simulation's ``partition-id`` into the sorted population."""
    cfg = context.node_config
    if "device-id" in cfg:
        return int(str(cfg["device-id"]))
    if "partition-id" in cfg:
        return job.population[int(str(cfg["partition-id"]))]
    raise MessageError(
        "this SuperNode has no device id: start it with --node-config 'device-id=<id>'"
    )


def _identity(job: FlowerJob, context: Context, device_id: int) -> IdentityKey:
    """The device's long-term identity key: derived from the seed in reproducible mode
    (as :class:`SecureSum` derives it), else made once from OS entropy and kept."""
    if job.secure_settings.deterministic:
        rng = SecureRandom.from_seed(
            job.config.run.seed, b"secure-sum/identity", device_id.to_bytes(8, "big")
        )
        return IdentityKey.generate(rng)
    if _IDENTITY not in context.state.config_records:
        context.state[_IDENTITY] = ConfigRecord({"private": os.urandom(32)})
    return IdentityKey(get_bytes(context.state.config_records[_IDENTITY], "private"))


def handle_register(job: FlowerJob, msg: Message, context: Context) -> Message:
    """Reply with this device's id and identity public key."""
    dev = device_id_of(job, context)
    context.state[_DEVICE] = ConfigRecord({"id": dev})
    key = _identity(job, context, dev)
    return Message(
        RecordDict({REC_REPLY: ConfigRecord({"device": dev, "identity": key.public_key})}),
        reply_to=msg,
    )


def _my_device(context: Context) -> int:
    if _DEVICE not in context.state.config_records:
        raise MessageError("this device was not registered for the run")
    return get_int(context.state.config_records[_DEVICE], "id")


def handle_train(job: FlowerJob, msg: Message, context: Context) -> Message:
    """Run the device program on the downloaded models; keep the contribution here
    and reply with its names and shapes only."""
    dev = _my_device(context)
    task_rec = msg.content.config_records[REC_TASK]
    models = {k: np.asarray(v.numpy()) for k, v in msg.content.array_records[REC_MODELS].items()}
    private: dict[str, Any] = {}
    if _PRIVATE in context.state.config_records:
        # The device's own earlier state, written by this device (never received).
        private = pickle.loads(get_bytes(context.state.config_records[_PRIVATE], "pickle"))
    task = DeviceTask(
        device_id=dev,
        round=get_int(task_rec, "round"),
        models=models,
        seed=get_int(task_rec, "seed"),
        private=private,
    )
    out = job.program.run(job.device_data(dev), task)
    keep = {k: v for k, v in out.private.items() if k != "predictions"}
    private.update(keep)
    context.state[_PRIVATE] = ConfigRecord({"pickle": pickle.dumps(private)})
    context.state[_CONTRIB] = ArrayRecord(
        {k: _array(np.asarray(v)) for k, v in out.contribution.items()}
    )
    context.state[_ROUND] = ConfigRecord({"round": task.round})
    reply = ConfigRecord({"shapes": encode_shapes(out.contribution)})
    return Message(RecordDict({REC_REPLY: reply}), reply_to=msg)


def _array(value: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def _vector(
    job: FlowerJob, setup: RoundSetup, dev: int, contribution: dict[str, np.ndarray]
) -> tuple[np.ndarray, float, int]:
    """This device's protocol input and the (clip range, bits) it is encoded with —
    the device side of :meth:`SecureSum.aggregate` / the DP sum's encoding."""
    s = job.secure_settings
    if setup.encoding == "scaled":
        vec = scaled_vector(contribution, s)
        return vec, 1.0, s.precision_bits
    dp = job.dp_sum
    if dp is None:
        raise MessageError("the server asked for a DP integer encoding; this run has no DP sum")
    packed, shapes = pack_contributions({dev: contribution}, dp.spec, dp.clipping_norm)
    enc = _DDGEncoding(dp, setup.dimension)  # type: ignore[arg-type]
    n = len(setup.devices)
    bits = int(enc.precision_bits(round=setup.round, num_devices=n, shapes=shapes))
    v = np.asarray(enc.encode(packed[dev], round=setup.round, device=dev, num_devices=n)).ravel()
    half = 1 << (bits - 1)
    if int(v.min()) < -half or int(v.max()) >= half:
        raise MessageError(f"device {dev}: encoded share exceeds the {bits}-bit headroom")
    return v.astype(np.float64) + 0.5, ((1 << bits) - 1) / 2.0, bits


def _client(job: FlowerJob, context: Context, setup: RoundSetup, secret: bytes) -> SecAggClient:
    dev = _my_device(context)
    contribution = {
        k: np.asarray(v.numpy()) for k, v in context.state.array_records[_CONTRIB].items()
    }
    vec, clip_range, bits = _vector(job, setup, dev, contribution)
    config = setup.protocol_config(
        job.secure_settings, vector_length=int(vec.size), clip_range=clip_range, bits=bits
    )
    identity = None
    if config.sign_advertisements:
        identity = _identity(job, context, dev)
        idx = setup.client_id(dev)
        if len(setup.pki) != len(setup.devices) or setup.pki[idx] != identity.public_key:
            raise MessageError("the round's PKI does not list this device's identity key")
        import dataclasses

        config = dataclasses.replace(config, pki=IdentityDirectory(setup.pki))
    _check_public_values(job, setup)
    idx = setup.client_id(dev)
    if job.secure_settings.deterministic:
        rng = SecureRandom.from_seed(
            round_seed(job.config.run.seed, setup.round), b"client", idx.to_bytes(4, "big")
        )
    else:
        rng = SecureRandom(secret)
    beacon = setup.beacon or None
    return SecAggClient(
        idx,
        vec,
        config=config,
        round_id=setup.round_id,
        rng=rng,
        identity_key=identity,
        graph=make_graph(len(setup.devices), config.k, setup.round_id, beacon),
        beacon=beacon,
    )


def _check_public_values(job: FlowerJob, setup: RoundSetup) -> None:
    """Refuse a setup whose PKI or beacon differs from the device's trusted sources
    (when it has them): a malicious server could otherwise substitute identity keys
    or grind the beacon that fixes the SecAgg+ graph."""
    if job.directory is not None:
        if len(setup.pki) != len(setup.devices):
            raise MessageError("the round's setup lists no PKI; the trusted directory has one")
        for dev, key in zip(setup.devices, setup.pki):
            if key != job.directory(dev):
                raise MessageError(
                    f"the round's PKI lists a key for device {dev} that the trusted "
                    "directory does not: refusing the round"
                )
    public = job.beacon
    if (
        public is not None
        and not job.secure_settings.deterministic
        and setup.beacon != public(setup.round, setup.round_id)
    ):
        raise MessageError(
            f"round {setup.round}'s beacon is not the public beacon: refusing the round"
        )


def handle_secagg(job: FlowerJob, msg: Message, context: Context) -> Message:
    """One SecAgg+ stage: the setup (first stage) or a server stage message."""
    rec = msg.content.config_records[REC_SECAGG]
    if _ROUND not in context.state.config_records or _CONTRIB not in context.state.array_records:
        raise MessageError("SecAgg+ message before this device trained in the round")
    state = context.state.config_records[_ROUND]
    if "setup" in rec:
        setup = RoundSetup.from_record(rec)
        trained = get_int(state, "round")
        if setup.round != trained:
            raise MessageError(
                f"setup for round {setup.round}; this device trained round {trained}"
            )
        secret = os.urandom(32)
        client = _client(job, context, setup, secret)
        out = client.advertise_keys()
        context.state[_ROUND] = ConfigRecord({**setup.to_record(), "secret": secret})
        return Message(RecordDict({REC_REPLY: ConfigRecord({"data": out})}), reply_to=msg)
    if "secret" not in state:
        raise MessageError("SecAgg+ stage message before the round setup")
    setup = RoundSetup.from_record(state)
    done: list[bytes] = get_list(state, "messages", bytes)
    client = _client(job, context, setup, get_bytes(state, "secret"))
    client.advertise_keys()
    for earlier in done:  # replay: rebuilds this round's exact client state
        client.handle(earlier)
    data = get_bytes(rec, "data")
    out = client.handle(data)
    context.state[_ROUND] = ConfigRecord({**dict(state), "messages": [*done, data]})
    return Message(RecordDict({REC_REPLY: ConfigRecord({"data": out})}), reply_to=msg)
