"""The command line: help for every command, exit codes, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from secrelay.cli import app

runner = CliRunner()


def _commands():
    import typer.main

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_expected_commands_exist():
    assert {"train", "run", "resume", "demo"} <= set(_commands())


def test_bad_config_key_exits_2_with_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[federated]\nroundz = 3\n")
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "roundz" in res.output


def test_missing_data_exits_with_clear_message(tmp_path):
    res = runner.invoke(app, ["train", "--data", "movielens100k", "--path", str(tmp_path)])
    assert res.exit_code == 3, res.output
    assert "not found" in res.output


def test_run_and_resume_tiny_experiment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        """
[run]
name = "tiny"
progress = false
[data]
name = "synthetic"
options = { n_users = 30, samples_per_user = 20 }
[model]
name = "lr"
embedding_dim = 4
[cloud]
epochs = 1
[local]
epochs = 1
[federated]
rounds = 2
clients_per_round = 5
"""
    )
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--stop-after", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["resume", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["complete"]


def test_train_prints_metrics(tmp_path):
    js = tmp_path / "m.json"
    res = runner.invoke(
        app, ["train", "--model", "lr", "--data", "synthetic", "--epochs", "1", "--json", str(js)]
    )
    assert res.exit_code == 0, res.output
    assert "gAUC" in res.output
    assert json.loads(js.read_text())["test"]["auc"] > 0.5
