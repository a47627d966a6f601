"""``secrelay audit RUN_DIR``: the privacy budget report of a run.

Reads ``RUN_DIR/privacy_ledger.jsonl`` (every DP release of the run) and
``RUN_DIR/config.json``, composes the records with the run's accountant (PRV by
default; RDP is shown for comparison) and writes

* ``RUN_DIR/audit.json`` — machine-readable: δ, the accountants, the global
  user-level ε, the example-level ε per device (min / median / max, and every
  device's value), each mechanism's records and stand-alone ε, and ε over rounds;
* ``RUN_DIR/audit.md`` — the same as a short report;
* ``RUN_DIR/audit_epsilon.png`` — ε over rounds (matplotlib, Agg backend).

ε's are upper bounds at the stated δ, per privacy unit (``docs/privacy.md``):
*example* (one training example of one device; per device) and *user* (a device's
whole contribution; global, i.e. for a user taking part in every round it could).
Every ε is stated with its neighbouring relation (*adjacency*: add/remove,
replace-one or zero-out, taken from the ledger records) and the run's randomness
mode; a run with ``privacy.randomness = "reproducible"`` is marked with the warning
that its guarantee holds only against parties who do not know ``run.seed``. A run
without a ledger made no DP release: its ε is reported as infinite.

Examples
--------
>>> from secrelay.audit import audit          # doctest: +SKIP
>>> report = audit("runs/dp-fedavg")          # doctest: +SKIP
>>> report["user_level"]["epsilon"]["prv"]    # doctest: +SKIP
3.98...
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocols.dp import LedgerRecord, PrivacyLedger
from secrelay.checkpoint import atomic_write_text
from secrelay.config import RunConfig, load_run_config
from secrelay.privacy.session import LEDGER_FILE, EpsilonCache

__all__ = ["REPRODUCIBLE_WARNING", "audit", "render_markdown"]

REPRODUCIBLE_WARNING = (
    "privacy.randomness = 'reproducible': the guarantee holds only against parties who "
    "do not know run.seed (the noise, the device samples and the SecAgg keys were "
    "derived from it; whoever knows the config can regenerate them)"
)
"""The warning every report of a reproducible run carries."""

_ADJACENCY_TEXT = {
    "add_remove": "add/remove one",
    "replace_one": "replace-one",
    "zero_out": "zero-out (participation public)",
}


def _adjacency(records: Sequence[LedgerRecord]) -> str | None:
    """The adjacency of ``records``: the one they share, ``"mixed: a, b"``, or
    ``"unstated"`` for records of a format-1 ledger; ``None`` without records."""
    if not records:
        return None
    kinds = sorted({r.adjacency or "unstated" for r in records})
    return kinds[0] if len(kinds) == 1 else "mixed: " + ", ".join(kinds)


def _randomness_warnings(config: RunConfig) -> list[str]:
    return [REPRODUCIBLE_WARNING] if config.privacy.randomness == "reproducible" else []


AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"
AUDIT_PLOT = "audit_epsilon.png"
_MAX_SERIES_POINTS = 25


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _series_rounds(rounds: Sequence[int]) -> list[int]:
    rs = sorted(set(rounds))
    if len(rs) <= _MAX_SERIES_POINTS:
        return rs
    step = (len(rs) - 1) / (_MAX_SERIES_POINTS - 1)
    return sorted({rs[round(i * step)] for i in range(_MAX_SERIES_POINTS)})


def audit(
    run_dir: str | Path,
    *,
    accountant: str | None = None,
    comparison: str | None = "rdp",
    write: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Audit the privacy ledger of ``run_dir``; returns the report (also written).

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
    DataFormatError
        If the ledger is corrupt (naming the file and line).
    """
    rd = Path(run_dir)
    config = load_run_config(rd)
    p = config.privacy
    delta = float(p.delta)
    main = accountant or p.accountant
    accountants = [main] + ([comparison] if comparison and comparison != main else [])
    ledger_path = rd / LEDGER_FILE
    report: dict[str, Any] = {
        "run_dir": str(rd),
        "run": config.run.name,
        "delta": delta,
        "accountant": main,
        "accountants": accountants,
        "secure_aggregation": p.secure_aggregation,
        "randomness": p.randomness,
        "warnings": _randomness_warnings(config),
        "adjacency": {"user": None, "example": None},
        "notes": [],
    }
    if not ledger_path.exists():
        report.update(
            ledger={"path": str(ledger_path), "records": 0},
            user_level={"epsilon": dict.fromkeys(accountants)},
            example_level={"devices": 0, "epsilon": {}},
            mechanisms=[],
            series={},
        )
        report["notes"].append(
            "no privacy ledger: this run made no differentially private release, so no finite "
            "ε holds (ε = ∞)"
            + (
                "; its updates were protected by secure aggregation only"
                if p.secure_aggregation
                else ""
            )
        )
        if write:
            _write(rd, report, None)
        return report

    ledger = PrivacyLedger.load(ledger_path)
    records = ledger.records
    caches = {a: EpsilonCache(delta=delta, accountant=a) for a in accountants}
    user = [r for r in records if r.unit == "user"]
    example = [r for r in records if r.unit == "example"]
    report["ledger"] = {
        "path": str(ledger_path),
        "records": len(records),
        "rounds": sorted({r.round for r in records}),
    }
    report["adjacency"] = {"user": _adjacency(user), "example": _adjacency(example)}

    # --- user level (global) ---------------------------------------------------
    log(f"user level: {len(user)} records")
    user_eps = {
        a: (caches[a].epsilon([r.event for r in user]) if user else 0.0) for a in accountants
    }
    report["user_level"] = {
        "records": len(user),
        "epsilon": user_eps,
        "adjacency": report["adjacency"]["user"],
        "budget": p.user_epsilon,
        "noise_multiplier": sorted({r.noise_multiplier for r in user if r.noise_multiplier}),
        "clipping_norm": p.clipping_norm,
        "sensitivity": sorted({r.sensitivity for r in user if r.sensitivity}),
        "sample_rate": sorted({r.sample_rate for r in user if r.sample_rate}),
        "participants_per_round": (
            statistics.mean(len(r.devices) for r in user if r.sample_rate is None)
            if any(r.sample_rate is None for r in user)
            else None
        ),
    }

    # Without amplification (fixed-size sampling, secure aggregation) a device's
    # user-level ε composes only the rounds whose sum it was in: report it per device
    # too (with amplification the global ε already holds for every device).
    if user and all(r.sample_rate is None for r in user):
        by_user: dict[str, list[Any]] = {}
        for r in user:
            for d in r.devices:
                by_user.setdefault(d, []).append(r.event)
        per_user = {d: caches[main].epsilon(evs) for d, evs in sorted(by_user.items())}
        report["user_level"]["per_device"] = {
            "devices": len(per_user),
            "min": min(per_user.values()),
            "median": statistics.median(per_user.values()),
            "max": max(per_user.values()),
            "max_device": max(per_user, key=lambda d: per_user[d]),
            "rounds_max": max(len(v) for v in by_user.values()),
        }

    # --- example level (per device) ----------------------------------------------
    by_device: dict[str, list[Any]] = {}
    for r in example:
        for d in r.devices:
            by_device.setdefault(d, []).append(r.event)
    log(f"example level: {len(by_device)} devices")
    per_device = {
        a: {d: caches[a].epsilon(evs) for d, evs in sorted(by_device.items())} for a in accountants
    }
    ex: dict[str, Any] = {
        "devices": len(by_device),
        "adjacency": report["adjacency"]["example"],
        "budget": p.example_epsilon,
        "epsilon": {},
        "per_device": per_device[main],
    }
    for a in accountants:
        vals = list(per_device[a].values())
        if vals:
            worst = max(per_device[a], key=lambda d: per_device[a][d])
            ex["epsilon"][a] = {
                "min": min(vals),
                "median": statistics.median(vals),
                "max": max(vals),
                "max_device": worst,
            }
    if by_device:
        participations = [len({r.round for r in example if r.covers(d)}) for d in by_device]
        ex["rounds_per_device"] = {
            "min": min(participations),
            "median": statistics.median(participations),
            "max": max(participations),
        }
    report["example_level"] = ex

    # --- mechanisms ------------------------------------------------------------------
    mechs = []
    for unit, recs in (("user", user), ("example", example)):
        names = sorted({r.mechanism for r in recs})
        alone: dict[str, dict[str, float]] = {}
        for name in names:
            mine = [r for r in recs if r.mechanism == name]
            if unit == "user":
                alone[name] = {a: caches[a].epsilon([r.event for r in mine]) for a in accountants}
            else:  # the worst device's ε from this mechanism alone
                devs: dict[str, list[Any]] = {}
                for r in mine:
                    for d in r.devices:
                        devs.setdefault(d, []).append(r.event)
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
                    "adjacency": _adjacency(mine),
                    "records": len(mine),
                    "epsilon_alone": alone[name],
                    "share": (alone[name][main] / total) if total > 0 else None,
                }
            )
    report["mechanisms"] = mechs

    # --- ε over rounds --------------------------------------------------------------------
    series: dict[str, list[list[float]]] = {"user": [], "example_max": [], "example_median": []}
    for t in _series_rounds([r.round for r in records]):
        upto = [r for r in user if r.round <= t]
        if upto:
            series["user"].append([t, caches[main].epsilon([r.event for r in upto])])
        devs_t: dict[str, list[Any]] = {}
        for r in example:
            if r.round <= t:
                for d in r.devices:
                    devs_t.setdefault(d, []).append(r.event)
        if devs_t:
            vals = [caches[main].epsilon(evs) for evs in devs_t.values()]
            series["example_max"].append([t, max(vals)])
            series["example_median"].append([t, statistics.median(vals)])
    report["series"] = series

    notes = report["notes"]
    secure = p.randomness == "secure"
    if any(r.mechanism.endswith("[central_gaussian]") and r.sample_rate for r in user):
        notes.append(
            "user level: central Gaussian noise with Poisson sampling is accounted with "
            "amplification by sampling under add/remove adjacency, which holds against "
            "observers of the released models: the trusted server keeps the sample secret, "
            "every round releases (noise alone when nobody was sampled)"
            + (
                ", and the samples were drawn from OS entropy"
                if secure
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
        if secure:
            notes.append(
                "example level: DP-SGD's batch sampling and noise came from a torch "
                "generator seeded with 63 bits of OS entropy per training (unknown to "
                "whoever knows run.seed), not from a CSPRNG, and its Gaussians are not "
                "hardened against floating-point attacks (Opacus' secure_mode needs "
                "torchcsprng)"
            )
    if any(r.adjacency is None for r in records):
        notes.append(
            "some records come from a format-1 ledger, which did not record their "
            "adjacency ('unstated')"
        )
    plot = _plot(rd, report) if write else None
    report["plot"] = plot
    if write:
        _write(rd, report, plot)
    return report


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
    }
    styles = {"user": "-o", "example_max": "-s", "example_median": "--"}
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


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "∞" if math.isinf(x) else f"{x:.3f}"
    return str(x)


def _adjacency_label(adjacency: str | None) -> str:
    if adjacency is None:
        return "—"
    return _ADJACENCY_TEXT.get(adjacency, adjacency)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (what ``audit.md`` holds)."""
    accs = report["accountants"]
    lines = [
        f"# Privacy audit: {report['run']}",
        "",
        f"- run directory: `{report['run_dir']}`",
        f"- δ = {report['delta']:g}; accountant: **{report['accountant']}**"
        + (f" (compared with {', '.join(accs[1:])})" if len(accs) > 1 else ""),
        f"- ledger: {report['ledger']['records']} records",
        f"- secure aggregation: {report['secure_aggregation']}",
        f"- randomness: **{report.get('randomness', '—')}**",
    ]
    for w in report.get("warnings", []):
        lines += ["", f"> **Warning:** {w}"]
    ul = report["user_level"]
    adj = _adjacency_label(ul.get("adjacency"))
    lines += [
        "",
        "## User level (a device's whole contribution; global)",
        "",
        "| accountant | ε | adjacency | budget |",
        "|---|---|---|---|",
    ]
    for a in accs:
        eps = _fmt(ul["epsilon"].get(a)) if ul.get("records") else "∞ (no DP release)"
        lines.append(f"| {a} | {eps} | {adj} | {_fmt(ul.get('budget'))} |")
    pd = ul.get("per_device")
    if pd:
        lines += [
            "",
            f"Per device ({pd['devices']} devices whose updates entered a sum; no amplification, "
            f"so a device's ε composes only its own rounds, at most {pd['rounds_max']}): "
            f"min {_fmt(pd['min'])}, median {_fmt(pd['median'])}, max {_fmt(pd['max'])} "
            f"(`{pd['max_device']}`), {report['accountant']}.",
        ]
    ex = report["example_level"]
    lines += [
        "",
        f"## Example level (one training example; per device, {ex['devices']} devices)",
        "",
        f"Adjacency: {_adjacency_label(ex.get('adjacency'))}.",
        "",
        "| accountant | min | median | max (device) | budget |",
        "|---|---|---|---|---|",
    ]
    if not ex["devices"]:
        lines.append("| — | no example-level DP release | | | |")
    for a in accs:
        e = ex["epsilon"].get(a)
        if e:
            lines.append(
                f"| {a} | {_fmt(e['min'])} | {_fmt(e['median'])} | {_fmt(e['max'])} "
                f"(`{e['max_device']}`) | {_fmt(ex.get('budget'))} |"
            )
    if "rounds_per_device" in ex:
        r = ex["rounds_per_device"]
        lines.append("")
        lines.append(
            f"Rounds trained per device: min {r['min']}, median {r['median']}, max {r['max']}."
        )
    lines += [
        "",
        "## Mechanisms",
        "",
        "| unit | mechanism | adjacency | records | ε alone | share |",
        "|---|---|---|---|---|---|",
    ]
    for m in report["mechanisms"]:
        alone = ", ".join(f"{a} {_fmt(v)}" for a, v in m["epsilon_alone"].items())
        share = "—" if m["share"] is None else f"{100 * m['share']:.0f} %"
        lines.append(
            f"| {m['unit']} | `{m['mechanism']}` | {_adjacency_label(m.get('adjacency'))} "
            f"| {m['records']} | {alone} | {share} |"
        )
    lines += [
        "",
        "ε alone: the mechanism's records composed by themselves (example level: the worst "
        "device). Share: its stand-alone ε over the sum of the unit's stand-alone ε's — "
        "indicative only, since ε's do not add.",
    ]
    if report.get("plot"):
        lines += ["", f"![ε over rounds]({report['plot']})"]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


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
