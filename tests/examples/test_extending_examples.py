"""Every extension-point example in ``examples/extending/`` runs, end to end.

Each example is executed in-process as ``__main__`` (as ``python example.py`` would),
with the registries it extends restored afterwards so the suite stays independent of
order.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

import secrelay.experiment  # noqa: F401  (the built-in methods are registered before any snapshot)
from protocols.dp.accountants import ACCOUNTANTS
from secrelay.data import DATASET_LOADERS
from secrelay.federated.strategies import STRATEGY_REGISTRY
from secrelay.methods import METHODS
from secrelay.models import MODEL_REGISTRY

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "extending"
REGISTRIES = (ACCOUNTANTS, DATASET_LOADERS, STRATEGY_REGISTRY, METHODS, MODEL_REGISTRY)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def clean_registries(monkeypatch: pytest.MonkeyPatch):
    before = [set(r.names()) for r in REGISTRIES]
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for reg, names in zip(REGISTRIES, before):
        for added in set(reg.names()) - names:
            reg.unregister(added)
    sys.modules.pop("_tiny", None)


def _run(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    return capsys.readouterr().out


def test_every_extension_point_has_an_example():
    names = {p.stem for p in EXAMPLES.glob("custom_*.py")}
    assert names == {
        "custom_accountant",
        "custom_dataset",
        "custom_method",
        "custom_model",
        "custom_strategy",
    }


@pytest.mark.usefixtures("clean_registries")
def test_custom_strategy(capsys):
    out = _run("custom_strategy", capsys)
    assert "FedAvgM under user-level DP: gAUC 0." in out
    assert "fedavgm" in STRATEGY_REGISTRY


@pytest.mark.usefixtures("clean_registries")
def test_custom_model(capsys):
    assert "FM with DP-SGD on devices: gAUC 0." in _run("custom_model", capsys)


@pytest.mark.usefixtures("clean_registries")
def test_custom_method(capsys):
    out = _run("custom_method", capsys)
    assert "cold start under SecAgg+ and distributed DP: gAUC 0." in out
    assert "cold_start" not in METHODS  # a class runs without registration


@pytest.mark.usefixtures("clean_registries")
def test_custom_dataset(capsys):
    out = _run("custom_dataset", capsys)
    by_name, in_memory = (float(s.split()[-1]) for s in out.strip().split(";"))
    assert by_name == in_memory  # the same data, by name or as an object


@pytest.mark.usefixtures("clean_registries")
def test_custom_accountant(capsys):
    out = _run("custom_accountant", capsys)
    coarse, fine = (float(t) for t in out.replace("(", " ").split() if t[:1].isdigit())
    assert coarse >= fine  # fewer orders never give a smaller RDP ε
