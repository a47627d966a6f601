"""Experiments: prepare data, run a method round by round, checkpoint, resume.

A *method* (plain federated learning from the cloud model, RelayRec, LCFT, CoDA,
MetaUA) is a :class:`Method` registered under a name. The runner owns everything
around it: data preparation (deterministic from the seed), the run directory
(resolved config, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``),
atomic checkpoints after every round, and resumption.

Run directory layout::

    RUN_DIR/config.json      the resolved configuration
    RUN_DIR/metrics.jsonl    one JSON object per round (round 0 = before any round)
    RUN_DIR/checkpoint.pt    the latest round's full state (atomic)
    RUN_DIR/summary.json     final metrics
    RUN_DIR/transcript.npz   the message transcript (when run.record_transcript)
    RUN_DIR/privacy_ledger.jsonl  every DP release (when privacy.dp_sgd / user_level_dp;
                             see docs/privacy.md): budgets are checked before each
                             round, records appended before its checkpoint
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from protocols.errors import ConfigError, InvalidParameterError, ProtocolAbort
from secrelay.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint, write_jsonl
from secrelay.config import RunConfig
from secrelay.data.dataset import CTRDataset
from secrelay.federated.aggregation import PlaintextSum, SumProtocol
from secrelay.federated.client import (
    DeviceData,
    ModelSpec,
    PlainTrainer,
    flat_parameters,
    load_flat_parameters,
)
from secrelay.federated.executor import Executor, make_executor
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import make_strategy
from secrelay.federated.transcript import Channel, Transcript
from secrelay.metrics import Metrics
from secrelay.training import TrainConfig, evaluate_model, train_epochs

if TYPE_CHECKING:
    from protocols.dp.ledger import LedgerRecord

__all__ = [
    "METHOD_REGISTRY",
    "FederatedMethod",
    "Method",
    "PreparedData",
    "RunContext",
    "RunResult",
    "make_sum_protocol",
    "make_train_config",
    "prepare_data",
    "register_method",
    "resume",
    "run",
    "train_cloud_model",
]


@dataclass(frozen=True, eq=False)
class PreparedData:
    """The data of a run after the regulation and device splits."""

    full: CTRDataset
    cloud: CTRDataset
    devices: dict[int, DeviceData]
    notes: tuple[str, ...] = ()

    @property
    def device_test(self) -> CTRDataset:
        return CTRDataset.concat([d.test for d in self.devices.values() if len(d.test)])

    @property
    def device_train(self) -> CTRDataset:
        return CTRDataset.concat([d.train for d in self.devices.values() if len(d.train)])


def prepare_data(config: RunConfig) -> PreparedData:
    """Load the data set and apply the regulation and per-device splits."""
    from secrelay.data import device_train_test_split, load_dataset, regulation_split

    opts = dict(config.data.options)
    if config.data.name == "synthetic":
        opts.setdefault("seed", config.run.seed)
    ds = load_dataset(config.data.name, config.data.path or None, **opts)
    split = regulation_split(
        ds, mode=config.split.mode, alpha=config.split.alpha, seed=config.run.seed
    )
    dsplit = device_train_test_split(
        split.device,
        train_fraction=config.split.train_fraction,
        min_rows=max(2, config.split.min_device_rows),
        too_few="drop",
    )
    train_by_user = dsplit.train.split_by_user()
    test_by_user = dsplit.test.split_by_user()
    devices = {
        u: DeviceData(u, tr, test_by_user.get(u, tr.subset(np.zeros(0, dtype=np.int64))))
        for u, tr in sorted(train_by_user.items())
    }
    notes = (
        f"cloud rows {len(split.cloud)} ({split.cloud.n_users} users); device rows "
        f"{len(split.device)} on {len(devices)} devices; {len(dsplit.users_too_few)} devices "
        f"({dsplit.rows_too_few} rows) dropped with fewer than "
        f"{max(2, config.split.min_device_rows)} rows",
    )
    return PreparedData(ds, split.cloud, devices, notes)


def make_train_config(section: Any, *, prox_mu: float = 0.0) -> TrainConfig:
    return TrainConfig(
        epochs=section.epochs,
        batch_size=section.batch_size,
        lr=section.lr,
        optimizer=section.optimizer,
        weight_decay=section.weight_decay,
        prox_mu=prox_mu,
    )


def make_sum_protocol(config: RunConfig) -> SumProtocol:
    """Plaintext sums, or SecAgg+ when ``privacy.secure_aggregation`` is on."""
    p = config.privacy
    if not p.secure_aggregation:
        return PlaintextSum()
    from secrelay.federated.secure import SecureSum, SecureSumSettings

    settings = SecureSumSettings(
        default_bound=p.secagg_default_bound,
        precision_bits=p.secagg_precision_bits,
        neighbours=p.secagg_neighbours or None,
        sign_advertisements=p.secagg_sign_advertisements,
        max_dropout_rate=max(0.1, config.federated.dropout_rate),
    )
    return SecureSum(settings, seed=config.run.seed)


def model_spec_from(config: RunConfig, schema: Any) -> ModelSpec:
    kwargs = {"embedding_dim": config.model.embedding_dim, **config.model.options}
    return ModelSpec(config.model.name, schema, tuple(sorted(kwargs.items())))


def train_cloud_model(
    spec: ModelSpec, cloud: CTRDataset, train: TrainConfig, *, seed: int
) -> np.ndarray:
    """Centralized training on the cloud data; returns the flat parameter vector."""
    torch.manual_seed(seed)
    model = spec.build()
    train_epochs(model, cloud, train, generator=torch.Generator().manual_seed(seed))
    return flat_parameters(model)


@dataclass
class RunContext:
    """What a method gets from the runner."""

    config: RunConfig
    data: PreparedData
    model_spec: ModelSpec
    channel: Channel
    executor: Executor
    run_dir: Path
    log: Callable[[str], None] = print
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.run.seed


class Method(abc.ABC):
    """A relay / federated learning method, driven round by round by the runner."""

    name: ClassVar[str] = "method"
    # Whether the method applies privacy.dp_sgd / privacy.user_level_dp (a run that
    # asks for them with a method that does not is refused).
    supports_privacy: ClassVar[bool] = False

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def setup(self) -> None:
        """The cloud phase (pre-training, clustering, …); deterministic by seed."""

    @abc.abstractmethod
    def num_rounds(self) -> int: ...

    @abc.abstractmethod
    def run_round(self, round: int) -> dict[str, Any]:
        """Run one round; return its record (metrics flattened into the dict)."""

    @abc.abstractmethod
    def evaluate(self) -> Metrics: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def close(self) -> None:
        """Release resources (worker pools)."""

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """The DP records ``round`` could spend, computed before it runs (budget dry run)."""
        return ()

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """The DP records the last :meth:`run_round` (of ``round``) released."""
        return ()


METHOD_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method], *, force: bool = False) -> type[Method]:
    """Register a :class:`Method` under ``cls.name``; refuses silent overrides."""
    if cls.name in METHOD_REGISTRY and not force:
        raise InvalidParameterError(
            f"a method named {cls.name!r} is already registered; pass force=True to replace it"
        )
    METHOD_REGISTRY[cls.name] = cls
    return cls


class LoopPrivacy:
    """Privacy hooks of a :class:`Method` whose devices run in one
    :class:`~secrelay.federated.loop.FederatedLoop` (``self.loop``): call
    :meth:`_privatize` after building the loop and :meth:`_keep_records` with each
    round's record; the budget dry run and the ledger then come from the loop."""

    supports_privacy: ClassVar[bool] = True
    ctx: RunContext
    loop: FederatedLoop
    _privacy_records: tuple[LedgerRecord, ...] = ()

    def _privatize(self, rounds: int) -> None:
        self._privacy_records = ()
        if self.ctx.config.privacy.differential_privacy:
            from secrelay.privacy.federated import privatize_loop

            privatize_loop(self.loop, self.ctx.config, rounds=rounds)

    def _keep_records(self, record: Any) -> None:
        self._privacy_records = tuple(record.privacy_records)

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        if not self.ctx.config.privacy.differential_privacy:
            return ()
        from secrelay.privacy.federated import plan_round_records

        return plan_round_records(self.loop, round)

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        return self._privacy_records


class FederatedMethod(LoopPrivacy, Method):
    """Plain federated learning starting from the cloud-trained model.

    ``strategy.name`` picks FedAvg, FedProx, FedAdagrad, FedAdam, FedNova or
    Standalone (each device fine-tunes the cloud model alone, once).
    """

    name = "federated"

    def setup(self) -> None:
        cfg = self.ctx.config
        self.strategy = make_strategy(cfg.strategy.name, **cfg.strategy.params)
        cloud_vec = train_cloud_model(
            self.ctx.model_spec,
            self.ctx.data.cloud,
            make_train_config(cfg.cloud),
            seed=self.ctx.seed,
        )
        self.strategy.initialize({"global": cloud_vec})
        self._build_loop()

    def _build_loop(self) -> None:
        cfg = self.ctx.config
        fed = cfg.federated
        rc = RoundConfig(
            clients_per_round=(
                len(self.ctx.data.devices) if self.strategy.personalized else fed.clients_per_round
            ),
            sampling="fixed" if self.strategy.personalized else fed.sampling,
            sample_rate=fed.sample_rate,
            dropout_rate=fed.dropout_rate,
            min_survivors=fed.min_survivors,
            on_abort=fed.on_abort,
            eval_every=fed.eval_every,
        )
        program = self.strategy.client_program(
            self.ctx.model_spec, PlainTrainer(make_train_config(cfg.local))
        )
        self.loop = FederatedLoop(
            self.strategy,
            program,
            self.ctx.data.devices,
            self.ctx.model_spec,
            config=rc,
            seed=self.ctx.seed,
            channel=self.ctx.channel,
            executor=self.ctx.executor,
            sum_protocol=make_sum_protocol(cfg),
        )
        self._privatize(self.num_rounds())

    def num_rounds(self) -> int:
        return 1 if self.strategy.personalized else self.ctx.config.federated.rounds

    def run_round(self, round: int) -> dict[str, Any]:
        last = round == self.num_rounds()
        record = self.loop.run_round(round, evaluate=True if last else None)
        self._keep_records(record)
        return record.as_dict()

    def evaluate(self) -> Metrics:
        if self.strategy.personalized and not self.loop.personal_predictions:
            # Before any round: every device still holds the cloud model.
            model = self.ctx.model_spec.build()
            load_flat_parameters(model, self.strategy.models["global"])
            return evaluate_model(model, self.ctx.data.device_test)
        return self.loop.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {"loop": self.loop.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        cfg = self.ctx.config
        self.strategy = make_strategy(cfg.strategy.name, **cfg.strategy.params)
        self.strategy.initialize(state["loop"]["strategy"]["models"])
        self._build_loop()
        self.loop.load_state_dict(state["loop"])

    def close(self) -> None:
        if hasattr(self, "loop"):
            self.loop.close()


register_method(FederatedMethod)


@dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run` / :func:`resume`."""

    run_dir: Path
    records: list[dict[str, Any]]
    final: dict[str, Any]


def _make_method(config: RunConfig, ctx: RunContext) -> Method:
    import secrelay.relay  # noqa: F401  (registers the relay methods)

    name = config.method.name
    if name not in METHOD_REGISTRY:
        raise ConfigError(
            f"method.name {name!r} is not a known method; choose one of {sorted(METHOD_REGISTRY)}"
        )
    return METHOD_REGISTRY[name](ctx)


def _metrics_record(
    round: int, m: Metrics, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {"round": round, **m.as_dict(), **(extra or {})}


def _clean(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in rec.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _progress(enabled: bool, total: int, description: str) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _execute(
    config: RunConfig,
    run_dir: Path,
    *,
    state: Mapping[str, Any] | None,
    progress: bool,
    log: Callable[[str], None],
    stop_after: int | None = None,
) -> RunResult:
    t0 = time.perf_counter()
    data = prepare_data(config)
    for note in data.notes:
        log(note)
    schema = data.full.schema
    workers = config.run.workers or None
    executor = make_executor(config.run.executor, workers)
    transcript = Transcript(keep_payloads=config.run.record_transcript)
    ctx = RunContext(
        config=config,
        data=data,
        model_spec=model_spec_from(config, schema),
        channel=Channel(transcript),
        executor=executor,
        run_dir=run_dir,
        log=log,
    )
    method = _make_method(config, ctx)
    records: list[dict[str, Any]]
    session = _privacy_session(config, method, run_dir, log)
    try:
        if state is None:
            method.setup()
            records = [_clean(_metrics_record(0, method.evaluate(), {"phase": "cloud"}))]
            start = 1
            _save(run_dir, method, 0, records, session)
        else:
            method.load_state_dict(state["method"])
            records = [dict(r) for r in state["records"]]
            start = int(state["round"]) + 1
            write_jsonl(run_dir / "metrics.jsonl", records)
            if session is not None:
                session.reconcile(state.get("privacy"))
            log(f"resuming after round {start - 1}")
        total = method.num_rounds()
        with _progress(progress and config.run.progress, total, config.run.name) as bar:
            task = bar.add_task(config.run.name, total=total, completed=start - 1, status="")
            for t in range(start, total + 1):
                if session is not None:
                    # Dry run: refuse a round that could overspend, before it runs.
                    session.check(method.planned_privacy_records(t))
                try:
                    rec = _clean(method.run_round(t))
                except ProtocolAbort as exc:
                    if session is not None:  # what was released before the abort
                        session.spend(getattr(exc, "privacy_records", ()))
                    raise
                if session is not None:
                    session.spend(method.privacy_records(t))
                records.append(rec)
                _save(run_dir, method, t, records, session)
                status = " ".join(
                    f"{k}={rec[k]:.4f}"
                    for k in ("gauc", "auc", "logloss")
                    if rec.get(k) is not None
                )
                bar.update(task, advance=1, status=status)
                if stop_after is not None and t >= stop_after:
                    break
        final_round = records[-1]["round"]
        done = final_round >= total
        final = {
            "run": config.run.name,
            "method": config.method.name,
            "strategy": config.strategy.name,
            "rounds_completed": final_round,
            "complete": done,
            "final": records[-1],
            "cloud": records[0],
            "seconds": time.perf_counter() - t0,
            "traffic": transcript.summary(),
        }
        if done:
            atomic_write_text(run_dir / "summary.json", json.dumps(final, indent=2, default=float))
            if config.run.record_transcript:
                transcript.save(run_dir / "transcript.npz")
        return RunResult(run_dir, records, final)
    finally:
        method.close()


def _privacy_session(
    config: RunConfig, method: Method, run_dir: Path, log: Callable[[str], None]
) -> Any:
    """The run's privacy ledger and budget (``None`` without differential privacy)."""
    if not config.privacy.differential_privacy:
        return None
    if not method.supports_privacy:
        raise ConfigError(
            f"method.name {config.method.name!r} does not apply privacy.dp_sgd / "
            "privacy.user_level_dp yet; turn them off or use method.name = 'federated'"
        )
    from secrelay.privacy.federated import privacy_problems
    from secrelay.privacy.session import PrivacySession

    problems = privacy_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))
    return PrivacySession(run_dir, config, log=log)


def _save(
    run_dir: Path,
    method: Method,
    round: int,
    records: list[dict[str, Any]],
    session: Any = None,
) -> None:
    write_jsonl(run_dir / "metrics.jsonl", records)
    state: dict[str, Any] = {"round": round, "method": method.state_dict(), "records": records}
    if session is not None:
        state["privacy"] = session.state()
    save_checkpoint(run_dir / "checkpoint.pt", state)


def run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> RunResult:
    """Run an experiment from scratch into ``run_dir``.

    Refuses a directory that already holds a checkpoint unless ``overwrite`` (use
    :func:`resume` to continue it). ``stop_after`` ends the run after that round
    (as if killed), leaving a resumable checkpoint.
    """
    rd = Path(run_dir)
    if (rd / "checkpoint.pt").exists() and not overwrite:
        raise ConfigError(
            f"{str(rd)!r} already holds a run; resume it with `secrelay resume {rd}` "
            "or choose another directory (or pass overwrite)"
        )
    rd.mkdir(parents=True, exist_ok=True)
    for stale in (
        "summary.json",
        "metrics.jsonl",
        "transcript.npz",
        "privacy_ledger.jsonl",
        "audit.json",
        "audit.md",
        "audit_epsilon.png",
    ):
        (rd / stale).unlink(missing_ok=True)
    atomic_write_text(rd / "config.json", config.to_json())
    return _execute(config, rd, state=None, progress=progress, log=log, stop_after=stop_after)


def resume(
    run_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint."""
    rd = Path(run_dir)
    cfg_path = rd / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{str(rd)!r} is not a run directory (no config.json)")
    config = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    state = load_checkpoint(rd / "checkpoint.pt")
    return _execute(config, rd, state=state, progress=progress, log=log, stop_after=stop_after)
