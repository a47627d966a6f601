"""Experiments: prepare data, run a method round by round, checkpoint, resume.

A *method* (plain federated learning from the cloud model, RelayRec, LCFT, CoDA,
MetaUA) is a :class:`~secrelay.methods.Method` registered in
:data:`~secrelay.methods.METHODS` (the plug-in contract lives in
:mod:`secrelay.methods`; methods never import this module). The runner owns
everything around it: the privacy check (every problem at once, before any data is
loaded), data preparation (deterministic from the seed), the run directory
(resolved config, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``), the
privacy ledger, atomic checkpoints after every round, and resumption.

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

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import secrelay.relay  # noqa: F401  (registers the built-in methods in METHODS)
from protocols.errors import ConfigError, ProtocolAbort
from secrelay.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint, write_jsonl
from secrelay.config import RunConfig, load_run_config
from secrelay.data import DATASET_LOADERS
from secrelay.data.dataset import CTRDataset
from secrelay.federated.executor import in_worker_bootstrap, make_executor
from secrelay.federated.transcript import Channel, Transcript
from secrelay.methods import (
    METHODS,
    Method,
    RunContext,
    model_spec_from,
    prepare_data,
)
from secrelay.methods.data import IN_MEMORY, population_problems
from secrelay.metrics import Metrics
from secrelay.models import MODEL_REGISTRY
from secrelay.privacy.plan import PrivacyPlan
from secrelay.privacy.session import PrivacySession

__all__ = [
    "RunResult",
    "check_config",
    "resume",
    "run",
]


def _input_problems(config: RunConfig) -> list[str]:
    """Unknown model / data set names and a missing data path, found before anything runs."""
    problems = []
    if config.model.name not in MODEL_REGISTRY:
        problems.append(
            f"model.name {config.model.name!r} is not a registered model; choose one of "
            f"{MODEL_REGISTRY.names()}"
        )
    if config.data.name != IN_MEMORY and config.data.name not in DATASET_LOADERS:
        problems.append(
            f"data.name {config.data.name!r} is not a registered data set; choose one of "
            f"{DATASET_LOADERS.names()}"
        )
    if config.data.path and not Path(config.data.path).exists():
        problems.append(
            f"data.path {config.data.path!r} does not exist (resolved against the current "
            f"directory: {Path(config.data.path).resolve()})"
        )
    problems += population_problems(config)
    if config.local.trainable == "seen" and config.method.name not in SEEN_ROW_METHODS:
        problems.append(
            f"local.trainable = 'seen' needs the cloud's embedding rows, which method "
            f"{config.method.name!r} does not pass to its devices; use one of "
            f"{sorted(SEEN_ROW_METHODS)}, or local.trainable = 'all' / 'dense'"
        )
    return problems


#: Methods whose devices train with :meth:`LoopMethod.local_train_config`, which
#: resolves ``local.trainable = "seen"`` (the cloud's rows).
SEEN_ROW_METHODS = frozenset({"federated", "metaua", "relayrec"})


def check_config(config: RunConfig, method: type[Method] | None = None) -> type[Method]:
    """The method class of ``config`` (or ``method``, used as given), after every
    privacy problem of the method and the plan is checked; all are reported at once,
    before any data is loaded.

    Raises
    ------
    ConfigError
        Naming the unknown method, or listing every problem.
    """
    name = config.method.name
    if method is None and name not in METHODS:
        raise ConfigError(
            f"method.name {name!r} is not a known method; choose one of {METHODS.names()}"
        )
    cls = method if method is not None else METHODS.get(name)
    problems = [*_input_problems(config), *cls.privacy_problems(config)]
    problems += PrivacyPlan.from_config(config).problems()
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    return cls


@dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run` / :func:`resume`."""

    run_dir: Path
    records: list[dict[str, Any]]
    final: dict[str, Any]
    # What the privacy ledger says was spent (``None`` without DP): user-level and the
    # largest example-level ε at δ; ``secrelay audit`` has the full report.
    epsilon: dict[str, Any] | None = None


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
    method_class: type[Method] | None = None,
    dataset: CTRDataset | None = None,
) -> RunResult:
    t0 = time.perf_counter()
    method_cls = check_config(config, method_class)
    data = prepare_data(config, dataset)
    for note in data.notes:
        log(note)
    schema = data.full.schema
    workers = config.run.workers or None
    executor = make_executor(config.run.executor, workers, address=config.run.address)
    transcript = Transcript(keep_payloads=config.run.record_transcript)
    ctx = RunContext(
        config=config,
        data=data,
        model_spec=model_spec_from(config, schema),
        channel=Channel(transcript),
        executor=executor,
        run_dir=run_dir,
        privacy=PrivacyPlan.from_config(config),
        log=log,
    )
    method = method_cls(ctx)
    records: list[dict[str, Any]]
    session = (
        PrivacySession(run_dir, config.privacy, log=log)
        if config.privacy.differential_privacy
        else None
    )
    try:
        if state is None:
            method.setup()
            records = [_clean(_metrics_record(0, method.evaluate(), {"phase": "cloud"}))]
            start = 1
            usage = _Usage(t0, transcript, None)
            _save(run_dir, method, 0, records, session, usage)
        else:
            method.load_state_dict(state["method"])
            records = [dict(r) for r in state["records"]]
            start = int(state["round"]) + 1
            usage = _Usage(t0, transcript, _prior_usage(run_dir, state))
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
                        session.spend(exc.privacy_records)
                    raise
                except Exception:
                    if session is not None:  # a failed round may still have released
                        session.spend(method.privacy_records(t))
                    raise
                if session is not None:
                    session.spend(method.privacy_records(t))
                    eps = session.user_epsilon()
                    if eps is not None and math.isfinite(eps):  # where users look
                        rec["epsilon/user"] = eps
                records.append(rec)
                _save(run_dir, method, t, records, session, usage)
                status = " ".join(
                    f"{k}={rec[k]:.4f}"
                    for k in ("gauc", "auc", "logloss")
                    if rec.get(k) is not None
                )
                bar.update(task, advance=1, status=status)
                if stop_after is not None and t >= stop_after and t < total:
                    log(f"stopped after round {t}; continue with `secrelay resume {run_dir}`")
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
            **usage.totals(),
        }
        if session is not None:
            final["privacy"] = session.spent()
            log(_epsilon_line(final["privacy"]))
            warning = utility_warning(records[0], records[-1])
            if warning is not None:
                final["warnings"] = [warning]
                log(f"warning: {warning}")
        if done:
            atomic_write_text(run_dir / "summary.json", json.dumps(final, indent=2, default=float))
            if config.run.record_transcript:
                transcript.save(run_dir / "transcript.npz")
        return RunResult(run_dir, records, final, final.get("privacy"))
    finally:
        method.close()


def utility_warning(cloud: Mapping[str, Any], final: Mapping[str, Any]) -> str | None:
    """A warning when a DP run ends far below the cloud model it started from (logloss
    more than 1.5× the cloud's, or AUC more than 0.05 lower): the noise dominates the
    updates, and the protected model is not worth deploying as it is."""
    worse = []
    c_ll, f_ll = cloud.get("logloss"), final.get("logloss")
    if c_ll is not None and f_ll is not None and f_ll > 1.5 * c_ll:
        worse.append(f"logloss {f_ll:.3g} against the cloud model's {c_ll:.3g}")
    c_auc, f_auc = cloud.get("auc"), final.get("auc")
    if c_auc is not None and f_auc is not None and f_auc < c_auc - 0.05:
        worse.append(f"AUC {f_auc:.3f} against the cloud model's {c_auc:.3f}")
    if not worse:
        return None
    return (
        "the DP noise destroyed the model (" + "; ".join(worse) + "): raise the ε target, "
        "sample more devices per round, lower privacy.clipping_norm or run fewer rounds "
        "(docs/dp.md)"
    )


def _epsilon_line(spent: Mapping[str, Any]) -> str:
    parts = []
    if spent.get("user_epsilon") is not None:
        parts.append(f"user-level ε = {spent['user_epsilon']:.3g}")
    if spent.get("example_epsilon_max") is not None:
        parts.append(
            f"example-level ε ≤ {spent['example_epsilon_max']:.3g} "
            f"(largest of {spent['example_devices']} devices)"
        )
    body = ", ".join(parts) or "no DP release recorded"
    return (
        f"privacy spent: {body} at δ = {spent['delta']:g} ({spent['accountant']}); "
        "`secrelay audit RUN_DIR` for the full report"
    )


def _prior_usage(run_dir: Path, state: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The usage a resumed run starts from: the checkpoint's, or — for a run that had
    finished — its summary's, which also counts the time after the last checkpoint
    (final evaluation, report), so a resumed run's seconds never go backwards."""
    prior: Mapping[str, Any] | None = state.get("usage")
    summary = run_dir / "summary.json"
    if prior is None or not summary.is_file():
        return prior
    try:
        done = json.loads(summary.read_text())
    except (OSError, ValueError):
        return prior
    if done.get("rounds_completed") != state.get("round"):
        return prior
    seconds = max(float(prior["seconds"]), float(done.get("seconds", 0.0)))
    return {**prior, "seconds": seconds}


class _Usage:
    """Seconds and message traffic of a run across resumptions: what the checkpoint
    carried (the rounds completed before) plus this process' share."""

    def __init__(self, t0: float, transcript: Transcript, prior: Mapping[str, Any] | None) -> None:
        self.t0 = t0
        self.transcript = transcript
        self.prior = prior or {"seconds": 0.0, "traffic": {"count": {}, "bytes": {}}}

    def totals(self) -> dict[str, Any]:
        now = self.transcript.summary()
        traffic = {
            part: {
                k: int(self.prior["traffic"].get(part, {}).get(k, 0)) + int(now[part].get(k, 0))
                for k in sorted({*self.prior["traffic"].get(part, {}), *now[part]})
            }
            for part in ("count", "bytes")
        }
        seconds = float(self.prior["seconds"]) + time.perf_counter() - self.t0
        return {"seconds": seconds, "traffic": traffic}


def _save(
    run_dir: Path,
    method: Method,
    round: int,
    records: list[dict[str, Any]],
    session: PrivacySession | None,
    usage: _Usage,
) -> None:
    write_jsonl(run_dir / "metrics.jsonl", records)
    state: dict[str, Any] = {
        "round": round,
        "method": method.state_dict(),
        "records": records,
        "usage": usage.totals(),
    }
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
    method: type[Method] | None = None,
    dataset: CTRDataset | None = None,
) -> RunResult:
    """Run an experiment from scratch into ``run_dir``.

    Refuses a directory that already holds a checkpoint unless ``overwrite`` (use
    :func:`resume` to continue it). ``stop_after`` ends the run after that round
    (as if killed), leaving a resumable checkpoint. ``method`` runs that
    :class:`Method` class instead of the registered ``method.name``; ``dataset`` is
    used instead of loading ``[data]`` (see :func:`secrelay.simulate`).
    """
    if in_worker_bootstrap():
        raise ConfigError(
            "secrelay.run() was called while a worker process was starting: the calling "
            "script re-runs in every process-pool worker. Guard it with "
            '`if __name__ == "__main__":`'
        )
    check_config(config, method)  # every problem, before a run directory is made
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
        "attack_audit.json",  # an earlier run's empirical bounds
        "coda_pool_ledger.jsonl",  # runs before the pool-user ledger unit
        "relayrec_cloud.json",
    ):
        (rd / stale).unlink(missing_ok=True)
    atomic_write_text(rd / "config.json", config.to_json())
    return _execute(
        config,
        rd,
        state=None,
        progress=progress,
        log=log,
        stop_after=stop_after,
        method_class=method,
        dataset=dataset,
    )


def resume(
    run_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    method: type[Method] | None = None,
    dataset: CTRDataset | None = None,
) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint (``method`` and
    ``dataset`` as given to :func:`run`, for runs made with them)."""
    rd = Path(run_dir)
    config = load_run_config(rd)
    state = load_checkpoint(rd / "checkpoint.pt")
    return _execute(
        config,
        rd,
        state=state,
        progress=progress,
        log=log,
        stop_after=stop_after,
        method_class=method,
        dataset=dataset,
    )
