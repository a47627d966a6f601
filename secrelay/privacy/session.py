"""A run's privacy ledger and budget: ``RUN_DIR/privacy_ledger.jsonl``.

:class:`PrivacySession` is what the experiment runner holds for a run with
differential privacy. Per round it

1. dry-runs the round's planned records against the budget
   (:meth:`PrivacySession.check`) — a round that could overspend raises
   :class:`~protocols.errors.BudgetExceededError` before it runs, leaving the
   checkpoint and the ledger untouched;
2. appends the records of what the round actually released
   (:meth:`PrivacySession.spend`, atomic), *before* the round's checkpoint is written;
3. reports :meth:`PrivacySession.state` (the number of records and a digest of the
   ledger at that point) for the checkpoint.

Resume. A crash between steps 2 and 3 leaves records of a round the checkpoint does
not contain. :meth:`PrivacySession.reconcile` compares the ledger with the
checkpoint's state: the records up to the checkpoint must match it byte for byte
(otherwise the ledger is not this run's and the resume is refused); records after
it belong to the interrupted round. Under ``privacy.randomness = "reproducible"`` the
resumed run replays that round *identically* — same sampled devices, same updates,
same noise — so the old records are dropped and re-spent once: nothing is double
counted, and nothing new was revealed. Under ``"secure"`` (the default) the replay
draws a fresh sample and fresh noise, so the interrupted round's release is a second,
independent release: its records are kept and the replay is counted again
(conservative and correct).

Units. The device users' ε (``unit = "user"``) composes every user-level record into
one global figure; example-level ε is per device; the ε of the cloud's pool users
(``unit = "pool_user"``, CoDA's privatized samples) is per pool user — never summed
across pool users and never into the device users' ε — and reported as the largest
(:meth:`PrivacySession.pool_user_epsilon`). Budgets apply to the device units only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from protocols.dp import (
    BudgetReport,
    DpEvent,
    LedgerRecord,
    PrivacyBudget,
    PrivacyLedger,
    make_accountant,
)
from protocols.errors import BudgetExceededError, DataFormatError
from secrelay.config import PrivacyConfig

__all__ = ["LEDGER_FILE", "EpsilonCache", "PrivacySession", "ledger_state"]

LEDGER_FILE = "privacy_ledger.jsonl"


def _lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return []


def _digest(lines: Sequence[bytes]) -> str:
    return hashlib.sha256(b"".join(lines)).hexdigest()


def ledger_state(path: str | os.PathLike[str], count: int | None = None) -> dict[str, Any]:
    """The number of lines of the ledger file at ``path`` and the digest of its first
    ``count`` lines (default all) — what a checkpoint stores
    (:meth:`PrivacySession.state`) and what ``secrelay audit`` compares with it."""
    lines = _lines(Path(path))
    return {"records": len(lines), "digest": _digest(lines if count is None else lines[:count])}


def _key(events: Sequence[DpEvent]) -> tuple[tuple[DpEvent, int], ...]:
    """Order-free key of a composition (ε depends on the multiset of events only)."""
    counts: dict[DpEvent, int] = {}
    for e in events:
        counts[e] = counts.get(e, 0) + 1
    return tuple(sorted(counts.items(), key=lambda kv: repr(kv[0])))


class EpsilonCache:
    """ε of compositions, memoised by their multiset of events.

    Devices with the same data size and participation count share one composition,
    so a run's many per-device ε's need few accountant evaluations.
    """

    def __init__(self, *, delta: float, accountant: str) -> None:
        self.delta = delta
        self.accountant = accountant
        self._cache: dict[tuple[tuple[DpEvent, int], ...], float] = {}

    def epsilon(self, events: Sequence[DpEvent]) -> float:
        key = _key(events)
        if key not in self._cache:
            acc = make_accountant(self.accountant)
            for event, count in key:
                acc.compose(event, count=count)
            self._cache[key] = acc.get_epsilon(delta=self.delta)
        return self._cache[key]

    def by_subject(self, records: Sequence[LedgerRecord]) -> dict[str, float]:
        """ε of every subject (device or pool user) covered by ``records``, each
        composing only the records that cover it — never summed across subjects."""
        events: dict[str, list[DpEvent]] = {}
        for r in records:
            for d in r.devices:
                events.setdefault(d, []).append(r.event)
        return {d: self.epsilon(evs) for d, evs in sorted(events.items())}


class PrivacySession:
    """The privacy ledger and budget of one run directory.

    Parameters
    ----------
    run_dir:
        The run directory; the ledger is ``run_dir / "privacy_ledger.jsonl"``.
    privacy:
        The run's ``[privacy]`` section (δ, accountant, budgets, noise mode).
    log:
        Where to report resume decisions.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        privacy: PrivacyConfig,
        *,
        log: Callable[[str], None] = print,
    ) -> None:
        self.path = Path(run_dir) / LEDGER_FILE
        self.privacy = privacy
        self.log = log
        p = privacy
        self.budget: PrivacyBudget | None = None
        if p.user_epsilon is not None or p.example_epsilon is not None:
            self.budget = PrivacyBudget(
                delta=p.delta,
                example_epsilon=p.example_epsilon,
                user_epsilon=p.user_epsilon,
                accountant=p.accountant,
            )
        self.ledger = PrivacyLedger.open(self.path)
        self._cache = EpsilonCache(delta=p.delta, accountant=p.accountant)

    # --- per round -------------------------------------------------------------
    def check(self, planned: Sequence[LedgerRecord]) -> BudgetReport | None:
        """Dry run of the round's planned records against the budget (appends nothing).

        Raises
        ------
        BudgetExceededError
            Naming every device / the global ε that would exceed the budget.
        """
        budget = self.budget
        if budget is None or not planned:
            return None
        existing = self.ledger.records
        per_device: dict[str, float] = {}
        problems: list[str] = []
        if budget.example_epsilon is not None:
            covered = sorted({d for r in planned if r.unit == "example" for d in r.devices})
            for device in covered:
                events = [
                    r.event
                    for r in (*existing, *planned)
                    if r.unit == "example" and r.covers(device)
                ]
                eps = per_device[device] = self._cache.epsilon(events)
                if eps > budget.example_epsilon:
                    problems.append(
                        f"device {device!r}: example-level ε would be {eps:.6g} > budget "
                        f"privacy.example_epsilon = {budget.example_epsilon:.6g}"
                    )
        user_eps: float | None = None
        if budget.user_epsilon is not None and any(r.unit == "user" for r in planned):
            events = [r.event for r in (*existing, *planned) if r.unit == "user"]
            user_eps = self._cache.epsilon(events)
            if user_eps > budget.user_epsilon:
                problems.append(
                    f"global user-level ε would be {user_eps:.6g} > budget "
                    f"privacy.user_epsilon = {budget.user_epsilon:.6g}"
                )
        if problems:
            rounds = sorted({r.round for r in planned})
            raise BudgetExceededError(
                f"refused round {', '.join(map(str, rounds))} before it ran, at δ = "
                f"{budget.delta:g} ({budget.accountant} accountant): "
                + "; ".join(problems)
                + "; the checkpoint and the privacy ledger are unchanged"
            )
        return BudgetReport(delta=budget.delta, example_epsilon=per_device, user_epsilon=user_eps)

    def spend(self, records: Sequence[LedgerRecord]) -> None:
        """Append what a round released (atomic). Never refused: a release that
        happened is always recorded; budgets are enforced by :meth:`check` before."""
        if records:
            self.ledger.spend(list(records))

    def user_epsilon(self) -> float | None:
        """The global user-level ε spent so far at δ (``None``: no user-level release)."""
        events = [r.event for r in self.ledger.records if r.unit == "user"]
        return self._cache.epsilon(events) if events else None

    def pool_user_epsilon(self) -> tuple[float, int] | None:
        """The largest pool user's ε at δ and the number of pool users released
        (``None``: no pool-user record). Each pool user composes only their own records."""
        by = self._cache.by_subject([r for r in self.ledger.records if r.unit == "pool_user"])
        return (max(by.values()), len(by)) if by else None

    def spent(self) -> dict[str, Any]:
        """What the ledger says was spent, for ``summary.json`` and ``RunResult``: the
        global user-level ε, the largest per-device example-level ε and the largest
        pool user's ε at δ, with the accountant (``secrelay audit`` gives the full
        report)."""
        example = self._cache.by_subject([r for r in self.ledger.records if r.unit == "example"])
        pool = self.pool_user_epsilon()
        return {
            "delta": self.privacy.delta,
            "accountant": self.privacy.accountant,
            "user_epsilon": self.user_epsilon(),
            "example_epsilon_max": max(example.values()) if example else None,
            "example_devices": len(example),
            "pool_user_epsilon_max": pool[0] if pool else None,
            "pool_users": pool[1] if pool else 0,
            "records": len(self.ledger.records),
            "randomness": self.privacy.randomness,
        }

    def state(self) -> dict[str, Any]:
        """What the checkpoint stores: the record count and the ledger's digest."""
        return ledger_state(self.path)

    # --- resume --------------------------------------------------------------------
    def reconcile(self, state: Mapping[str, Any] | None) -> None:
        """Align the ledger with a checkpoint's :meth:`state` before resuming (module doc).

        Raises
        ------
        DataFormatError
            If the ledger holds fewer records than the checkpoint saw, or its first
            records differ from the checkpoint's.
        """
        count = int(state["records"]) if state else 0
        lines = _lines(self.path)
        if len(lines) < count:
            raise DataFormatError(
                f"{self.path}: the checkpoint saw {count} ledger records but the file holds "
                f"{len(lines)}; refusing to resume with a truncated privacy ledger"
            )
        if state and _digest(lines[:count]) != state.get("digest"):
            raise DataFormatError(
                f"{self.path}: the first {count} ledger records differ from those the "
                "checkpoint saw; refusing to resume with a ledger of another run"
            )
        extra = len(lines) - count
        if extra == 0:
            return
        if self.privacy.randomness == "secure":
            self.log(
                f"privacy ledger: keeping {extra} record(s) of the interrupted round; with "
                "secure randomness its replay is a new release and is counted again"
            )
            return
        self.ledger.truncate(count)
        if _digest(_lines(self.path)) != _state_digest(state):  # pragma: no cover - invariant
            raise DataFormatError(f"{self.path}: rewriting the ledger prefix changed its bytes")
        self.log(
            f"privacy ledger: dropped {extra} record(s) of the interrupted round, which the "
            "resumed run replays identically (reproducible randomness)"
        )


def _state_digest(state: Mapping[str, Any] | None) -> str:
    """The ledger digest a checkpoint's :meth:`PrivacySession.state` recorded."""
    return str(state["digest"]) if state else _digest([])
