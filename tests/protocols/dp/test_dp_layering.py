"""protocols.dp stays in the bottom layer: no import of secrelay or attacks."""

from __future__ import annotations

import ast
from pathlib import Path

import protocols.dp

PACKAGE = Path(protocols.dp.__file__).parent


def test_no_upward_imports():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in {"secrelay", "attacks"}
            ]
    assert len(list(PACKAGE.rglob("*.py"))) >= 10
    assert offenders == []
