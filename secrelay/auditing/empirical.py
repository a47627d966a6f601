"""Empirical lower bounds on ε: ``RUN_DIR/attack_audit.json``, read as JSON only.

The attack grid (``python -m attacks``, issue 15) writes one object per audit into
each DP setting's run directory: ``attack``, ``unit``, ``design`` (``many-runs`` /
``one-run``), ``epsilon_lower`` (what the attack certifies at ``confidence``),
``epsilon_upper`` (the accountant's ε for the audited release), ``ceiling`` (the most
the design can certify) and ``regime``. ``secrelay`` never imports ``attacks``; it
shows these next to the ledger's ε. A user-level audit also records the run's ε it
was made for (``run_user_epsilon``); the audit warns when that differs from the ledger's
(a file left by an earlier run in the same directory).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ATTACK_AUDIT_FILE", "EmpiricalBound", "read_empirical"]

ATTACK_AUDIT_FILE = "attack_audit.json"


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


@dataclass(frozen=True)
class EmpiricalBound:
    """One empirical audit of the run's privacy unit ``unit``.

    ``epsilon_lower`` is a lower bound on the true ε (at ``confidence``);
    ``epsilon_upper`` the accountant's upper bound for the audited release (a
    many-runs audit audits one release, not the whole run); ``run_epsilon`` the
    ledger's ε for the unit (filled in by the audit).
    """

    attack: str
    unit: str
    design: str
    epsilon_lower: float
    epsilon_upper: float | None
    ceiling: float | None
    confidence: float | None
    regime: str
    run_epsilon: float | None = None
    audited_run_epsilon: float | None = None

    @property
    def violation(self) -> bool:
        """Whether the lower bound exceeds the accountant's upper bound."""
        return self.epsilon_upper is not None and self.epsilon_lower > self.epsilon_upper

    def as_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "unit": self.unit,
            "design": self.design,
            "epsilon_lower": self.epsilon_lower,
            "epsilon_upper": self.epsilon_upper,
            "ceiling": self.ceiling,
            "confidence": self.confidence,
            "regime": self.regime,
            "run_epsilon": self.run_epsilon,
            "violation": self.violation,
        }

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any]) -> EmpiricalBound:
        lower = _num(obj.get("epsilon_lower"))
        if lower is None or not isinstance(obj.get("unit"), str):
            raise ValueError("needs a numeric 'epsilon_lower' and a 'unit'")
        return cls(
            attack=str(obj.get("attack", "audit")),
            unit=str(obj["unit"]),
            design=str(obj.get("design", "—")),
            epsilon_lower=lower,
            epsilon_upper=_num(obj.get("epsilon_upper")),
            ceiling=_num(obj.get("ceiling")),
            confidence=_num(obj.get("confidence")),
            regime=str(obj.get("regime", "—")),
            audited_run_epsilon=_num(obj.get("run_user_epsilon")),
        )


def read_empirical(run_dir: Path) -> tuple[list[EmpiricalBound], list[str]]:
    """The bounds in ``run_dir/attack_audit.json`` and warnings (unreadable file,
    violated bounds); ``([], [])`` when the run was not audited."""
    path = run_dir / ATTACK_AUDIT_FILE
    if not path.is_file():
        return [], []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError("not a list of audits")
        bounds = [EmpiricalBound.from_mapping(x) for x in data if isinstance(x, Mapping)]
    except (ValueError, UnicodeDecodeError) as e:
        return [], [f"{ATTACK_AUDIT_FILE} is unreadable ({e}): its empirical bounds are not shown"]
    warnings = [
        f"empirical audit {b.attack}: the lower bound ε ≥ {b.epsilon_lower:.3g} exceeds the "
        f"accountant's upper bound {b.epsilon_upper:.3g}: the implementation or the "
        "accounting is wrong"
        for b in bounds
        if b.violation and b.epsilon_upper is not None
    ]
    return bounds, warnings
