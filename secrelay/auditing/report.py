"""The typed result of ``secrelay.audit(run_dir)``: :class:`AuditReport`.

Typed fields carry the main figures — ε per unit and accountant with its budget and
over-budget flag, the flows with their protection, the empirical bounds, the ledger
check, warnings and notes. :meth:`AuditReport.to_dict` gives the JSON form written to
``audit.json``: every key earlier versions returned (``user_level``,
``example_level``, ``mechanisms``, ``series``, …, unchanged) plus ``pool_user_level``,
``budgets``, ``over_budget``, ``flows``, ``flow_evidence``, ``empirical`` and
``checks``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from secrelay.auditing.empirical import EmpiricalBound
from secrelay.auditing.evidence import LedgerCheck
from secrelay.auditing.flows import Flow

__all__ = ["AccountantEpsilon", "AuditReport", "UnitEpsilon", "comparison_bound_note"]

Unit = Literal["user", "example", "pool_user"]


def comparison_bound_note(
    accountant: str, own_accountant: str, own_epsilon: float | None, own_over_budget: bool
) -> str:
    """What to add to an over-budget flag raised by a *comparison* accountant while the
    run's own accountant keeps the budget (empty otherwise): the budget is held against
    every accountant's upper bound, and a looser one may exceed it."""
    if accountant == own_accountant or own_epsilon is None or own_over_budget:
        return ""
    return (
        f"; {accountant} is a comparison bound: the run's accountant ({own_accountant}) "
        f"gives {own_epsilon:.3f} for the same releases, within the budget (every figure "
        "is an upper bound; the budget is held against each)"
    )


@dataclass(frozen=True)
class AccountantEpsilon:
    """One accountant's ε for one unit, against the unit's budget.

    ``epsilon`` is ``None`` when the unit had no release (ε = ∞ for the device
    users of a run without DP; nothing spent for the per-subject units).
    """

    accountant: str
    epsilon: float | None
    budget: float | None

    @property
    def over_budget(self) -> bool:
        """Whether ε exceeds the configured budget (the run's own accountant kept
        within it; another accountant's bound may not be)."""
        return self.epsilon is not None and self.budget is not None and self.epsilon > self.budget

    def as_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant,
            "epsilon": self.epsilon,
            "budget": self.budget,
            "over_budget": self.over_budget,
        }


@dataclass(frozen=True)
class UnitEpsilon:
    """ε of one privacy unit.

    Attributes
    ----------
    unit:
        ``"user"`` (a device's whole contribution; global), ``"example"`` (one training
        example; per device) or ``"pool_user"`` (a user of the cloud's pool whose
        samples were released; per pool user).
    scope:
        What the headline figure is: ``"global"``, ``"largest device"`` or
        ``"largest pool user"``.
    records, subjects:
        Ledger records of the unit; devices / pool users they cover.
    adjacency:
        The neighbouring relation (``"mixed: …"`` when records differ).
    budget, budget_key:
        The claim the figures are held to: the budget (``privacy.user_epsilon`` /
        ``example_epsilon``), else the calibration target (``privacy.target_epsilon`` /
        ``local_target_epsilon``), and which key it is.
    figures:
        One :class:`AccountantEpsilon` per accountant, the run's first.
    largest_subject:
        The device / pool user with the largest ε (run's accountant).
    """

    unit: Unit
    scope: str
    records: int
    subjects: int
    adjacency: str | None
    budget: float | None
    figures: tuple[AccountantEpsilon, ...]
    largest_subject: str | None = None
    budget_key: str | None = None

    def epsilon(self, accountant: str | None = None) -> float | None:
        """The figure of ``accountant`` (default: the run's)."""
        for f in self.figures:
            if accountant is None or f.accountant == accountant:
                return f.epsilon
        raise KeyError(accountant)

    @property
    def over_budget(self) -> tuple[str, ...]:
        """The accountants whose ε exceeds the budget."""
        return tuple(f.accountant for f in self.figures if f.over_budget)


@dataclass(frozen=True)
class AuditReport:
    """The privacy audit of one run directory (``secrelay audit RUN_DIR``).

    Every ε is an upper bound at :attr:`delta` for its unit and adjacency; the
    :attr:`empirical` bounds, where the attack grid audited the run, are lower bounds.
    """

    run_dir: Path
    run: str
    delta: float
    accountant: str
    accountants: tuple[str, ...]
    randomness: str
    user: UnitEpsilon
    example: UnitEpsilon
    pool_user: UnitEpsilon
    flows: tuple[Flow, ...]
    flow_evidence: str
    flow_source: str
    secure_aggregation: bool
    empirical: tuple[EmpiricalBound, ...]
    check: LedgerCheck
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    plot: str | None = None
    _details: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def units(self) -> tuple[UnitEpsilon, ...]:
        return (self.user, self.example, self.pool_user)

    @property
    def over_budget(self) -> tuple[tuple[str, str], ...]:
        """(unit, accountant) of every figure above its budget."""
        return tuple((u.unit, a) for u in self.units for a in u.over_budget)

    @property
    def plaintext_flows(self) -> tuple[Flow, ...]:
        """Flows whose content reached the server (or a device) in the clear."""
        return tuple(f for f in self.flows if f.status == "plaintext")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``audit.json``): the keys of earlier versions, unchanged,
        plus the new ones (module doc). Infinite floats stay floats here; ``audit.json``
        writes them as ``null``."""
        out: dict[str, Any] = copy.deepcopy(dict(self._details))
        out.update(
            run_dir=str(self.run_dir),
            run=self.run,
            delta=self.delta,
            accountant=self.accountant,
            accountants=list(self.accountants),
            randomness=self.randomness,
            secure_aggregation=self.secure_aggregation,
            warnings=list(self.warnings),
            notes=list(self.notes),
            plot=self.plot,
            budgets=[
                {"unit": u.unit, "scope": u.scope, "budget_key": u.budget_key, **f.as_dict()}
                for u in self.units
                for f in u.figures
                if f.epsilon is not None
            ],
            over_budget=[{"unit": u, "accountant": a} for u, a in self.over_budget],
            flows=[{**f.as_dict(), "evidence": self.flow_source} for f in self.flows],
            flow_evidence=self.flow_evidence,
            flow_source=self.flow_source,
            empirical={
                "status": "audited" if self.empirical else "not audited",
                "bounds": [b.as_dict() for b in self.empirical],
            },
            checks=self.check.as_dict(),
        )
        return out


def finite(x: float | None) -> float | None:
    """``x`` if it is a finite float, else ``None`` (JSON has no ∞)."""
    return x if x is not None and math.isfinite(x) else None
