"""mkdocs hook: ``<!-- include: PATH -->`` on a line of its own becomes the file at
PATH (relative to the repository root) as a fenced code block, so a page shows the
example script that the tests execute, never a copy that could drift from it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"^<!-- include: (\S+) -->$", re.MULTILINE)


def _include(match: re.Match[str]) -> str:
    path = (ROOT / match.group(1)).resolve()
    if ROOT not in path.parents or not path.is_file():
        raise FileNotFoundError(f"include: {match.group(1)!r} is not a file of the repository")
    lang = {".py": "python", ".toml": "toml", ".sh": "bash"}.get(path.suffix, "")
    return f"```{lang}\n{path.read_text(encoding='utf-8').rstrip()}\n```"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every include marker of the page by the file it names."""
    return _MARKER.sub(_include, markdown)
