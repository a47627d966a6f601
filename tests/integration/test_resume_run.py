"""Checkpoint/resume: a killed run resumed from its checkpoint ends exactly like an
uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocols.errors import ConfigError
from secrelay.config import load_config
from secrelay.experiment import resume, run

REPO = Path(__file__).resolve().parents[2]


def _config(rounds: int = 4, strategy: str = "fedadagrad"):
    return load_config(
        run={"name": "resume-test", "seed": 7, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 40, "samples_per_user": 30}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": rounds, "clients_per_round": 5, "dropout_rate": 0.2},
        strategy={"name": strategy, "params": {"server_lr": 0.05}},
        # Resume-equals-uninterrupted is a property of reproducible randomness: under
        # the default ("secure") every round's device sample comes from OS entropy.
        privacy={"randomness": "reproducible"},
    )


def _quiet(_: str) -> None:
    pass


def test_stop_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = run(_config(), tmp_path / "full", progress=False, log=_quiet)
    part = run(_config(), tmp_path / "part", progress=False, log=_quiet, stop_after=2)
    assert part.records[-1]["round"] == 2 and not (tmp_path / "part" / "summary.json").exists()
    resumed = resume(tmp_path / "part", progress=False, log=_quiet)
    assert resumed.records == full.records
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["round"] for s in lines] == [0, 1, 2, 3, 4]
    # summary.json covers the whole run, not only the resumed part
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["traffic"] == full.final["traffic"]
    assert summary["seconds"] > 0


def test_resuming_a_finished_run_keeps_its_summary(tmp_path: Path) -> None:
    full = run(_config(rounds=2), tmp_path / "r", progress=False, log=_quiet)
    again = resume(tmp_path / "r", progress=False, log=_quiet)
    assert again.final["traffic"] == full.final["traffic"]
    assert sum(full.final["traffic"]["count"].values()) > 0
    assert again.final["seconds"] >= full.final["seconds"]


def test_stop_after_says_how_to_resume(tmp_path: Path) -> None:
    said: list[str] = []
    run(_config(rounds=3), tmp_path / "r", progress=False, log=said.append, stop_after=1)
    assert any("secrelay resume" in s for s in said)


def test_killed_process_resumes_to_the_same_result(tmp_path: Path) -> None:
    cfg = _config(rounds=6)
    expected = run(cfg, tmp_path / "ref", progress=False, log=_quiet)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.to_json())
    script = (
        "import json,sys; from secrelay.config import RunConfig; from secrelay.experiment import run;"
        "import secrelay.experiment as e, time;"
        "orig = e._save\n"
        "def slow(*a, **k):\n"
        "    orig(*a, **k); time.sleep(0.4)\n"
        "e._save = slow\n"
        f"run(RunConfig.from_dict(json.load(open({str(cfg_path)!r}))), {str(tmp_path / 'killed')!r},"
        " progress=False, log=lambda s: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    ckpt_rounds = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt_rounds.exists() and len(ckpt_rounds.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists(), "run finished before the kill"
    resumed = resume(tmp_path / "killed", progress=False, log=_quiet)
    assert resumed.records == expected.records


def test_run_refuses_existing_run_dir(tmp_path: Path) -> None:
    run(_config(rounds=1), tmp_path / "r", progress=False, log=_quiet)
    with pytest.raises(ConfigError, match="already holds a run; resume it"):
        run(_config(rounds=1), tmp_path / "r", progress=False, log=_quiet)


def test_resume_of_a_non_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        resume(tmp_path, progress=False, log=_quiet)
