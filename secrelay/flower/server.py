"""The ServerApp's side: the federated loop with Flower as its transport.

The round is the in-process one: :class:`~secrelay.federated.loop.FederatedLoop`
samples, the strategy downloads and aggregates, the privacy plan composes DP in. Two
parts are swapped for Flower-backed ones, through the loop's own joints:

- :class:`FlowerExecutor` (an :class:`~secrelay.federated.executor.Executor`) sends each
  sampled device a ``train`` message and gets back only its contribution's *shapes*;
  the loop sees zero placeholders of those shapes, never a device's values.
- :class:`FlowerSecureSum` (a :class:`~secrelay.federated.secure.SecureSum`) runs the
  SecAgg+ server (:class:`protocols.secagg.SecAggServer`) against the devices over
  Flower messages; each device computes its own protocol input from the contribution
  it kept. A user-level DP sum (:class:`~secrelay.privacy.distributed_dp.DistributedGaussianSum`)
  wraps it unchanged: the devices add their noise shares, the server decodes.

With ``privacy.randomness = "reproducible"`` the round's keys, masks and rounding
derive from the seed on each device exactly as in-process, so a Flower run and an
in-process run give the same models (the test checks it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, Message, RecordDict
from flwr.serverapp import Grid

from protocols.dp.ledger import LedgerRecord
from protocols.errors import ConfigError, ProtocolAbort
from protocols.secagg import (
    IdentityDirectory,
    SecAggConfig,
    SecAggServer,
    SecureRandom,
    SecureSumResult,
    Stage,
    drive_server,
    make_graph,
)
from secrelay.config import RunConfig
from secrelay.federated.aggregation import SumProtocol, SumResult
from secrelay.federated.client import (
    ClientProgram,
    DeviceData,
    DeviceOutput,
    DeviceTask,
    PlainTrainer,
)
from secrelay.federated.executor import Executor
from secrelay.federated.loop import FederatedLoop
from secrelay.federated.messages import SERVER, MaskedUpload
from secrelay.federated.secure import DeviceEncoding, SecureSum, SecureSumSettings
from secrelay.federated.strategies import Strategy
from secrelay.federated.transcript import Channel
from secrelay.flower.job import FlowerJob
from secrelay.flower.protocol import (
    MSG_REGISTER,
    MSG_SECAGG,
    MSG_TRAIN,
    REC_MODELS,
    REC_REPLY,
    REC_SECAGG,
    REC_TASK,
    RoundSetup,
    decode_shapes,
    get_bytes,
    get_int,
    round_seed,
)
from secrelay.methods.cloud import make_train_config, train_cloud_model

__all__ = [
    "FlowerExecutor",
    "FlowerRunResult",
    "FlowerSecureSum",
    "FlowerTransport",
    "run_flower_server",
]


class FlowerTransport:
    """Device-addressed request/reply over a Flower :class:`Grid`.

    Parameters
    ----------
    grid:
        The ServerApp's grid.
    timeout:
        Seconds to wait for a stage's replies; a device that has not replied by then
        has dropped out (``None``: wait for all).
    """

    def __init__(self, grid: Grid, *, timeout: float | None = None) -> None:
        self.grid = grid
        self.timeout = timeout
        self.node_of: dict[int, int] = {}
        self.identity: dict[int, bytes] = {}
        self.bytes_sent: dict[int, int] = {}

    def register(self, population: Sequence[int], *, wait: float = 120.0) -> None:
        """Ask every connected node for its device id and identity key.

        Raises
        ------
        ConfigError
            When some device of the population has no node after ``wait`` seconds.
        """
        deadline = time.monotonic() + wait
        nodes: list[int] = []
        while True:
            nodes = sorted(int(n) for n in self.grid.get_node_ids())
            if len(nodes) >= len(population) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        replies = self._exchange(MSG_REGISTER, {n: RecordDict() for n in nodes}, timeout=wait)
        wanted = set(population)
        for node, rec in replies.items():
            dev = get_int(rec, "device")
            if dev not in wanted:
                raise ConfigError(f"node {node} says it is device {dev}, not in the population")
            if dev in self.node_of and self.node_of[dev] != node:
                raise ConfigError(f"two nodes claim device {dev}")
            self.node_of[dev] = node
            self.identity[dev] = get_bytes(rec, "identity")
        missing = sorted(wanted - set(self.node_of))
        if missing:
            raise ConfigError(
                f"{len(missing)} device(s) of the population have no SuperNode "
                f"(first: {missing[:5]}); start one per device"
            )

    def _exchange(
        self, kind: str, contents: Mapping[int, RecordDict], *, timeout: float | None
    ) -> dict[int, ConfigRecord]:
        messages = [
            Message(content, dst_node_id=node, message_type=kind)
            for node, content in contents.items()
        ]
        out: dict[int, ConfigRecord] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                continue  # the device failed or refused: it has dropped out
            out[int(reply.metadata.src_node_id)] = reply.content.config_records[REC_REPLY]
        return out

    def send(self, kind: str, contents: Mapping[int, RecordDict]) -> dict[int, ConfigRecord]:
        """Send ``contents`` (device id → content); replies by device id (missing:
        the device dropped out or failed)."""
        by_node = {self.node_of[d]: c for d, c in contents.items()}
        device = {n: d for d, n in self.node_of.items()}
        replies = self._exchange(kind, by_node, timeout=self.timeout)
        return {device[n]: r for n, r in replies.items() if n in device}


class FlowerExecutor(Executor):
    """Runs each sampled device's training on its own ClientApp.

    The program is not sent: each device runs the program its own copy of the app
    builds from the run config (:class:`~secrelay.flower.job.FlowerJob`). What
    comes back is the contribution's names and shapes; the returned
    :class:`DeviceOutput` holds zero placeholders that only a :class:`FlowerSecureSum`
    may consume (it never reads their values).
    """

    def __init__(self, transport: FlowerTransport, population: Sequence[int]) -> None:
        self.transport = transport
        self.population = tuple(population)
        self.trained: set[int] = set()
        # Placeholder values of names whose value is public by construction (a user-level
        # DP sum's per-device counts, which must be exactly 1); every other name is 0.
        self.public_values: dict[str, float] = {}

    def start(self, devices: Mapping[int, DeviceData]) -> None:
        if not self.transport.node_of:
            self.transport.register(self.population)

    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        contents = {}
        for t in tasks:
            models = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in sorted(t.models.items())}
            )
            task = ConfigRecord({"round": int(t.round), "seed": int(t.seed)})
            contents[t.device_id] = RecordDict({REC_MODELS: models, REC_TASK: task})
        replies = self.transport.send(MSG_TRAIN, contents)
        self.trained = set(replies)
        out = []
        for t in tasks:
            if t.device_id not in replies:
                raise ProtocolAbort(
                    "train", f"device {t.device_id} did not return from local training"
                )
            shapes = decode_shapes(str(replies[t.device_id]["shapes"]))
            placeholders = {
                k: np.full(s, self.public_values.get(k, 0.0)) for k, s in shapes.items()
            }
            out.append(DeviceOutput(contribution=placeholders))
        return out


class FlowerSecureSum(SecureSum):
    """SecAgg+ between this server and the devices' ClientApps.

    The contributions it is given are the :class:`FlowerExecutor`'s placeholders:
    each device encodes its real contribution itself (the per-name scaled encoding,
    or the integer encoding of a user-level DP sum that wraps this protocol).
    """

    def __init__(
        self,
        transport: FlowerTransport,
        settings: SecureSumSettings | None = None,
        *,
        seed: int = 0,
        beacon: Callable[[int, bytes], bytes] | None = None,
    ) -> None:
        super().__init__(settings, seed=seed)
        self.transport = transport
        self.beacon = beacon
        self._encoding: str = "scaled"
        self._dimension = 0

    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
        device_encoding: DeviceEncoding | None = None,
    ) -> SumResult:
        enc = device_encoding or self.device_encoding
        self._encoding = "scaled" if enc is None else "integer"
        self._dimension = int(getattr(enc, "dimension", 0))
        return super().aggregate(
            round, contributions, channel, dropouts=dropouts, device_encoding=device_encoding
        )

    def _run(
        self,
        round: int,
        devices: list[int],
        vectors: list[np.ndarray],
        config: SecAggConfig,
        dropouts: Mapping[int, str],
        channel: Channel,
    ) -> SecureSumResult:
        del vectors  # placeholders: the devices encode their own contributions
        n = len(devices)
        if self.settings.deterministic:
            master = SecureRandom.from_seed(round_seed(self.seed, round), b"driver")
            round_id, beacon = master.bytes(16), None
        else:
            round_id = os.urandom(16)
            # A public beacon when configured; else a stand-in for one (docs/deploy.md).
            beacon = self.beacon(round, round_id) if self.beacon else os.urandom(32)
        pki: tuple[bytes, ...] = ()
        if config.sign_advertisements:
            pki = tuple(self.transport.identity[d] for d in devices)
            config = dataclasses.replace(config, pki=IdentityDirectory(pki))
        setup = RoundSetup(
            round=round,
            devices=tuple(devices),
            round_id=round_id,
            beacon=beacon or b"",
            pki=pki,
            encoding=self._encoding,
            dimension=self._dimension,
        )
        graph = make_graph(n, config.k, round_id, beacon)
        t0 = time.perf_counter()
        server = SecAggServer(config=config, round_id=round_id, graph=graph, beacon=beacon)
        server_seconds = time.perf_counter() - t0
        setup_rec: dict[str, ConfigRecordValues] = {"setup": True, **setup.to_record()}
        position = {d: i for i, d in enumerate(devices)}

        def exchange(stage: Stage, requests: Mapping[int, bytes | None]) -> dict[int, bytes]:
            contents = {
                devices[i]: RecordDict(
                    {
                        REC_SECAGG: ConfigRecord(
                            dict(setup_rec) if message is None else {"data": message}
                        )
                    }
                )
                for i, message in requests.items()
            }
            answered = {}
            for d, r in self.transport.send(MSG_SECAGG, contents).items():
                data = r.get("data")
                if isinstance(data, bytes):  # anything else: the device has dropped out
                    answered[position[d]] = data
            return answered

        stats = drive_server(server, exchange, n_clients=n, drop_rejected=True)
        server_seconds += stats.server_seconds
        result = server.result()
        for msg in server.view.received:
            channel.send(
                MaskedUpload(
                    sender=devices[msg.sender],
                    receiver=SERVER,
                    round=round,
                    stage=msg.stage.value,
                    payload=msg.data,
                )
            )
        stage_zero = dict.fromkeys(config.stages, 0.0)
        return SecureSumResult(
            sum=result.sum,
            parts=(result.sum,),
            survivors=result.survivors,
            server_view=server.view,
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            client_seconds=dict.fromkeys(range(n), 0.0),
            server_seconds=server_seconds,
            aborted_clients={},
            error_bound=config.encoder.error_bound(len(result.survivors)),
            config=config,
            client_stage_seconds=stage_zero,
            server_stage_seconds=dict(stage_zero),
        )


@dataclass(frozen=True)
class FlowerRunResult:
    """The outcome of a Flower run: final models and the server-side round records."""

    models: dict[str, np.ndarray]
    rounds: tuple[dict[str, Any], ...]
    privacy_records: tuple[LedgerRecord, ...]


def run_flower_server(
    grid: Grid,
    config: RunConfig,
    *,
    timeout: float | None = None,
    initial_models: Mapping[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
    beacon: Callable[[int, bytes], bytes] | None = None,
) -> FlowerRunResult:
    """Run ``config`` (``method.name = "federated"``) over the devices on ``grid``.

    The server trains the cloud model on the cloud data (unless ``initial_models``
    is given), then runs ``federated.rounds`` rounds of the loop with Flower as its
    transport. Device-side evaluation is not part of the app (the server holds no
    device test data in a deployment).
    """
    job = FlowerJob(config, beacon=beacon)
    transport = FlowerTransport(grid, timeout=timeout)
    executor = FlowerExecutor(transport, job.population)
    if initial_models is None:
        cloud = train_cloud_model(
            job.model_spec, job.data.cloud, make_train_config(config.cloud), seed=config.run.seed
        )
        initial_models = {"global": cloud}
    strategy: Strategy = job.strategy(initial_models)
    base: SumProtocol = FlowerSecureSum(
        transport, job.secure_settings, seed=config.run.seed, beacon=job.beacon
    )
    # The loop needs the population's ids only: the server holds no device data.
    population = cast("dict[int, DeviceData]", dict.fromkeys(job.population))
    loop: FederatedLoop = job.plan.build_loop(
        strategy,
        job.strategy().client_program(job.model_spec, PlainTrainer(job.train_config)),
        population,
        job.model_spec,
        config=job.round_config(),
        seed=config.run.seed,
        rounds=config.federated.rounds,
        sum_protocol=base,
        channel=Channel(),
        executor=executor,
    )
    spec = getattr(loop.sum_protocol, "spec", None)
    if spec is not None:  # a user-level DP sum: its public counts are 1 by construction
        executor.public_values = dict.fromkeys(spec.public_counts, 1.0)
    records: list[dict[str, Any]] = []
    ledger: list[LedgerRecord] = []
    try:
        for t in range(1, config.federated.rounds + 1):
            rec = loop.run_round(t, evaluate=False)
            records.append(rec.as_dict())
            ledger.extend(rec.privacy_records)
            log(
                f"secrelay round {t}: {len(rec.sampled)} sampled, {len(rec.survivors)} in the "
                f"secure sum, aborted={rec.aborted}"
            )
    finally:
        loop.close()
    return FlowerRunResult(
        models={k: np.array(v, copy=True) for k, v in strategy.models.items()},
        rounds=tuple(records),
        privacy_records=tuple(ledger),
    )
