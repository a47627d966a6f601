"""The import direction protocols <- secrelay <- attacks is enforced."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BANNED = {
    "protocols": {"secrelay", "attacks", "benchmarks", "tests"},
    "secrelay": {"attacks", "benchmarks", "tests"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("package", sorted(BANNED))
def test_no_upward_imports(package):
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        for mod in _imports(f):
            if mod.split(".")[0] in BANNED[package]:
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_checker_detects_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import secrelay.data\nfrom attacks import y\n")
    assert _imports(f) == ["secrelay.data", "attacks"]
