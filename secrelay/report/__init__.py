"""``secrelay report RUN_DIR``: a self-contained report of one run, HTML and Markdown.

The report holds the run's configuration, its per-round metrics with plots, the
privacy ledger and ε over rounds (with the budget line), the privacy contract
filled in with this run's settings — every flow that crossed the device/cloud
boundary, marked protected (and how) or plaintext, as the audit found it — and the
attack results where an attack was run on it.

* ``RUN_DIR/report.html`` — one file, figures embedded as base64 PNG, no external
  assets (open it anywhere, attach it to an e-mail);
* ``RUN_DIR/report.md`` — the same in Markdown, figures as files next to it
  (``report_metrics.png``, ``report_epsilon.png``).

``secrelay run``, ``secrelay resume`` and ``secrelay demo`` write it at the end.

Examples
--------
>>> from secrelay.report import write_report   # doctest: +SKIP
>>> paths = write_report("runs/dp-relayrec")   # doctest: +SKIP
>>> paths.html.name                            # doctest: +SKIP
'report.html'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from secrelay.report.collect import Flow, RunReport, collect_report

__all__ = [
    "REPORT_HTML",
    "REPORT_MD",
    "Flow",
    "ReportFiles",
    "RunReport",
    "collect_report",
    "write_report",
]

REPORT_HTML = "report.html"
REPORT_MD = "report.md"


@dataclass(frozen=True)
class ReportFiles:
    """Where :func:`write_report` wrote the report."""

    html: Path
    markdown: Path
    figures: tuple[Path, ...]


def write_report(run_dir: str | Path, *, report: RunReport | None = None) -> ReportFiles:
    """Write ``report.html`` and ``report.md`` (and its figures) into ``run_dir``.

    ``report`` is what :func:`collect_report` returned for ``run_dir``, if the caller
    already has it (the audit is then not run twice).

    Raises
    ------
    ConfigError
        If ``run_dir`` is not a run directory.
    DataFormatError
        If its metrics or ledger are corrupt (naming the file).
    """
    from secrelay.checkpoint import atomic_write_text
    from secrelay.report.figures import render_figures
    from secrelay.report.html import render_html
    from secrelay.report.markdown import render_markdown

    rd = Path(run_dir)
    report = report if report is not None else collect_report(rd)
    figures = render_figures(report)
    written = []
    for fig in figures:
        path = rd / fig.filename
        path.write_bytes(fig.png)
        written.append(path)
    html_path, md_path = rd / REPORT_HTML, rd / REPORT_MD
    atomic_write_text(html_path, render_html(report, figures))
    atomic_write_text(md_path, render_markdown(report, figures))
    return ReportFiles(html_path, md_path, tuple(written))
