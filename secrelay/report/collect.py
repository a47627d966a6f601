"""Gather what a run report shows from a run directory (no rendering here).

Everything comes from the run's own files: ``config.json``, ``metrics.jsonl``,
``summary.json``, the privacy ledger and :func:`secrelay.audit.audit` (ε, and what
protected each flow), ``attack_audit.json`` and an attack grid's ``report.json``
that lists this run, and ``comparison.json`` (the demo's other pipelines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.errors import DataFormatError
from secrelay.config import RunConfig, load_run_config

__all__ = ["COMPARISON_FILE", "Flow", "RunReport", "collect_report", "flows_from_run"]

COMPARISON_FILE = "comparison.json"
"""Optional rows of other pipelines to compare with (written by ``secrelay demo``)."""


@dataclass(frozen=True)
class Flow:
    """One flow that crossed the device/cloud boundary, as the report states it.

    ``protection`` says how it was protected (``"plaintext"`` when it was not);
    ``evidence`` what in the run shows it (the transcript's messages, the ledger).
    """

    name: str
    content: str
    protection: str
    plaintext: bool
    evidence: str = ""
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:  # "protected", "plaintext" or "public" (the server's own data)
            object.__setattr__(self, "status", "plaintext" if self.plaintext else "protected")


@dataclass(frozen=True)
class RunReport:
    """The contents of one run's report."""

    run_dir: Path
    config: RunConfig
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    audit: dict[str, Any]
    flows: list[Flow]
    ledger_rows: list[dict[str, Any]]
    epsilon_rows: list[dict[str, Any]]
    attacks: list[dict[str, Any]] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run's name (``run.name``)."""
        return self.config.run.name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{str(path)!r} is not valid JSON: {e}") from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{str(path)!r} line {i} is not valid JSON: {e}") from None
        if not isinstance(rec, dict) or "round" not in rec:
            raise DataFormatError(f"{str(path)!r} line {i} is not a metrics record")
        records.append(rec)
    return records


def _audit_dict(run_dir: Path) -> dict[str, Any]:
    """The audit as a dict: a typed report's ``to_dict()``, or the dict itself."""
    from secrelay.audit import audit

    result: Any = audit(run_dir, write=False)
    to_dict = getattr(result, "to_dict", None)
    return dict(to_dict() if callable(to_dict) else result)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " + ".join(_text(v) for v in value if v)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    return str(value)


def _flows_from_audit(audit: Mapping[str, Any]) -> list[Flow] | None:
    """The audit's per-flow findings, when the audit states them."""
    raw = audit.get("flows")
    if not raw:
        return None
    items: Sequence[Any]
    if isinstance(raw, Mapping):
        items = [
            {"flow": k, **(v if isinstance(v, Mapping) else {"protected_by": v})}
            for k, v in raw.items()
        ]
    else:
        items = list(raw)
    flows = []
    for f in items:
        if not isinstance(f, Mapping):
            continue
        protection = _text(f.get("protected_by", f.get("protection")))
        status = str(f.get("status") or "")
        plaintext = bool(
            f.get(
                "plaintext",
                status == "plaintext"
                or (not status and protection.strip().lower() in ("", "plaintext", "none")),
            )
        )
        evidence = _text(f.get("evidence", ""))
        if not evidence and f.get("messages") is not None:
            direction = {"up": "device → server", "down": "server → device"}.get(
                str(f.get("direction")), ""
            )
            evidence = f"{f['messages']} messages" + (f", {direction}" if direction else "")
        flows.append(
            Flow(
                name=_text(f.get("flow", f.get("name", "?"))),
                content=_text(f.get("content", f.get("what", ""))),
                protection="plaintext" if plaintext and not protection else protection,
                plaintext=plaintext,
                evidence=evidence,
                status="plaintext" if plaintext else (status or "protected"),
            )
        )
    return flows


def flows_from_run(config: RunConfig, summary: Mapping[str, Any] | None) -> list[Flow]:
    """The flows of a run read from its traffic counts (``summary.json``) and config.

    Used when the audit states no per-flow findings. Every upload kind the transcript
    counted is listed; a flow is *protected* only where the messages themselves show
    it (SecAgg+ stage messages, CKKS ciphertexts) or a DP mechanism applies to it.
    """
    counts: Mapping[str, int] = (summary or {}).get("traffic", {}).get("count", {})
    p, method = config.privacy, config.method.name
    flows = []

    def n(kind: str) -> int:
        return int(counts.get(kind, 0))

    dp_user = p.user_level_dp
    if n("up:masked_upload"):
        how = "SecAgg+ (the server decodes only the sum of the survivors)"
        if dp_user:
            how += " + user-level DP (distributed discrete Gaussian noise in the sum)"
        flows.append(
            Flow(
                "model updates",
                "each device's update Δw (clipped)" if dp_user else "each device's update Δw",
                how,
                False,
                f"{n('up:masked_upload')} SecAgg+ stage messages, no plaintext update",
            )
        )
    if n("up:contribution_upload"):
        how = "plaintext"
        if dp_user:
            how = "plaintext to the server; user-level DP (central noise) on the released model"
        flows.append(
            Flow(
                "model updates",
                "each device's update Δw",
                how,
                True,
                f"{n('up:contribution_upload')} plaintext uploads",
            )
        )
    if n("up:query"):
        names = {
            "relayrec": ("selector query", "the preference vector p_u", p.he_selector),
            "coda": ("matching query", "the user vector v_u", p.he_matching),
            "lcft": ("correction query", "the local CTR w_i", False),
        }
        name, content, he = names.get(method, ("queries", "device queries", False))
        if he:
            flows.append(
                Flow(
                    name,
                    content,
                    "CKKS (the server computes on ciphertexts)",
                    False,
                    f"{n('up:query')} query messages carrying ciphertexts and a public context",
                )
            )
        elif method == "lcft" and p.query_ldp != "off":
            flows.append(
                Flow(
                    name,
                    content,
                    f"ε-LDP ({p.query_ldp}, ε = {p.query_ldp_epsilon:g})",
                    False,
                    f"{n('up:query')} noised queries",
                )
            )
        else:
            flows.append(
                Flow(name, content, "plaintext", True, f"{n('up:query')} plaintext queries")
            )
    if n("up:attribute_report"):
        flows.append(
            Flow(
                "client attributes",
                "z_k (e.g. the local loss)",
                "plaintext",
                True,
                f"{n('up:attribute_report')} attribute reports",
            )
        )
    if n("up:gradient_report"):
        flows.append(
            Flow(
                "query gradients",
                "g_k",
                "plaintext",
                True,
                f"{n('up:gradient_report')} gradient reports",
            )
        )
    if p.dp_sgd:
        flows.append(
            Flow(
                "local training",
                "the device's examples (stay on the device)",
                "DP-SGD (example-level), bounds what the update reveals of one example",
                False,
                "example-level ledger records",
            )
        )
    if not flows:
        flows.append(
            Flow(
                "uploads",
                "nothing was uploaded" if summary else "no traffic summary",
                "—",
                False,
                "summary.json traffic" if summary else "",
            )
        )
    return flows


def _ledger_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The ledger summarised per (round, unit, mechanism)."""
    from protocols.dp import PrivacyLedger
    from secrelay.privacy.session import LEDGER_FILE

    path = run_dir / LEDGER_FILE
    if not path.is_file():
        return []
    groups: dict[tuple[int, str, str], dict[str, Any]] = {}
    for r in PrivacyLedger.load(path).records:
        g = groups.setdefault(
            (r.round, r.unit, r.mechanism),
            {
                "round": r.round,
                "unit": r.unit,
                "mechanism": r.mechanism,
                "records": 0,
                "devices": set(),
                "noise_multiplier": set(),
                "sample_rate": set(),
                "adjacency": set(),
            },
        )
        g["records"] += 1
        g["devices"].update(r.devices)
        for key in ("noise_multiplier", "sample_rate"):
            if getattr(r, key) is not None:
                g[key].add(float(getattr(r, key)))
        g["adjacency"].add(r.adjacency or "unstated")
    rows = []
    for gkey in sorted(groups):
        g = groups[gkey]
        rows.append(
            {
                **g,
                "devices": len(g["devices"]),
                "noise_multiplier": sorted(g["noise_multiplier"]),
                "sample_rate": sorted(g["sample_rate"]),
                "adjacency": ", ".join(sorted(g["adjacency"])),
            }
        )
    return rows


def _epsilon_rows(audit: Mapping[str, Any]) -> list[dict[str, Any]]:
    series = audit.get("series") or {}
    by_round: dict[int, dict[str, Any]] = {}
    for key in ("user", "example_max", "example_median"):
        for t, eps in series.get(key, []) or []:
            by_round.setdefault(int(t), {"round": int(t)})[key] = eps
    return [by_round[t] for t in sorted(by_round)]


def _attacks(run_dir: Path, config: RunConfig) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    audit_file = run_dir / "attack_audit.json"
    if audit_file.is_file():
        for a in _read_json(audit_file) or []:
            if isinstance(a, Mapping):
                eps = a.get("epsilon_lower")
                rows.append(
                    {
                        "attack": a.get("attack", "audit"),
                        "metric": "ε lower bound",
                        "value": eps,
                        "ci": None,
                        "note": a.get("design", ""),
                        "source": audit_file.name,
                    }
                )
    # An attack grid (`secrelay-attack`) keeps its runs in OUT/runs/<setting>.
    grid = run_dir.parent.parent / "report.json"
    if run_dir.parent.name == "runs" and grid.is_file():
        data = _read_json(grid)
        setting = (
            next(
                (
                    s.get("name")
                    for s in data.get("settings", [])
                    if Path(str(s.get("run_dir", ""))).name == run_dir.name
                ),
                None,
            )
            if isinstance(data, Mapping)
            else None
        )
        for e in data.get("entries", []) if setting else []:
            if e.get("setting") == setting:
                ci = None
                if e.get("ci_low") is not None and e.get("ci_high") is not None:
                    ci = (e["ci_low"], e["ci_high"])
                rows.append(
                    {
                        "attack": e.get("attack"),
                        "metric": e.get("metric"),
                        "value": e.get("value") if e.get("applicable", True) else None,
                        "ci": ci,
                        "note": e.get("note", ""),
                        "source": "attack grid report.json",
                    }
                )
    return rows


def collect_report(run_dir: str | Path) -> RunReport:
    """Read everything the report of ``run_dir`` shows.

    Raises
    ------
    ConfigError
        If ``run_dir`` is not a run directory.
    DataFormatError
        If a file of the run is corrupt (naming it).
    """
    rd = Path(run_dir)
    config = load_run_config(rd)
    records = _read_metrics(rd / "metrics.jsonl")
    summary_path = rd / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else None
    audit = _audit_dict(rd)
    flows = _flows_from_audit(audit) or flows_from_run(config, summary)
    comparison_path = rd / COMPARISON_FILE
    comparison = _read_json(comparison_path) if comparison_path.is_file() else []
    return RunReport(
        run_dir=rd,
        config=config,
        records=records,
        summary=summary,
        audit=audit,
        flows=flows,
        ledger_rows=_ledger_rows(rd),
        epsilon_rows=_epsilon_rows(audit),
        attacks=_attacks(rd, config),
        comparison=list(comparison),
    )
