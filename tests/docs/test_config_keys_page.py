"""The "Configuration keys" docs page is generated from the typed config and lists
every key; the committed copy (docs/config.md) is current."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path
from types import ModuleType

import pytest

from secrelay.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "docs" / "hooks" / "config_keys.py"


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_config_keys_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys() -> list[str]:
    hints = typing.get_type_hints(RunConfig)
    keys = []
    for section in dataclasses.fields(RunConfig):
        cls = hints[section.name]
        keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(cls) if f.init]
    return keys


def test_every_config_key_is_on_the_page() -> None:
    page = _hook().render()
    missing = [k for k in _keys() if f"`{k}`" not in page]
    assert not missing
    assert len(_keys()) > 50  # the whole config, not a stub


def test_every_method_option_is_on_the_page() -> None:
    hook = _hook()
    page = hook.render()
    for title, cls, prefix in hook.sections():
        if title.startswith("[method.options]"):
            for f in dataclasses.fields(cls):
                assert f"`{prefix}{f.name}`" in page, (title, f.name)


def test_a_new_key_would_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _hook()

    @dataclasses.dataclass(frozen=True)
    class Extra:
        """``[extra]``: a section that does not exist."""

        brand_new_key: int = 3

    monkeypatch.setattr(hook, "sections", lambda: [("[extra]", Extra, "extra.")])
    assert "| `extra.brand_new_key` | int | `3` |" in hook.render()


def test_committed_page_is_current() -> None:
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == _hook().render(), (
        "docs/config.md is stale: regenerate it with `python docs/hooks/config_keys.py`"
    )
