"""The run report as Markdown; its figures are PNG files next to it."""

from __future__ import annotations

from secrelay.report.collect import RunReport
from secrelay.report.figures import Figure
from secrelay.report.sections import Code, FigureRef, Para, Table, build_sections

__all__ = ["render_markdown"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return [*lines, ""]


def render_markdown(report: RunReport, figures: list[Figure]) -> str:
    """The report as Markdown, linking each figure by its file name."""
    by_name = {f.filename: f for f in figures}
    lines = [f"# secrelay run report: {report.name}", "", f"Run directory: `{report.run_dir}`", ""]
    for s in build_sections(report, set(by_name)):
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                lines += _table(b)
            elif isinstance(b, Para):
                lines += [f"> **Warning:** {b.text}" if b.kind == "warning" else b.text, ""]
            elif isinstance(b, FigureRef):
                lines += [f"![{by_name[b.filename].caption}]({b.filename})", ""]
            elif isinstance(b, Code):
                lines += ["```json", b.text, "```", ""]
    return "\n".join(lines)
