"""``benchmarks/sweep.py`` continues a cell stopped midway from its checkpoint
(instead of rerunning it from scratch) and survives one broken worker pool."""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from secrelay.config import RunConfig, load_config
from secrelay.experiment import run

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep.py"


def _sweep_module() -> Any:
    spec = importlib.util.spec_from_file_location("sweep", SWEEP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(rounds: int = 3) -> RunConfig:
    return load_config(
        run={"name": "sweep-test", "seed": 1, "progress": False, "executor": "sequential"},
        data={"name": "synthetic", "options": {"n_users": 6, "samples_per_user": 12}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": rounds, "clients_per_round": 3},
        strategy={"name": "fedavg"},
        privacy={"randomness": "reproducible"},
    )


def _final(rd: Path) -> dict[str, Any]:
    return json.loads((rd / "summary.json").read_text())["final"]


def test_a_cell_stopped_midway_continues_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    sweep = _sweep_module()
    whole = tmp_path / "whole"
    run(_config(), whole, progress=False, log=lambda _: None)
    cell = tmp_path / "cell"
    run(_config(), cell, progress=False, log=lambda _: None, stop_after=2)
    started: list[str] = []
    monkeypatch.setattr(sweep, "run", lambda *a, **k: started.append("run"))
    sweep._run_cell(_config(), cell)
    assert started == []  # continued, not restarted
    assert _final(cell) == _final(whole)


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    sweep = _sweep_module()
    cell = tmp_path / "cell"
    run(_config(), cell, progress=False, log=lambda _: None, stop_after=1)
    with pytest.raises(SystemExit, match="checkpoint of another config"):
        sweep._run_cell(_config(rounds=4), cell)


def test_a_broken_pool_resumes_once_then_gives_up(tmp_path: Path, monkeypatch) -> None:
    sweep = _sweep_module()
    whole = tmp_path / "whole"
    run(_config(), whole, progress=False, log=lambda _: None)
    cell = tmp_path / "cell"
    real_run = sweep.run

    def dies_after_round_2(config: RunConfig, rd: Path, **kw: Any) -> Any:
        real_run(config, rd, stop_after=2, **kw)
        raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(sweep, "run", dies_after_round_2)
    sweep._run_cell(_config(), cell)
    assert _final(cell) == _final(whole)

    def always_dies(*a: Any, **k: Any) -> Any:
        raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(sweep, "resume", always_dies)
    monkeypatch.setattr(sweep, "run", always_dies)
    with pytest.raises(BrokenProcessPool):
        sweep._run_cell(_config(), tmp_path / "doomed")
