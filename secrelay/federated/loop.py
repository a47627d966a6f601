"""The federated round loop: sample, download, train, sum, aggregate, evaluate.

One :class:`FederatedLoop` owns a strategy, the device programs, a sum protocol,
the channel (and its transcript) and an executor. It talks to devices only through
the channel; the devices' private state lives in a :class:`DeviceStore` that the
server side never reads.

Randomness. Who drops out and when, and each device's training seed, derive from
``SeedSequence([seed, t, ...])``. Who is sampled follows the loop's ``randomness``:
``"reproducible"`` derives it from the seed too, so a run resumed from a checkpoint
replays exactly the rounds an uninterrupted run would; ``"secure"`` draws each
round's sample once from the OS CSPRNG (:class:`protocols.dp.SecureGenerator`),
when it is first asked for — the budget dry run — and the round reuses that draw,
so amplification by sampling holds against whoever knows the seed. A secure draw is
not checkpointed: a round interrupted before its checkpoint is redrawn on resume,
and its first release stays in the privacy ledger (a second, independent release).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from protocols.dp.ledger import LedgerRecord
from protocols.dp.rng import RandomGenerator, Randomness, SecureGenerator, check_randomness
from protocols.errors import InvalidParameterError, ProtocolAbort
from secrelay.data.dataset import CTRDataset
from secrelay.federated.aggregation import PlaintextSum, SumProtocol
from secrelay.federated.client import (
    ClientProgram,
    DeviceData,
    DeviceOutput,
    DeviceTask,
    ModelSpec,
    load_flat_parameters,
)
from secrelay.federated.executor import Executor, SequentialExecutor
from secrelay.federated.messages import SERVER, ModelDownload
from secrelay.federated.strategies import Strategy
from secrelay.federated.transcript import Channel
from secrelay.metrics import Metrics, evaluate_predictions
from secrelay.training import predict

__all__ = [
    "DeviceStore",
    "FederatedLoop",
    "RoundAborted",
    "RoundConfig",
    "RoundRecord",
    "evaluate_keyed",
    "sample_devices",
]

PRE_PROTOCOL_STAGES = ("download", "train")


class RoundAborted(ProtocolAbort):
    """Too few devices survived a round; the server state is unchanged."""


def sample_devices(
    device_ids: Sequence[int] | np.ndarray,
    config: RoundConfig,
    *,
    seed: int | None = None,
    round: int = 0,
    generator: RandomGenerator | None = None,
) -> list[int]:
    """The devices sampled in ``round`` (sorted): Poisson at ``config.sample_rate`` or
    ``config.clients_per_round`` without replacement.

    Exactly one of ``seed`` and ``generator``. With ``seed`` the sample depends on the
    seed, the round and the device ids only (never on data), so the sampling schedule
    is public and may be used before a run, e.g. to calibrate noise — and known to
    whoever knows the seed. With ``generator`` (a :class:`~protocols.dp.SecureGenerator`
    for secure randomness) it is one fresh draw: each device independently below
    ``sample_rate``, or the ``clients_per_round`` devices with the smallest uniform
    keys (a uniformly random subset).
    """
    ids = np.asarray(sorted(int(d) for d in device_ids), dtype=np.int64)
    if (seed is None) == (generator is None):
        raise InvalidParameterError(
            "sample_devices() needs exactly one of `seed` (reproducible) and `generator`"
        )
    n = min(config.clients_per_round, ids.size)
    if generator is not None:
        keys = np.asarray(generator.random(ids.size), dtype=np.float64)
        if config.sampling == "poisson":
            return [int(d) for d in ids[keys < config.sample_rate]]
        return sorted(int(d) for d in ids[np.argsort(keys, kind="stable")[:n]])
    assert seed is not None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), round, 0]))
    if config.sampling == "poisson":
        mask = rng.random(ids.size) < config.sample_rate
        return [int(d) for d in ids[mask]]
    return sorted(int(d) for d in rng.choice(ids, size=n, replace=False))


@dataclass(frozen=True)
class RoundConfig:
    """Sampling and dropout settings of the round loop.

    Parameters
    ----------
    clients_per_round:
        N devices sampled uniformly without replacement per round (``sampling =
        "fixed"``); ignored for Poisson sampling.
    sampling:
        ``"fixed"`` (N per round) or ``"poisson"`` (each device independently with
        probability ``sample_rate``; the sampling DP accounting assumes).
    sample_rate:
        Poisson sampling probability in (0, 1].
    dropout_rate:
        Probability in [0, 1) that a sampled device fails, at a stage chosen
        uniformly among the download, training and sum-protocol stages.
    min_survivors:
        A round whose surviving devices are fewer aborts with :class:`RoundAborted`.
    on_abort:
        ``"raise"`` stops the run; ``"skip"`` records the aborted round and goes on.
    eval_every:
        Evaluate every this many rounds (the last round is always evaluated).
    eval_devices:
        Evaluate on a fixed sample of this many devices, drawn once from the seed
        (``0``, the default: every device). At scale this bounds what evaluation reads
        in the server: a lazy population materializes only these devices' test rows.
    """

    clients_per_round: int = 25
    sampling: Literal["fixed", "poisson"] = "fixed"
    sample_rate: float = 0.1
    dropout_rate: float = 0.0
    min_survivors: int = 1
    on_abort: Literal["raise", "skip"] = "raise"
    eval_every: int = 1
    eval_devices: int = 0

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise InvalidParameterError(
                f"`clients_per_round` must be >= 1; got {self.clients_per_round}"
            )
        if self.sampling not in ("fixed", "poisson"):
            raise InvalidParameterError(
                f"`sampling` must be 'fixed' or 'poisson'; got {self.sampling!r}"
            )
        if not 0 < self.sample_rate <= 1:
            raise InvalidParameterError(f"`sample_rate` must be in (0, 1]; got {self.sample_rate}")
        if not 0 <= self.dropout_rate < 1:
            raise InvalidParameterError(
                f"`dropout_rate` must be in [0, 1); got {self.dropout_rate}"
            )
        if self.min_survivors < 1:
            raise InvalidParameterError(f"`min_survivors` must be >= 1; got {self.min_survivors}")
        if self.on_abort not in ("raise", "skip"):
            raise InvalidParameterError(
                f"`on_abort` must be 'raise' or 'skip'; got {self.on_abort!r}"
            )
        if self.eval_every < 1:
            raise InvalidParameterError(f"`eval_every` must be >= 1; got {self.eval_every}")
        if self.eval_devices < 0:
            raise InvalidParameterError(
                f"`eval_devices` must be >= 0 (0 = every device); got {self.eval_devices}"
            )


@dataclass
class DeviceStore:
    """Device-private state (e.g. a chosen cluster key), one dict per device.

    In a simulation it lives next to the server, but only device programs read it;
    it is checkpointed so a resumed run restores what each device remembered.
    """

    state: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: the state of a device met for the first time (e.g. RelayRec's choice of
    #: initial model on a lazy population, made when the device is first needed);
    #: ``None``: nothing.
    fill: Callable[[int], Mapping[str, Any]] | None = field(default=None, repr=False, compare=False)

    def get(self, device_id: int) -> dict[str, Any]:
        if device_id not in self.state and self.fill is not None:
            self.update(device_id, self.fill(device_id))
        return dict(self.state.get(device_id, {}))

    def update(self, device_id: int, values: Mapping[str, Any]) -> None:
        self.state.setdefault(device_id, {}).update(values)


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round (written to ``metrics.jsonl``)."""

    round: int
    sampled: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: dict[int, str]
    aborted: bool
    server: dict[str, float]
    train_loss: float
    metrics: Metrics | None
    # DP releases of the round (devices' DP-SGD, noised sums), for the privacy
    # ledger; not part of the metrics.
    privacy_records: tuple[LedgerRecord, ...] = ()
    # How many devices the metrics were computed on (all, or the fixed eval sample).
    eval_devices: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "sampled": len(self.sampled),
            "survivors": len(self.survivors),
            "dropped": len(self.dropped),
            "aborted": self.aborted,
            "train_loss": self.train_loss,
            **{f"server/{k}": v for k, v in self.server.items()},
        }
        if self.metrics is not None:
            out.update(self.metrics.as_dict())
            out["eval_devices"] = self.eval_devices
        return out


def evaluate_keyed(
    model_spec: ModelSpec,
    models: Mapping[str, np.ndarray],
    test_sets: Mapping[int, CTRDataset],
    device_keys: Mapping[int, str],
) -> Metrics:
    """Evaluate each device's test rows with the model of its key; pool the metrics.

    gAUC is grouped by device. This is the experimenter's measurement of the
    simulation, not a protocol flow: nothing here is sent anywhere.
    """
    ys, ps, gs = [], [], []
    by_key: dict[str, list[int]] = {}
    for dev in test_sets:
        by_key.setdefault(device_keys[dev], []).append(dev)
    model = model_spec.build()
    for key, devs in by_key.items():
        load_flat_parameters(model, models[key])
        test = CTRDataset.concat([test_sets[d] for d in devs])
        ps.append(predict(model, test))
        ys.append(test.y)
        gs.append(test.user)
    if not ys:
        raise InvalidParameterError("evaluate_keyed() got no test sets")
    return evaluate_predictions(np.concatenate(ys), np.concatenate(ps), np.concatenate(gs))


class FederatedLoop:
    """Runs federated rounds of one strategy over a population of devices.

    Parameters
    ----------
    strategy:
        Server-side strategy (already initialised with its models).
    program:
        Device program (usually ``strategy.client_program(...)``).
    devices:
        Every device's data, by device id (a :class:`~secrelay.federated.lazy.LazyDeviceData`
        per device keeps the rows out of the server: they load in the executor's workers,
        and evaluation reads only ``config.eval_devices`` devices').
    model_spec:
        Builds the device model (evaluation).
    config:
        Sampling, dropout and evaluation settings.
    seed:
        Root seed of every random choice.
    sum_protocol:
        How contributions become sums (default: :class:`PlaintextSum`).
    channel:
        Records every message (default: a new :class:`Channel`).
    executor:
        Runs device programs (default: sequential).
    device_key:
        Device → model key used for evaluation (default: the device's private
        ``model_key`` or the strategy's first key).
    randomness:
        Where each round's device sample comes from (module doc): ``"secure"`` or
        ``"reproducible"``; ``None`` (default) takes the sum protocol's (a user-level
        DP sum's) and otherwise ``"reproducible"``. A loop whose sample a central DP
        sum's amplification relies on (``sum_protocol.always_releases``) must not
        sample reproducibly under that sum's secure randomness.
    """

    def __init__(
        self,
        strategy: Strategy,
        program: ClientProgram,
        devices: Mapping[int, DeviceData],
        model_spec: ModelSpec,
        *,
        config: RoundConfig | None = None,
        seed: int = 0,
        sum_protocol: SumProtocol | None = None,
        channel: Channel | None = None,
        executor: Executor | None = None,
        device_store: DeviceStore | None = None,
        device_key: Callable[[int], str] | None = None,
        randomness: Randomness | None = None,
    ) -> None:
        if not devices:
            raise InvalidParameterError("FederatedLoop needs at least one device")
        self.strategy = strategy
        self.program = program
        self.devices = dict(devices)
        self.device_ids = np.array(sorted(self.devices), dtype=np.int64)
        self.model_spec = model_spec
        self.config = config or RoundConfig()
        self.seed = int(seed)
        self.eval_ids = self._eval_sample()
        self.sum_protocol = sum_protocol or PlaintextSum()
        self.channel = channel or Channel()
        self.executor = executor or SequentialExecutor()
        self.store = device_store or DeviceStore()
        self._device_key = device_key
        self.randomness = self._randomness(randomness)
        # Secure draws, by round: made once (the dry run asks first), reused by the round.
        self._drawn: dict[int, list[int]] = {}
        self._started = False
        # Personalised strategies keep each device's latest predictions here.
        self.personal_predictions: dict[int, np.ndarray] = {}

    # --- randomness -----------------------------------------------------------
    def _rng(self, round: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, round, purpose]))

    def _randomness(self, given: Randomness | None) -> Randomness:
        proto = getattr(self.sum_protocol, "randomness", None)
        if given is None:
            return check_randomness(proto) if proto is not None else "reproducible"
        mode = check_randomness(given)
        if mode == "reproducible" and proto == "secure" and self.sum_protocol.always_releases:
            raise InvalidParameterError(
                f"`randomness` = 'reproducible' would draw the device samples that "
                f"{type(self.sum_protocol).__name__}'s amplification by sampling relies on "
                "from the seed while its noise is secure; pass randomness='secure' (or "
                "None, which follows the sum protocol)"
            )
        return mode

    def sample(self, round: int) -> list[int]:
        """The devices sampled in ``round`` (sorted). Under secure randomness the first
        call for a round draws the sample and later calls return the same one."""
        if self.randomness == "reproducible":
            return sample_devices(self.device_ids, self.config, seed=self.seed, round=round)
        if round not in self._drawn:
            self._drawn[round] = sample_devices(
                self.device_ids, self.config, generator=SecureGenerator()
            )
        return list(self._drawn[round])

    def _eval_sample(self) -> np.ndarray:
        """The devices evaluation reads (sorted): all, or ``config.eval_devices`` of them
        drawn once from the seed (the experimenter's choice, not a protocol flow)."""
        k = self.config.eval_devices
        if k == 0 or k >= self.device_ids.size:
            return self.device_ids
        rng = self._rng(0, 3)
        return np.sort(rng.choice(self.device_ids, size=k, replace=False))

    def dropout_plan(self, round: int, sampled: Sequence[int]) -> dict[int, str]:
        """Which sampled devices fail this round, and at which stage."""
        if self.config.dropout_rate == 0:
            return {}
        rng = self._rng(round, 1)
        stages = PRE_PROTOCOL_STAGES + tuple(self.sum_protocol.stages)
        plan = {}
        for dev in sampled:
            if rng.random() < self.config.dropout_rate:
                plan[dev] = stages[int(rng.integers(len(stages)))]
        return plan

    def device_seed(self, round: int, device_id: int) -> int:
        return int(np.random.SeedSequence([self.seed, round, 2, device_id]).generate_state(1)[0])

    # --- the round --------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self.executor.start(self.devices)
            self._started = True

    def close(self) -> None:
        self.executor.close()
        self._started = False

    def run_round(self, round: int, *, evaluate: bool | None = None) -> RoundRecord:
        """Run round ``round``.

        Raises
        ------
        RoundAborted
            If fewer than ``min_survivors`` devices survive and ``on_abort="raise"``;
            the strategy's models are then unchanged.
        """
        self.start()
        sampled = self.sample(round)
        for earlier in [r for r in self._drawn if r < round]:
            del self._drawn[earlier]
        plan = self.dropout_plan(round, sampled)
        models = self.strategy.download(round)
        tasks = []
        for dev in sampled:
            if plan.get(dev) == "download":
                continue
            msg = self.channel.send(
                ModelDownload(sender=SERVER, receiver=dev, round=round, models=models)
            )
            assert isinstance(msg, ModelDownload)
            if plan.get(dev) == "train":
                continue
            tasks.append(
                DeviceTask(
                    device_id=dev,
                    round=round,
                    models=msg.models,
                    seed=self.device_seed(round, dev),
                    private=self.store.get(dev),
                )
            )
        outputs: list[DeviceOutput] = self.executor.map(self.program, tasks) if tasks else []
        trained = {t.device_id: o for t, o in zip(tasks, outputs)}
        for dev, out in trained.items():
            kept = self._state_to_keep(dev, out.private)
            if kept:
                self.store.update(dev, kept)
            if "predictions" in out.private:
                self.personal_predictions[dev] = np.asarray(out.private["predictions"])
        losses = [
            o.stats["loss"] for o in trained.values() if np.isfinite(o.stats.get("loss", np.nan))
        ]
        # Every device that trained ran its mechanisms, released or not (conservative).
        privacy_records: list[LedgerRecord] = [
            r for dev in sorted(trained) for r in trained[dev].privacy_records
        ]
        protocol_drops = {d: s for d, s in plan.items() if s in self.sum_protocol.stages}
        aborted = False
        server_stats: dict[str, float] = {}
        survivors: tuple[int, ...] = ()
        if self.strategy.personalized:
            # Nothing leaves the devices: no sum protocol runs.
            do_eval = evaluate if evaluate is not None else (round % self.config.eval_every == 0)
            return RoundRecord(
                round=round,
                sampled=tuple(sampled),
                survivors=tuple(sorted(trained)),
                dropped=plan,
                aborted=False,
                server={},
                train_loss=float(np.mean(losses)) if losses else float("nan"),
                metrics=self.evaluate() if do_eval else None,
                privacy_records=tuple(privacy_records),
                eval_devices=int(self.eval_ids.size) if do_eval else 0,
            )
        # A sum that must always release (central DP, Poisson sampling) runs even when
        # nobody took part: skipping the round would depend on who was sampled.
        always = self.sum_protocol.always_releases
        try:
            if not always and len(trained) - len(protocol_drops) < self.config.min_survivors:
                raise RoundAborted(
                    "collect",
                    f"round {round}: {len(trained) - len(protocol_drops)} devices survived, "
                    f"fewer than min_survivors={self.config.min_survivors} "
                    f"({len(sampled)} sampled, {len(plan)} dropped)",
                )
            contributions = {d: o.contribution for d, o in trained.items()}
            result = self.sum_protocol.aggregate(
                round, contributions, self.channel, dropouts=protocol_drops
            )
            # A sum protocol that noises the sums (user-level DP) says what it released.
            privacy_records.extend(result.privacy_records)
            survivors = result.survivors
            if not always and len(survivors) < self.config.min_survivors:
                raise RoundAborted(
                    "aggregate",
                    f"round {round}: {len(survivors)} devices survived, fewer than "
                    f"min_survivors={self.config.min_survivors}",
                )
            server_stats = self.strategy.aggregate(round, result)
        except ProtocolAbort as exc:
            if self.config.on_abort == "raise":
                exc.add_privacy_records(privacy_records)
                raise
            aborted = True
        do_eval = evaluate if evaluate is not None else (round % self.config.eval_every == 0)
        metrics = self.evaluate() if do_eval else None
        return RoundRecord(
            round=round,
            sampled=tuple(sampled),
            survivors=survivors,
            dropped=plan,
            aborted=aborted,
            server=server_stats,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            metrics=metrics,
            privacy_records=tuple(privacy_records),
            eval_devices=int(self.eval_ids.size) if do_eval else 0,
        )

    def _state_to_keep(self, device_id: int, private: Mapping[str, Any]) -> dict[str, Any]:
        """What of a device's reported private state the store keeps: not its personal
        predictions (kept apart), and not a ``model_key`` naming a one-model strategy's
        only model for a device with nothing stored, which is what :meth:`device_key`
        returns for it anyway. A single-model strategy (FedAvg) thus keeps no state per
        device, however many devices have trained; a method that keeps some (RelayRec's
        cluster) keeps it for exactly the devices that have it."""
        kept = {k: v for k, v in private.items() if k != "predictions"}
        keys = self.strategy.keys
        if (
            len(keys) == 1
            and device_id not in self.store.state
            and kept.get("model_key", keys[0]) == keys[0]
        ):
            kept.pop("model_key", None)
        return kept

    # --- evaluation -------------------------------------------------------------
    def device_key(self, device_id: int) -> str:
        if self._device_key is not None:
            return self._device_key(device_id)
        key = self.store.get(device_id).get("model_key")
        return str(key) if key in self.strategy.models else self.strategy.keys[0]

    def evaluate(self) -> Metrics:
        """Pooled AUC/logloss and gAUC over the test splits of the evaluated devices
        (every device, or the fixed sample of ``config.eval_devices``)."""
        if self.strategy.personalized:
            return self._evaluate_personal()
        tests = {}
        for d in self.eval_ids.tolist():
            test = self.devices[d].test
            if len(test):
                tests[d] = test
        keys = {d: self.device_key(d) for d in tests}
        return evaluate_keyed(self.model_spec, self.strategy.models, tests, keys)

    def _evaluate_personal(self) -> Metrics:
        ys, ps, gs = [], [], []
        for dev in self.eval_ids.tolist():
            dd = self.devices[dev]
            if dev not in self.personal_predictions or not len(dd.test):
                continue
            ys.append(dd.test.y)
            ps.append(self.personal_predictions[dev])
            gs.append(dd.test.user)
        if not ys:
            raise InvalidParameterError("no device has trained a personal model yet")
        return evaluate_predictions(np.concatenate(ys), np.concatenate(ps), np.concatenate(gs))

    # --- persistence ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.state_dict(),
            "device_store": {d: dict(s) for d, s in self.store.state.items()},
            "personal_predictions": dict(self.personal_predictions),
            "sum_protocol": self.sum_protocol.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.strategy.load_state_dict(state["strategy"])
        self.store = DeviceStore(
            {int(d): dict(s) for d, s in state["device_store"].items()}, fill=self.store.fill
        )
        self.personal_predictions = {
            int(d): np.asarray(p) for d, p in state.get("personal_predictions", {}).items()
        }
        self.sum_protocol.load_state_dict(state.get("sum_protocol", {}))
