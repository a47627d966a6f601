"""The audit's figures: the ledger's records composed per unit and accountant.

*user* (a device's whole contribution) composes globally — and per device too when no
round was amplified; *example* per device; *pool_user* per pool user, never summed
across pool users. Also each mechanism's stand-alone ε and ε over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from protocols.dp import LedgerRecord
from secrelay.auditing.evidence import POOL_SIDE_FILE, RunEvidence
from secrelay.auditing.report import AccountantEpsilon, UnitEpsilon
from secrelay.privacy.session import LEDGER_FILE, EpsilonCache

__all__ = ["adjacency", "compose_figures"]


def adjacency(records: Sequence[LedgerRecord]) -> str | None:
    """The adjacency of ``records``: the one they share, ``"mixed: a, b"``, or
    ``"unstated"`` for records of a format-1 ledger; ``None`` without records."""
    if not records:
        return None
    kinds = sorted({r.adjacency or "unstated" for r in records})
    return kinds[0] if len(kinds) == 1 else "mixed: " + ", ".join(kinds)


_MAX_SERIES_POINTS = 25


def _series_rounds(rounds: Sequence[int]) -> list[int]:
    rs = sorted(set(rounds))
    if len(rs) <= _MAX_SERIES_POINTS:
        return rs
    step = (len(rs) - 1) / (_MAX_SERIES_POINTS - 1)
    return sorted({rs[round(i * step)] for i in range(_MAX_SERIES_POINTS)})


def _per_subject(records: Sequence[LedgerRecord]) -> dict[str, list[Any]]:
    """The events of every subject (device / pool user) the records cover."""
    out: dict[str, list[Any]] = {}
    for r in records:
        for d in r.devices:
            out.setdefault(d, []).append(r.event)
    return out


def _spread(values: dict[str, float]) -> dict[str, Any]:
    worst = max(values, key=lambda d: values[d])
    vals = list(values.values())
    return {
        "min": min(vals),
        "median": statistics.median(vals),
        "max": max(vals),
        "max_device": worst,
    }


def _claim(
    budget: float | None, target: float | None, budget_name: str, target_name: str
) -> tuple[float | None, str | None]:
    """The budget (``privacy.<budget_name>``), else the calibration target
    (``privacy.<target_name>_epsilon``), with its config key."""
    if budget is not None:
        return budget, f"privacy.{budget_name}"
    if target is not None:
        return target, f"privacy.{target_name}_epsilon"
    return None, None


def compose_figures(
    ev: RunEvidence,
    accountants: list[str],
    caches: dict[str, EpsilonCache],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], tuple[UnitEpsilon, UnitEpsilon, UnitEpsilon]]:
    """The report's figures: the JSON details (``user_level``, ``example_level``,
    ``pool_user_level``, ``mechanisms``, ``series``, ``ledger``, ``adjacency``) and
    the typed per-unit ε's."""
    p = ev.config.privacy
    main = accountants[0]
    records = list(ev.records)
    ledger_path = ev.run_dir / LEDGER_FILE
    user = [r for r in records if r.unit == "user"]
    example = [r for r in records if r.unit == "example"]
    pooled = [r for r in records if r.unit == "pool_user"]
    details: dict[str, Any] = {
        "ledger": {
            "path": str(ledger_path),
            "records": len(records),
            **({"rounds": sorted({r.round for r in records})} if records else {}),
        },
        "adjacency": {"user": adjacency(user), "example": adjacency(example)},
    }
    if ev.side_records:
        details["ledger"]["pool_side_file"] = str(ev.run_dir / POOL_SIDE_FILE)

    # --- user level (global) ---------------------------------------------------
    log(f"user level: {len(user)} records")
    user_eps: dict[str, float | None] = {
        a: (caches[a].epsilon([r.event for r in user]) if user else None) for a in accountants
    }
    ul: dict[str, Any] = {"epsilon": user_eps}
    if records:
        ul.update(
            records=len(user),
            adjacency=details["adjacency"]["user"],
            budget=p.user_epsilon,
            noise_multiplier=sorted({r.noise_multiplier for r in user if r.noise_multiplier}),
            clipping_norm=p.clipping_norm,
            sensitivity=sorted({r.sensitivity for r in user if r.sensitivity}),
            sample_rate=sorted({r.sample_rate for r in user if r.sample_rate}),
            participants_per_round=(
                statistics.mean(len(r.devices) for r in user if r.sample_rate is None)
                if any(r.sample_rate is None for r in user)
                else None
            ),
        )
    # Without amplification (fixed-size sampling, secure aggregation) a device's
    # user-level ε composes only the rounds whose sum it was in: report it per device
    # too (with amplification the global ε already holds for every device).
    if user and all(r.sample_rate is None for r in user):
        by_user = _per_subject(user)
        per_user = {d: caches[main].epsilon(evs) for d, evs in sorted(by_user.items())}
        ul["per_device"] = {
            "devices": len(per_user),
            **_spread(per_user),
            "rounds_max": max(len(v) for v in by_user.values()),
        }
    details["user_level"] = ul

    # --- example level (per device) and pool users (per pool user) --------------------
    def per_subject(recs: list[LedgerRecord]) -> dict[str, dict[str, float]]:
        subjects = _per_subject(recs)
        return {
            a: {d: caches[a].epsilon(evs) for d, evs in sorted(subjects.items())}
            for a in accountants
        }

    ex_eps = per_subject(example)
    log(f"example level: {len(ex_eps[main])} devices")
    ex: dict[str, Any] = {"devices": len(ex_eps[main]), "epsilon": {}}
    if records:
        ex.update(
            adjacency=details["adjacency"]["example"],
            budget=p.example_epsilon,
            per_device=ex_eps[main],
        )
    for a in accountants:
        if ex_eps[a]:
            ex["epsilon"][a] = _spread(ex_eps[a])
    if ex_eps[main]:
        participations = [len({r.round for r in example if r.covers(d)}) for d in ex_eps[main]]
        ex["rounds_per_device"] = {
            "min": min(participations),
            "median": statistics.median(participations),
            "max": max(participations),
        }
    details["example_level"] = ex
    pool_eps = per_subject(pooled)
    log(f"pool users: {len(pool_eps[main])}")
    details["pool_user_level"] = {
        "records": len(pooled),
        "pool_users": len(pool_eps[main]),
        "adjacency": adjacency(pooled),
        "epsilon": {a: _spread(pool_eps[a]) for a in accountants if pool_eps[a]},
        "per_pool_user": pool_eps[main],
    }

    # --- mechanisms ------------------------------------------------------------------
    mechs = []
    for unit, recs in (("user", user), ("example", example), ("pool_user", pooled)):
        names = sorted({r.mechanism for r in recs})
        alone: dict[str, dict[str, float]] = {}
        for name in names:
            mine = [r for r in recs if r.mechanism == name]
            if unit == "user":
                alone[name] = {a: caches[a].epsilon([r.event for r in mine]) for a in accountants}
            else:  # the worst subject's ε from this mechanism alone
                devs = _per_subject(mine)
                alone[name] = {
                    a: max(caches[a].epsilon(evs) for evs in devs.values()) for a in accountants
                }
        total = sum(v[main] for v in alone.values())
        for name in names:
            mine = [r for r in recs if r.mechanism == name]
            mechs.append(
                {
                    "unit": unit,
                    "mechanism": name,
                    "adjacency": adjacency(mine),
                    "records": len(mine),
                    "epsilon_alone": alone[name],
                    "share": (alone[name][main] / total) if total > 0 else None,
                }
            )
    details["mechanisms"] = mechs
    details["series"] = _series(records, user, example, pooled, caches[main]) if records else {}

    # The stated claim each figure is held to: the budget, else the calibration target.
    user_budget, user_key = _claim(p.user_epsilon, p.target_epsilon, "user_epsilon", "target")
    ex_budget, ex_key = _claim(
        p.example_epsilon, p.local_target_epsilon, "example_epsilon", "local_target"
    )

    def figures(
        eps: dict[str, Any], budget: float | None, key: str | None
    ) -> tuple[AccountantEpsilon, ...]:
        # A budget binds every accountant's figure. A calibration target binds only the
        # accountant the noise was calibrated with (the run's): a looser comparison
        # bound (RDP against PRV) above the target is expected, not an overspend.
        target = key is not None and key.endswith("target_epsilon")
        return tuple(
            AccountantEpsilon(a, eps.get(a), None if target and a != main else budget)
            for a in accountants
        )

    def largest(per: dict[str, dict[str, float]]) -> dict[str, float | None]:
        return {a: (max(per[a].values()) if per[a] else None) for a in accountants}

    units = (
        UnitEpsilon(
            unit="user",
            scope="global",
            records=len(user),
            subjects=len({d for r in user for d in r.devices}),
            adjacency=details["adjacency"]["user"],
            budget=user_budget,
            budget_key=user_key,
            figures=figures(user_eps, user_budget, user_key),
        ),
        UnitEpsilon(
            unit="example",
            scope="largest device",
            records=len(example),
            subjects=len(ex_eps[main]),
            adjacency=details["adjacency"]["example"],
            budget=ex_budget,
            budget_key=ex_key,
            figures=figures(largest(ex_eps), ex_budget, ex_key),
            largest_subject=ex["epsilon"].get(main, {}).get("max_device"),
        ),
        UnitEpsilon(
            unit="pool_user",
            scope="largest pool user",
            records=len(pooled),
            subjects=len(pool_eps[main]),
            adjacency=adjacency(pooled),
            budget=None,
            figures=figures(largest(pool_eps), None, None),
            largest_subject=(
                max(pool_eps[main], key=lambda d: pool_eps[main][d]) if pool_eps[main] else None
            ),
        ),
    )
    return details, units


def _series(
    records: list[LedgerRecord],
    user: list[LedgerRecord],
    example: list[LedgerRecord],
    pooled: list[LedgerRecord],
    cache: EpsilonCache,
) -> dict[str, list[list[float]]]:
    """ε over rounds: the user ε, the largest and median device's example ε and (with
    pool-user records) the largest pool user's ε after each round."""
    series: dict[str, list[list[float]]] = {"user": [], "example_max": [], "example_median": []}
    if pooled:
        series["pool_user_max"] = []
    for t in _series_rounds([r.round for r in records]):
        upto = [r for r in user if r.round <= t]
        if upto:
            series["user"].append([t, cache.epsilon([r.event for r in upto])])
        devs_t = _per_subject([r for r in example if r.round <= t])
        if devs_t:
            vals = [cache.epsilon(evs) for evs in devs_t.values()]
            series["example_max"].append([t, max(vals)])
            series["example_median"].append([t, statistics.median(vals)])
        pool_t = _per_subject([r for r in pooled if r.round <= t])
        if pool_t:
            series["pool_user_max"].append([t, max(cache.epsilon(e) for e in pool_t.values())])
    return series
