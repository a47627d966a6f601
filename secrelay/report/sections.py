"""The report's contents as neutral blocks (sections of tables, paragraphs and
figures) that :mod:`~secrelay.report.html` and :mod:`~secrelay.report.markdown`
render; the two formats therefore always say the same."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from secrelay.report.collect import RunReport
from secrelay.report.figures import EPSILON_PNG, METRICS_PNG

__all__ = ["Block", "FigureRef", "Para", "Section", "Table", "build_sections"]


@dataclass(frozen=True)
class Table:
    """A table; ``ident`` becomes the HTML element id (tests look tables up by it)."""

    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    ident: str = ""


@dataclass(frozen=True)
class Para:
    """A paragraph of plain text; ``kind`` ``"warning"`` is shown as a warning."""

    text: str
    kind: str = "text"


@dataclass(frozen=True)
class FigureRef:
    """A figure of :func:`secrelay.report.figures.render_figures`, by file name."""

    filename: str


@dataclass(frozen=True)
class Code:
    """Preformatted text (the configuration)."""

    text: str


Block = Table | Para | FigureRef | Code


@dataclass(frozen=True)
class Section:
    """A titled section; ``ident`` is its anchor."""

    title: str
    ident: str
    blocks: list[Block] = field(default_factory=list)


def fmt(x: Any, digits: int = 4) -> str:
    """A number as the report shows it (``—`` for none, ``∞`` for infinity)."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return "∞" if math.isinf(x) else f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in x) or "—"
    return str(x)


def _overview(r: RunReport) -> Section:
    c, s = r.config, r.summary or {}
    rows = [
        ("run", c.run.name),
        ("method", c.method.name),
        ("strategy", c.strategy.name),
        ("data", c.data.name + (f" ({c.data.path})" if c.data.path else "")),
        ("model", c.model.name),
        (
            "rounds completed",
            fmt(s.get("rounds_completed", r.records[-1]["round"] if r.records else None)),
        ),
        ("complete", fmt(s.get("complete"))),
        ("wall time (s)", fmt(s.get("seconds"), 1)),
    ]
    blocks: list[Block] = [Table(("", ""), [tuple(map(str, row)) for row in rows], "overview")]
    if r.comparison:
        blocks.append(
            Para("Compared with the other pipelines of the same demo (same data, same seed):")
        )
        blocks.append(
            Table(
                ("pipeline", "gAUC", "AUC", "logloss", "protection"),
                [
                    (
                        str(row.get("pipeline", "")),
                        fmt(row.get("gauc")),
                        fmt(row.get("auc")),
                        fmt(row.get("logloss")),
                        str(row.get("protection", "")),
                    )
                    for row in r.comparison
                ],
                "comparison",
            )
        )
    return Section("Overview", "overview", blocks)


def _metrics(r: RunReport, figures: set[str]) -> Section:
    keys = [
        k for k in ("gauc", "auc", "logloss", "epsilon/user") if any(k in rec for rec in r.records)
    ]
    blocks: list[Block] = []
    if not r.records:
        return Section(
            "Metrics per round", "metrics", [Para("No metrics recorded (metrics.jsonl is absent).")]
        )
    if METRICS_PNG in figures:
        blocks.append(FigureRef(METRICS_PNG))
    blocks.append(
        Table(
            ("round", *keys),
            [
                (str(rec["round"]), *(fmt(rec.get(k)) for k in keys))
                for rec in r.records
                if any(rec.get(k) is not None for k in keys)
            ],
            "metrics-table",
        )
    )
    blocks.append(
        Para("Round 0 is the cloud model before any device round; gAUC is the headline metric.")
    )
    return Section("Metrics per round", "metrics", blocks)


def _privacy(r: RunReport, figures: set[str]) -> Section:
    a, p = r.audit, r.config.privacy
    blocks: list[Block] = []
    for w in a.get("warnings", []) or []:
        blocks.append(Para(str(w), "warning"))
    ul, ex = a.get("user_level") or {}, a.get("example_level") or {}
    adjacency = a.get("adjacency") or {}
    acc = a.get("accountant", p.accountant)
    eps_user = (ul.get("epsilon") or {}).get(acc) if ul.get("records") else math.inf
    ex_eps = (ex.get("epsilon") or {}).get(acc) or {}
    rows = [
        (
            "user (a device's whole contribution; global)",
            fmt(eps_user, 3),
            str(ul.get("adjacency") or adjacency.get("user") or "—"),
            fmt(p.user_epsilon, 3),
        ),
        (
            f"example (one training example; worst of {ex.get('devices', 0)} devices)",
            fmt(ex_eps.get("max") if ex_eps else math.inf, 3),
            str(ex.get("adjacency") or adjacency.get("example") or "—"),
            fmt(p.example_epsilon, 3),
        ),
    ]
    blocks.append(
        Para(
            f"ε spent at δ = {p.delta:g} ({acc} accountant); ∞ means no DP release covers that unit. "
            f"Randomness: {a.get('randomness', p.randomness)}."
        )
    )
    blocks.append(Table(("unit", "ε spent", "adjacency", "budget"), rows, "epsilon-summary"))
    if EPSILON_PNG in figures:
        blocks.append(FigureRef(EPSILON_PNG))
    if r.epsilon_rows:
        blocks.append(
            Table(
                ("round", "user ε", "example ε (worst device)", "example ε (median device)"),
                [
                    (
                        str(e["round"]),
                        fmt(e.get("user"), 3),
                        fmt(e.get("example_max"), 3),
                        fmt(e.get("example_median"), 3),
                    )
                    for e in r.epsilon_rows
                ],
                "epsilon-table",
            )
        )
    else:
        blocks.append(
            Table(
                ("round", "user ε", "example ε (worst device)", "example ε (median device)"),
                [("—", "∞ (no DP release)", "∞", "∞")],
                "epsilon-table",
            )
        )
    if r.ledger_rows:
        blocks.append(Para("The privacy ledger, one row per round, unit and mechanism:"))
        blocks.append(
            Table(
                (
                    "round",
                    "unit",
                    "mechanism",
                    "records",
                    "devices",
                    "noise multiplier",
                    "sample rate",
                    "adjacency",
                ),
                [
                    (
                        str(g["round"]),
                        g["unit"],
                        g["mechanism"],
                        str(g["records"]),
                        str(g["devices"]),
                        fmt(g["noise_multiplier"], 3),
                        fmt(g["sample_rate"], 4),
                        g["adjacency"],
                    )
                    for g in r.ledger_rows
                ],
                "ledger-table",
            )
        )
    for note in a.get("notes", []) or []:
        blocks.append(Para(f"Note: {note}"))
    return Section("Privacy: ledger and ε", "privacy", blocks)


def _contract(r: RunReport) -> Section:
    rows = [(f.name, f.content, f.status, f.protection, f.evidence) for f in r.flows]
    blocks: list[Block] = [
        Para(
            "What the server saw, per flow, in this run: protected (and how) or plaintext. "
            "Pre-regulation cloud data is the cloud's to use in the clear and is not listed."
        ),
        Table(("flow", "content", "status", "protection", "evidence"), rows, "flows-table"),
    ]
    return Section("Privacy contract of this run", "contract", blocks)


def _attacks(r: RunReport) -> Section | None:
    if not r.attacks:
        return None
    rows = [
        (
            str(a.get("attack")),
            str(a.get("metric")),
            fmt(a.get("value"), 3),
            f"[{fmt(a['ci'][0], 3)}, {fmt(a['ci'][1], 3)}]" if a.get("ci") else "—",
            str(a.get("note") or ""),
            str(a.get("source") or ""),
        )
        for a in r.attacks
    ]
    return Section(
        "Attack results",
        "attacks",
        [
            Table(
                ("attack", "metric", "value", "95 % interval", "note", "source"),
                rows,
                "attacks-table",
            )
        ],
    )


def build_sections(report: RunReport, figure_names: set[str]) -> list[Section]:
    """The report's sections, in order."""
    config_text = json.dumps(report.config.to_dict(), indent=2, sort_keys=True)
    sections = [
        _overview(report),
        _metrics(report, figure_names),
        _privacy(report, figure_names),
        _contract(report),
    ]
    attacks = _attacks(report)
    if attacks is not None:
        sections.append(attacks)
    sections.append(Section("Configuration", "configuration", [Code(config_text)]))
    return sections
