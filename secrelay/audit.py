"""``secrelay audit RUN_DIR``: the privacy report of a run, checked against the run.

The audit believes the run's files, not its config. It

1. **checks the ledger** (:mod:`secrelay.auditing.evidence`): ``privacy_ledger.jsonl``
   against ``metrics.jsonl``, the checkpoint and the releases the run's privacy plan
   makes per completed round; a missing, truncated or corrupt ledger fails with
   :class:`~secrelay.auditing.AuditError` (exit code 3) naming every problem;
2. **composes** the records with the run's accountant (PRV by default; RDP is shown
   for comparison) per unit: the device users' ε (*user*: a device's whole
   contribution; global), *example* (one training example; per device) and
   *pool_user* (a user of the cloud's pool whose samples CoDA released; per pool
   user, never summed across pool users) — each figure against its budget, and
   flagged where an accountant's ε exceeds it;
3. lists **every flow** the run had with the protection its transcript and ledger
   show (:mod:`secrelay.auditing.flows`; where no transcript was saved, it says which
   evidence it used);
4. shows the attack grid's **empirical lower bounds** from ``attack_audit.json`` next
   to the accountant's upper bounds, or "not audited".

It returns an :class:`~secrelay.auditing.AuditReport` and writes

* ``RUN_DIR/audit.json`` — :meth:`AuditReport.to_dict`;
* ``RUN_DIR/audit.md`` — the same as a short report;
* ``RUN_DIR/audit_epsilon.png`` — ε over rounds (matplotlib, Agg backend).

Every ε is an upper bound at the stated δ and names its *adjacency* (add/remove,
replace-one or zero-out, from the ledger records) and the run's randomness mode; a
run with ``privacy.randomness = "reproducible"`` carries the warning that its
guarantee holds only against parties who do not know ``run.seed``.

``secrelay.audit(run_dir)`` is the same function (this module is callable).

Examples
--------
>>> from secrelay.audit import audit          # doctest: +SKIP
>>> report = audit("runs/dp-fedavg")          # doctest: +SKIP
>>> report.user.epsilon("prv"), report.over_budget    # doctest: +SKIP
(3.98..., ())
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from secrelay.auditing.empirical import EmpiricalBound, read_empirical
from secrelay.auditing.evidence import (
    POOL_SIDE_FILE,
    AuditError,
    LedgerCheck,
    RunEvidence,
    check_ledger,
    load_evidence,
)
from secrelay.auditing.figures import compose_figures
from secrelay.auditing.flows import flows_from_evidence
from secrelay.auditing.markdown import render_markdown
from secrelay.auditing.report import AuditReport, UnitEpsilon
from secrelay.checkpoint import atomic_write_text
from secrelay.config import RunConfig, load_run_config
from secrelay.privacy.session import EpsilonCache

__all__ = ["REPRODUCIBLE_WARNING", "AuditError", "AuditReport", "audit", "render_markdown"]

REPRODUCIBLE_WARNING = (
    "privacy.randomness = 'reproducible': the guarantee holds only against parties who "
    "do not know run.seed (the noise, the device samples and the SecAgg keys were "
    "derived from it; whoever knows the config can regenerate them)"
)
"""The warning every report of a reproducible run carries."""

SECAGG_MALICIOUS_NOTE = (
    "secure aggregation threat model: malicious server (privacy.secagg_active_security = "
    "true): authenticated keys, the consistency check and the surviving-graph rule; "
    "the server learns only the sum of all survivors even if it deviates from the "
    "protocol and colludes with up to t - 1 devices (docs/secagg.md)"
)
SECAGG_PASSIVE_NOTE = (
    "secure aggregation threat model: honest-but-curious server "
    "(privacy.secagg_active_security = false): the guarantee holds only if the server "
    "follows the protocol; a deviating server can learn individual updates (docs/secagg.md)"
)


def _randomness_warnings(config: RunConfig) -> list[str]:
    return [REPRODUCIBLE_WARNING] if config.privacy.randomness == "reproducible" else []


AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"
AUDIT_PLOT = "audit_epsilon.png"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def audit(
    run_dir: str | Path,
    *,
    accountant: str | None = None,
    comparison: str | None = "rdp",
    write: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> AuditReport:
    """Audit ``run_dir``: check its ledger against the run, compose it, list its flows.

    Parameters
    ----------
    run_dir:
        A run directory (holds ``config.json``).
    accountant:
        Accountant of the headline ε's; default ``privacy.accountant`` of the run.
    comparison:
        A second accountant shown next to it (``None``: none).
    write:
        Write ``audit.json``, ``audit.md`` and ``audit_epsilon.png``.

    Raises
    ------
    ConfigError
        If ``run_dir`` is not a run directory.
    AuditError
        If the ledger is missing, truncated or corrupt against the run's metrics,
        checkpoint and config (every problem named; exit code 3 on the CLI).
    """
    rd = Path(run_dir)
    config = load_run_config(rd)
    p = config.privacy
    delta = float(p.delta)
    main = accountant or p.accountant
    accountants = [main] + ([comparison] if comparison and comparison != main else [])
    ev = load_evidence(rd, config)
    check = check_ledger(ev)
    log(f"ledger checked against {', '.join(check.sources)}: {len(check.rounds)} rounds")
    caches = {a: EpsilonCache(delta=delta, accountant=a) for a in accountants}
    details, units = compose_figures(ev, accountants, caches, log)
    pool = units[2]
    pool_eps = pool.epsilon(main)
    flows, evidence, source = flows_from_evidence(
        rd,
        method=config.method.name,
        metrics=ev.metrics,
        records=ev.records,
        pool=(pool_eps, pool.subjects) if pool_eps is not None else None,
        checkpoint=ev.checkpoint,
    )
    secure = any("secure aggregation" in f.protection for f in flows)
    warnings = _randomness_warnings(config)
    bounds, emp_warnings = read_empirical(rd)
    bounds = _with_run_epsilon(bounds, units, main, warnings)
    warnings += emp_warnings
    notes = _notes(ev, check, details, secure)
    if secure:
        active = p.secagg_active_security
        notes.append(SECAGG_MALICIOUS_NOTE if active else SECAGG_PASSIVE_NOTE)
        warnings += [] if active else [SECAGG_PASSIVE_NOTE]
    report = AuditReport(
        run_dir=rd,
        run=config.run.name,
        delta=delta,
        accountant=main,
        accountants=tuple(accountants),
        randomness=p.randomness,
        user=units[0],
        example=units[1],
        pool_user=pool,
        flows=tuple(flows),
        flow_evidence=evidence,
        flow_source=source,
        secure_aggregation=secure,
        empirical=tuple(bounds),
        check=check,
        warnings=tuple(warnings),
        notes=tuple(notes),
        _details=details,
    )
    if write:
        plot = _plot(rd, report.to_dict())
        report = dataclasses.replace(report, plot=plot)
        _write(rd, report.to_dict(), plot)
    return report


def _with_run_epsilon(
    bounds: list[EmpiricalBound], units: Sequence[UnitEpsilon], main: str, warnings: list[str]
) -> list[EmpiricalBound]:
    """Each bound with the ledger's ε of its unit; warn when a user-level audit was made
    for another run's ε (a file left by an earlier run in the directory)."""
    by_unit: dict[str, float | None] = {u.unit: u.epsilon(main) for u in units}
    out = []
    for b in bounds:
        run_eps = by_unit.get(b.unit)
        if (
            b.audited_run_epsilon is not None
            and run_eps is not None
            and not math.isclose(b.audited_run_epsilon, run_eps, rel_tol=1e-3)
        ):
            warnings.append(
                f"empirical audit {b.attack} was made for a run with user-level ε = "
                f"{b.audited_run_epsilon:.4g}, but this run's ledger gives {run_eps:.4g}: "
                "attack_audit.json may be left from an earlier run in this directory"
            )
        out.append(dataclasses.replace(b, run_epsilon=run_eps))
    return out


def _notes(ev: RunEvidence, check: LedgerCheck, details: dict[str, Any], secure: bool) -> list[str]:
    """The accounting assumptions and what the ledger check found."""
    p = ev.config.privacy
    records = list(ev.records)
    user = [r for r in records if r.unit == "user"]
    example = [r for r in records if r.unit == "example"]
    notes: list[str] = []
    if not records:
        notes.append(
            "no privacy ledger: this run made no differentially private release, so no finite "
            "ε holds (ε = ∞)"
            + ("; its updates were protected by secure aggregation only" if secure else "")
        )
    if not {"metrics.jsonl", "checkpoint.pt"} & set(check.sources):
        notes.append(
            "the ledger could not be cross-checked: the run directory has no metrics.jsonl "
            "or checkpoint.pt"
        )
    elif check.expected:
        notes.append(
            f"ledger checked against {', '.join(check.sources)}: every one of the "
            f"{len(check.rounds)} completed round(s) has the releases its privacy plan makes"
            + (
                f"; the checkpoint's {check.checkpoint_records} records match the ledger"
                if check.checkpoint_records
                else ""
            )
        )
    if check.after_checkpoint:
        notes.append(
            f"{check.after_checkpoint} ledger record(s) were written after the last "
            "checkpoint (a round interrupted before its checkpoint): its release happened "
            "and is counted"
        )
    if ev.side_records:
        notes.append(
            f"pool-user records read from {POOL_SIDE_FILE} (a CoDA run directory written "
            "before they moved into the privacy ledger)"
        )
    rand_secure = p.randomness == "secure"
    if any(r.mechanism.endswith("[central_gaussian]") and r.sample_rate for r in user):
        notes.append(
            "user level: central Gaussian noise with Poisson sampling is accounted with "
            "amplification by sampling under add/remove adjacency, which holds against "
            "observers of the released models: the trusted server keeps the sample secret, "
            "every round releases (noise alone when nobody was sampled)"
            + (
                ", and the samples were drawn from OS entropy"
                if rand_secure
                else "; the samples derive from run.seed (see the warning)"
            )
        )
    if any(r.adjacency == "replace_one" and r.mechanism.startswith("dp_fedavg") for r in user):
        notes.append(
            "user level: fixed-size sampling with central noise is accounted under "
            "replace-one adjacency at sensitivity 2C (with the sample hidden another device "
            "fills a removed device's slot, so the sum moves by up to 2C), without "
            "amplification"
        )
    if any("distributed" in r.mechanism for r in user):
        notes.append(
            "user level: distributed discrete Gaussian noise under secure aggregation is "
            "accounted under zero-out adjacency (the server sees who takes part: the "
            "guarantee protects what a participant sends, not whether it took part), "
            "without amplification, with the actual number of honest surviving noise "
            "shares per round"
        )
    if example:
        notes.append(
            "example level: each device's ε composes the DP-SGD records of the rounds it "
            "trained in (devices never sampled spent nothing), under add/remove adjacency "
            "of one example"
        )
        if rand_secure:
            notes.append(
                "example level: DP-SGD's batch sampling and noise came from a torch "
                "generator seeded with 63 bits of OS entropy per training (unknown to "
                "whoever knows run.seed), not from a CSPRNG, and its Gaussians are not "
                "hardened against floating-point attacks (Opacus' secure_mode needs "
                "torchcsprng)"
            )
    if details["pool_user_level"]["records"]:
        notes.append(
            "pool users: each pool user's ε composes only the records of their own released "
            "samples (replace-one of their user-field values), never another pool user's "
            "and never the device users'; the figure is the largest pool user's"
        )
    if any(r.adjacency is None for r in records):
        notes.append(
            "some records come from a format-1 ledger, which did not record their "
            "adjacency ('unstated')"
        )
    return notes


def _plot(rd: Path, report: dict[str, Any]) -> str | None:
    series = report["series"]
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = {
        "user": "user level (global)",
        "example_max": "example level, max over devices",
        "example_median": "example level, median device",
        "pool_user_max": "pool users, max over pool users",
    }
    styles = {"user": "-o", "example_max": "-s", "example_median": "--", "pool_user_max": "-^"}
    for key, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[key], label=labels[key], ms=3)
    ax.set_xlabel("round")
    ax.set_ylabel(f"ε at δ = {report['delta']:g} ({report['accountant']})")
    ax.set_title(f"privacy spent: {report['run']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = rd / AUDIT_PLOT
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _write(rd: Path, report: dict[str, Any], plot: str | None) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return _finite(x)
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    atomic_write_text(rd / AUDIT_JSON, json.dumps(clean(report), indent=2, sort_keys=True))
    atomic_write_text(rd / AUDIT_MD, render_markdown(report))


class _CallableModule(types.ModuleType):
    """``secrelay.audit`` is this module; calling it runs :func:`audit`, so that
    ``secrelay.audit(run_dir)`` works however the module was imported."""

    def __call__(self, run_dir: str | Path, **kwargs: Any) -> AuditReport:
        return audit(run_dir, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
