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


# ---- the method contract, the attack surface, and no import cycles ----------------------

PACKAGES = ("protocols", "secrelay", "attacks")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(f): f for p in PACKAGES for f in sorted((ROOT / p).rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        lines.add(n.lineno)
    return lines


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module ``name`` imports at run time, at any depth of the file
    (function-level imports count: a lazy import that only hides a cycle is a cycle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        out.update(t for t in targets if t in modules and t != name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # A package __init__ that re-exports its submodules is not a cycle with them:
        # importing ``a.b`` runs ``a/__init__`` first by Python's rules, not by choice.
        graph[name] = {t for t in _edges(name, path, modules) if not name.startswith(t + ".")}
    return graph


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_checker_detects_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_methods_never_import_the_runner():
    """The plug-in contract (secrelay.methods) and every method (secrelay.relay) are
    usable without the runner: none of them imports secrelay.experiment."""
    graph = _graph()
    bad = [
        m
        for m, deps in graph.items()
        if m.startswith(("secrelay.methods", "secrelay.relay", "secrelay.privacy"))
        and "secrelay.experiment" in deps
    ]
    assert not bad, f"these import the runner: {bad}"


def test_attacks_use_only_the_public_api():
    """``attacks`` may import ``secrelay`` only through the names its packages export
    (``__all__`` of a package ``__init__``), never a private module or name."""
    bad = []
    for f in sorted((ROOT / "attacks").rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("secrelay"):
                mod = node.module or ""
                init = ROOT / Path(*mod.split(".")) / "__init__.py"
                if not init.is_file():
                    bad.append(f"{f.relative_to(ROOT)}: {mod} is a module, not a public package")
                    continue
                public = _exported(init)
                bad += [
                    f"{f.relative_to(ROOT)}: {mod}.{a.name} is not in its __all__"
                    for a in node.names
                    if a.name not in public
                ]
            elif isinstance(node, ast.Import):
                bad += [
                    f"{f.relative_to(ROOT)}: import {a.name} (use `from secrelay... import`)"
                    for a in node.names
                    if a.name.startswith("secrelay.")
                ]
    assert not bad, "attacks reach past the public API:\n" + "\n".join(bad)


def _exported(init: Path) -> set[str]:
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def test_public_api_checker_flags_private_imports(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text("__all__ = ['run']\n")
    assert _exported(init) == {"run"}
