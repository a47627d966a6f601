"""What a run directory shows, and the check that its privacy ledger is complete.

``secrelay audit`` believes the run's files, not its config: :func:`load_evidence`
reads the ledger, ``metrics.jsonl``, the checkpoint and (for old CoDA runs) the side
file ``coda_pool_ledger.jsonl``; :func:`check_ledger` cross-checks them and raises
:class:`AuditError` — one error naming every problem — when

* the ledger is **corrupt** (an invalid line; a checkpoint whose digest of the ledger's
  first records differs from the file's);
* the ledger is **missing** while the run made releases: the config has DP on and a
  round completed that, under the run's privacy plan, releases; or the checkpoint
  saw ledger records;
* the ledger is **truncated**: fewer records than the checkpoint saw, or a completed
  round without the records its plan releases (per unit: ``user`` under
  ``privacy.user_level_dp`` or ``privacy.query_ldp``, ``example`` under
  ``privacy.dp_sgd`` when a device trained, ``pool_user`` when the round's metrics say
  CoDA released privatized samples — with their exact number).

What a round releases under the plan is read from its metrics record: an aborted
round releases nothing that must be there (what it did release is still counted), a
round whose devices all dropped trains no DP-SGD, and central DP under Poisson
sampling releases every round, even an empty one (:mod:`secrelay.privacy.plan`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.dp import LedgerRecord, PrivacyLedger
from protocols.errors import DataFormatError
from secrelay.config import RunConfig
from secrelay.privacy.session import LEDGER_FILE, ledger_state

__all__ = [
    "POOL_SIDE_FILE",
    "AuditError",
    "LedgerCheck",
    "RunEvidence",
    "check_ledger",
    "load_evidence",
]

POOL_SIDE_FILE = "coda_pool_ledger.jsonl"
"""Where CoDA kept its pool users' records before they moved into the run's ledger."""

_UNIT_TEXT = {"user": "user-level", "example": "example-level", "pool_user": "pool-user"}


class AuditError(DataFormatError):
    """A run directory's records do not add up: its privacy ledger is missing,
    truncated or corrupt when checked against the run's metrics, checkpoint and config.

    A :class:`~protocols.errors.DataFormatError`: command-line exit code 3.
    """


@dataclass(frozen=True)
class RunEvidence:
    """The files of a run directory that the audit reads (nothing else)."""

    run_dir: Path
    config: RunConfig
    metrics: tuple[Mapping[str, Any], ...]
    checkpoint: Mapping[str, Any] | None
    ledger: PrivacyLedger | None
    side_records: tuple[LedgerRecord, ...] = ()
    sources: tuple[str, ...] = ()

    @property
    def records(self) -> tuple[LedgerRecord, ...]:
        """Every ledger record, with an old run's CoDA side-file records."""
        return (*(self.ledger.records if self.ledger else ()), *self.side_records)

    @property
    def rounds(self) -> tuple[int, ...]:
        """Device rounds (≥ 1) that completed, per ``metrics.jsonl`` and the checkpoint."""
        return tuple(sorted({int(r["round"]) for r in self.metrics if int(r["round"]) >= 1}))


@dataclass(frozen=True)
class LedgerCheck:
    """What the ledger was checked against, and what the check found.

    Attributes
    ----------
    sources:
        The evidence used (``"metrics.jsonl"``, ``"checkpoint.pt"``, ``"config.json"``).
    rounds:
        Device rounds completed.
    expected:
        Per round, the units whose records the run's privacy plan releases.
    ledger_records, checkpoint_records:
        Records in the ledger; records the last checkpoint saw (``None``: no checkpoint
        with a privacy state).
    after_checkpoint:
        Records written after the last checkpoint (an interrupted round's release: kept
        and counted).
    """

    sources: tuple[str, ...]
    rounds: tuple[int, ...]
    expected: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    ledger_records: int = 0
    checkpoint_records: int | None = None
    after_checkpoint: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": True,
            "sources": list(self.sources),
            "rounds_completed": list(self.rounds),
            "expected_units": {str(t): list(u) for t, u in self.expected.items()},
            "ledger_records": self.ledger_records,
            "checkpoint_records": self.checkpoint_records,
            "records_after_checkpoint": self.after_checkpoint,
        }


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("round"), int):
                raise ValueError("not a round record")
        except ValueError as e:
            raise AuditError(f"{path}:{lineno}: invalid metrics record: {e}") from None
        out.append(rec)
    return out


def _read_side_file(path: Path) -> tuple[LedgerRecord, ...]:
    """An old CoDA run's pool-user records (``unit = "user"`` then), as ``pool_user``."""
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            obj = json.loads(line)
            rec = LedgerRecord.from_dict({**obj, "unit": "pool_user"}, version=3)
        except (ValueError, TypeError) as e:
            raise AuditError(f"{path}:{lineno}: invalid pool-user record: {e}") from None
        out.append(rec)
    return tuple(out)


def load_evidence(run_dir: Path, config: RunConfig) -> RunEvidence:
    """Read the ledger, the metrics and the checkpoint of ``run_dir``.

    Raises
    ------
    AuditError
        If the ledger, ``metrics.jsonl``, the checkpoint or the CoDA side file is
        unreadable or corrupt (naming the file and line).
    """
    sources = ["config.json"]
    ledger = None
    path = run_dir / LEDGER_FILE
    if path.exists():
        try:
            ledger = PrivacyLedger.load(path)
        except DataFormatError as e:
            raise AuditError(f"the privacy ledger is corrupt: {e}") from None
    metrics: list[dict[str, Any]] = []
    if (run_dir / "metrics.jsonl").is_file():
        metrics = _read_metrics(run_dir / "metrics.jsonl")
        sources.append("metrics.jsonl")
    checkpoint = None
    if (run_dir / "checkpoint.pt").is_file():
        from secrelay.checkpoint import load_checkpoint

        try:
            checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
        except DataFormatError as e:
            raise AuditError(f"cannot check the privacy ledger: {e}") from None
        sources.append("checkpoint.pt")
        seen = {int(r["round"]) for r in metrics}
        metrics += [dict(r) for r in checkpoint.get("records", ()) if int(r["round"]) not in seen]
    # Old CoDA runs kept the pool users' records aside; a ledger that has them makes
    # the side file (left by an earlier run in the directory) moot.
    side = run_dir / POOL_SIDE_FILE
    in_ledger = ledger is not None and any(r.unit == "pool_user" for r in ledger.records)
    side_records = _read_side_file(side) if side.is_file() and not in_ledger else ()
    return RunEvidence(
        run_dir=run_dir,
        config=config,
        metrics=tuple(sorted(metrics, key=lambda r: int(r["round"]))),
        checkpoint=checkpoint,
        ledger=ledger,
        side_records=side_records,
        sources=tuple(sources),
    )


def expected_units(config: RunConfig, record: Mapping[str, Any]) -> dict[str, str]:
    """The units whose records a completed round must have under the run's privacy
    plan, each with the setting that makes it release (module doc)."""
    if record.get("aborted"):
        return {}
    p = config.privacy
    out: dict[str, str] = {}
    trained = record.get("devices", record.get("sampled"))
    if trained is not None:
        trained = int(trained) - int(record.get("dropped", 0))
    central_poisson = (
        p.user_level_dp and not p.secure_aggregation and config.federated.sampling == "poisson"
    )
    if p.user_level_dp and (central_poisson or record.get("survivors", 1)):
        out["user"] = "privacy.user_level_dp"
    if p.query_ldp != "off":
        out["user"] = f"privacy.query_ldp = {p.query_ldp!r}"
    if p.dp_sgd and (trained is None or trained > 0):
        out["example"] = "privacy.dp_sgd"
    if record.get("privatized/samples_released"):
        out["pool_user"] = "method.options.privatize_samples"
    return out


def check_ledger(ev: RunEvidence) -> LedgerCheck:
    """Cross-check the ledger with the metrics, the checkpoint and the config.

    Raises
    ------
    AuditError
        Naming every problem: a missing, truncated or altered ledger, or rounds
        without the releases their plan makes.
    """
    problems: list[str] = []
    rd = ev.run_dir
    ledger_path = rd / LEDGER_FILE
    records = ev.records
    n_ledger = len(ev.ledger) if ev.ledger is not None else 0
    state = (ev.checkpoint or {}).get("privacy")
    ck_records = int(state["records"]) if state else None
    after = 0
    if state and ck_records:
        ck_round = (ev.checkpoint or {}).get("round")
        if ev.ledger is None:
            problems.append(
                f"the privacy ledger {ledger_path.name} is missing, but the checkpoint "
                f"(after round {ck_round}) saw {ck_records} ledger records"
            )
        elif n_ledger < ck_records:
            problems.append(
                f"the privacy ledger is truncated: the checkpoint (after round {ck_round}) "
                f"saw {ck_records} records, the file holds {n_ledger}"
            )
        elif ledger_state(ledger_path, ck_records)["digest"] != state.get("digest"):
            problems.append(
                f"the privacy ledger's first {ck_records} records differ from those the "
                f"checkpoint (after round {ck_round}) saw: the file was edited or belongs "
                "to another run"
            )
        else:
            after = n_ledger - ck_records
    expected = {
        int(r["round"]): tuple(expected_units(ev.config, r))
        for r in ev.metrics
        if int(r["round"]) >= 1
    }
    missing: list[str] = []
    for rec in ev.metrics:
        t = int(rec["round"])
        if t < 1:
            continue
        mine = [r for r in records if r.round == t]
        for unit, why in expected_units(ev.config, rec).items():
            got = [r for r in mine if r.unit == unit]
            if not got:
                missing.append(f"round {t} has no {_UNIT_TEXT[unit]} record (expected: {why})")
            elif unit == "pool_user":
                released = int(rec["privatized/samples_released"])
                steps = sum(int(r.steps or 0) for r in got)
                if steps != released:
                    missing.append(
                        f"round {t}: the pool-user records cover {steps} privatized samples, "
                        f"the round's metrics say {released} were released"
                    )
    dp_on = ev.config.privacy.differential_privacy
    if ev.ledger is None and dp_on and not {"metrics.jsonl", "checkpoint.pt"} & set(ev.sources):
        problems.append(
            f"the privacy ledger {ledger_path.name} is missing and the run has DP on, but "
            "there is no metrics.jsonl or checkpoint.pt to tell whether any round released"
        )
    if ev.ledger is None and problems:
        pass  # its absence is already named (the checkpoint saw records)
    elif ev.ledger is None and not ev.side_records and missing:
        on = ", ".join(
            sorted({w for r in ev.metrics for w in expected_units(ev.config, r).values()})
        )
        problems.append(
            f"the privacy ledger {ledger_path.name} is missing, but the run has differential "
            f"privacy on ({on}) "
            f"and completed round(s) {_rounds(expected)} that release under it"
        )
    elif missing:
        problems.append("the privacy ledger is truncated: " + "; ".join(missing))
    if problems:
        raise AuditError(
            f"audit of {str(rd)!r} refused: "
            + "; ".join(problems)
            + f" (checked against {', '.join(ev.sources)})"
        )
    return LedgerCheck(
        sources=ev.sources,
        rounds=ev.rounds,
        expected={t: u for t, u in expected.items() if u},
        ledger_records=n_ledger,
        checkpoint_records=ck_records,
        after_checkpoint=after,
    )


def _rounds(expected: Mapping[int, Sequence[str]]) -> str:
    rs = sorted(t for t, u in expected.items() if u)
    if len(rs) > 3 and rs == list(range(rs[0], rs[-1] + 1)):
        return f"{rs[0]}–{rs[-1]}"
    return ", ".join(map(str, rs))
