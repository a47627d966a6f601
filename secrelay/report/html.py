"""The run report as one self-contained HTML file: inline CSS, figures embedded as
base64 PNG, no script and no external asset (it renders offline, from an e-mail
attachment, behind a strict content security policy)."""

from __future__ import annotations

import base64
from html import escape

from secrelay.report.collect import RunReport
from secrelay.report.figures import Figure
from secrelay.report.sections import Code, FigureRef, Para, Section, Table, build_sections

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #d0d7de;
     padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
td.plaintext { color: #a40e26; font-weight: 600; }
td.protected { color: #116329; font-weight: 600; }
td.public { color: #57606a; }
p.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: .4rem .6rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #57606a; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
nav a { margin-right: 1rem; }
"""


def _table(t: Table) -> str:
    ident = f' id="{escape(t.ident)}"' if t.ident else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = []
        for h, cell in zip(t.headers, row):
            cls = (
                f' class="{cell}"'
                if h == "status" and cell in ("plaintext", "protected", "public")
                else ""
            )
            cells.append(f"<td{cls}>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(s: Section, figures: dict[str, Figure]) -> str:
    parts = [f'<section id="{escape(s.ident)}"><h2>{escape(s.title)}</h2>']
    for b in s.blocks:
        if isinstance(b, Table):
            parts.append(_table(b))
        elif isinstance(b, Para):
            cls = ' class="warning"' if b.kind == "warning" else ""
            parts.append(f"<p{cls}>{escape(b.text)}</p>")
        elif isinstance(b, FigureRef):
            fig = figures[b.filename]
            data = base64.b64encode(fig.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{escape(fig.caption)}">'
                f"<figcaption>{escape(fig.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Code):
            parts.append(f"<pre>{escape(b.text)}</pre>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(report: RunReport, figures: list[Figure]) -> str:
    """The report as a standalone HTML document."""
    by_name = {f.filename: f for f in figures}
    sections = build_sections(report, set(by_name))
    nav = " ".join(f'<a href="#{escape(s.ident)}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(_section(s, by_name) for s in sections)
    title = f"secrelay run report: {report.name}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n<p>Run directory: <code>{escape(str(report.run_dir))}</code></p>\n"
        f"<nav>{nav}</nav>\n{body}\n</body></html>\n"
    )
