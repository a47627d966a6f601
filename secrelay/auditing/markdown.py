"""``audit.md``: the audit report as Markdown."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from secrelay.auditing.report import comparison_bound_note

if TYPE_CHECKING:
    from secrelay.auditing.report import AuditReport

__all__ = ["ADJACENCY_TEXT", "adjacency_label", "render_markdown"]

ADJACENCY_TEXT = {
    "add_remove": "add/remove one",
    "replace_one": "replace-one",
    "zero_out": "zero-out (participation public)",
}


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "∞" if math.isinf(x) else f"{x:.3f}"
    return str(x)


def adjacency_label(adjacency: str | None) -> str:
    """The adjacency as words (``"replace-one"``); ``"—"`` for none."""
    if adjacency is None:
        return "—"
    return ADJACENCY_TEXT.get(adjacency, adjacency)


def _budget_cell(r: Mapping[str, Any], unit: str, accountant: str, budget: Any) -> str:
    """The claim the figure is held to (budget, else target; ``budgets`` in the JSON),
    marked when the figure exceeds it."""
    entry = next(
        (b for b in r["budgets"] if b["unit"] == unit and b["accountant"] == accountant), None
    )
    if entry is None or entry["budget"] is None:
        return _fmt(budget)
    text = _fmt(entry["budget"])
    if entry["budget_key"] and not entry["budget_key"].endswith(f"{unit}_epsilon"):
        text += f" ({entry['budget_key'].removeprefix('privacy.')})"
    return f"**{text} — OVER BUDGET**" if entry["over_budget"] else text


def _empirical_cell(r: Mapping[str, Any], unit: str) -> str:
    bounds = [b for b in r["empirical"]["bounds"] if b["unit"] == unit]
    if not bounds:
        return "not audited"
    return "; ".join(
        f"≥ {_fmt(b['epsilon_lower'])} ({b['design']}, {b['regime']}; audited release "
        f"≤ {_fmt(b['epsilon_upper'])}, ceiling {_fmt(b['ceiling'])})"
        for b in bounds
    )


def render_markdown(report: AuditReport | Mapping[str, Any]) -> str:
    """The report as Markdown (what ``audit.md`` holds)."""
    r: Mapping[str, Any] = report if isinstance(report, Mapping) else report.to_dict()
    accs = r["accountants"]
    lines = [
        f"# Privacy audit: {r['run']}",
        "",
        f"- run directory: `{r['run_dir']}`",
        f"- δ = {r['delta']:g}; accountant: **{r['accountant']}**"
        + (f" (compared with {', '.join(accs[1:])})" if len(accs) > 1 else ""),
        f"- ledger: {r['ledger']['records']} records",
        "- secure aggregation: "
        + ("used (masked uploads observed)" if r["secure_aggregation"] else "not observed"),
        f"- randomness: **{r.get('randomness', '—')}**",
    ]
    figures = {(x["unit"], x["accountant"]): x for x in r["budgets"]}
    for o in r["over_budget"]:
        b = figures[o["unit"], o["accountant"]]
        own = figures.get((o["unit"], r["accountant"]))
        note = comparison_bound_note(
            o["accountant"],
            r["accountant"],
            None if own is None else own["epsilon"],
            own is not None and own["over_budget"],
        )
        lines += [
            "",
            f"> **Over budget:** {o['unit']}-level ε = {_fmt(b['epsilon'])} by the "
            f"{o['accountant']} accountant exceeds {b['budget_key']} = {_fmt(b['budget'])}"
            + note
            + ".",
        ]
    for w in r.get("warnings", []):
        lines += ["", f"> **Warning:** {w}"]
    ul = r["user_level"]
    adj = adjacency_label(ul.get("adjacency"))
    lines += [
        "",
        "## User level (a device's whole contribution; global)",
        "",
        "| accountant | ε | adjacency | budget | empirical lower bound |",
        "|---|---|---|---|---|",
    ]
    for a in accs:
        eps = _fmt(ul["epsilon"].get(a)) if ul.get("records") else "∞ (no DP release)"
        lines.append(
            f"| {a} | {eps} | {adj} | {_budget_cell(r, 'user', a, ul.get('budget'))} "
            f"| {_empirical_cell(r, 'user')} |"
        )
    pd = ul.get("per_device")
    if pd:
        lines += [
            "",
            f"Per device ({pd['devices']} devices whose updates entered a sum; no amplification, "
            f"so a device's ε composes only its own rounds, at most {pd['rounds_max']}): "
            f"min {_fmt(pd['min'])}, median {_fmt(pd['median'])}, max {_fmt(pd['max'])} "
            f"(`{pd['max_device']}`), {r['accountant']}.",
        ]
    ex = r["example_level"]
    lines += [
        "",
        f"## Example level (one training example; per device, {ex['devices']} devices)",
        "",
        f"Adjacency: {adjacency_label(ex.get('adjacency'))}.",
        "",
        "| accountant | min | median | max (device) | budget | empirical lower bound |",
        "|---|---|---|---|---|---|",
    ]
    if not ex["devices"]:
        lines.append("| — | no example-level DP release | | | | |")
    for a in accs:
        e = ex["epsilon"].get(a)
        if e:
            lines.append(
                f"| {a} | {_fmt(e['min'])} | {_fmt(e['median'])} | {_fmt(e['max'])} "
                f"(`{e['max_device']}`) | {_budget_cell(r, 'example', a, ex.get('budget'))} "
                f"| {_empirical_cell(r, 'example')} |"
            )
    if "rounds_per_device" in ex:
        rp = ex["rounds_per_device"]
        lines.append("")
        lines.append(
            f"Rounds trained per device: min {rp['min']}, median {rp['median']}, max {rp['max']}."
        )
    pu = r["pool_user_level"]
    if pu["records"]:
        lines += [
            "",
            f"## Pool users (users of the cloud's pool whose samples were released; "
            f"per pool user, {pu['pool_users']} pool users)",
            "",
            f"Adjacency: {adjacency_label(pu.get('adjacency'))}. Each pool user's ε composes "
            "only their own records; different pool users are never added together.",
            "",
            "| accountant | min | median | max (pool user) |",
            "|---|---|---|---|",
        ]
        for a in accs:
            e = pu["epsilon"].get(a)
            if e:
                lines.append(
                    f"| {a} | {_fmt(e['min'])} | {_fmt(e['median'])} | {_fmt(e['max'])} "
                    f"(`{e['max_device']}`) |"
                )
    lines += [
        "",
        "## What the server saw (every flow of the run)",
        "",
        f"Evidence: {r['flow_evidence']}.",
        "",
        "| flow | direction | content | messages | protection |",
        "|---|---|---|---|---|",
    ]
    for f in r["flows"]:
        prot = f["protection"]
        if f["status"] == "plaintext":
            rest = prot.removeprefix("plaintext").lstrip(":— ")
            prot = "**plaintext**" + (f" — {rest}" if rest else "")
        lines.append(
            f"| {f['flow']} | {f['direction']} | {f['content']} | {_fmt(f['messages'])} | {prot} |"
        )
    if not r["flows"]:
        lines.append("| — | | no flow evidence | | |")
    lines += [
        "",
        "## Mechanisms",
        "",
        "| unit | mechanism | adjacency | records | ε alone | share |",
        "|---|---|---|---|---|---|",
    ]
    for m in r["mechanisms"]:
        alone = ", ".join(f"{a} {_fmt(v)}" for a, v in m["epsilon_alone"].items())
        share = "—" if m["share"] is None else f"{100 * m['share']:.0f} %"
        lines.append(
            f"| {m['unit']} | `{m['mechanism']}` | {adjacency_label(m.get('adjacency'))} "
            f"| {m['records']} | {alone} | {share} |"
        )
    lines += [
        "",
        "ε alone: the mechanism's records composed by themselves (example level and pool "
        "users: the worst subject). Share: its stand-alone ε over the sum of the unit's "
        "stand-alone ε's — indicative only, since ε's do not add.",
        "",
        "Empirical lower bounds: "
        + (
            "from attack_audit.json (the attack grid); a lower bound on the true ε, to read "
            "against the accountant's upper bound of the audited release."
            if r["empirical"]["bounds"]
            else "not audited (no attack_audit.json; run the attack grid, `python -m attacks`)."
        ),
    ]
    if r.get("plot"):
        lines += ["", f"![ε over rounds]({r['plot']})"]
    if r["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
