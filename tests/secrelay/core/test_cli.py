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
    assert "not found" in " ".join(res.output.split())


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


def test_version_and_short_help():
    from secrelay import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(app, ["-h"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_typo_key_suggests_the_valid_one(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[federated]\nround = 3\n")
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    flat = " ".join(res.output.split())
    assert "in section [federated]" in flat
    assert "did you mean 'rounds'?" in flat


def test_unknown_names_and_paths_are_refused_before_a_run_directory_exists(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[model]\nname = "deepfn"\n[data]\nname = "movielens100k"\npath = "nowhere/ml"\n'
    )
    rd = tmp_path / "r"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(rd)])
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "'deepfn' is not a registered model" in flat
    assert str((tmp_path / "x").resolve().anchor) in flat and "does not exist" in flat
    assert not rd.exists()


def test_stop_after_prints_the_resume_command(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[run]\nprogress = false\n[data]\nname = "synthetic"\n'
        "options = { n_users = 20, samples_per_user = 20 }\n"
        '[model]\nname = "lr"\n[cloud]\nepochs = 1\n[local]\nepochs = 1\n'
        "[federated]\nrounds = 3\nclients_per_round = 4\n"
    )
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r"), "--stop-after", "1"])
    assert res.exit_code == 0, res.output
    assert "secrelay resume" in " ".join(res.output.split())


def test_demo_refuses_to_overwrite_earlier_runs(tmp_path):
    (tmp_path / "demo" / "old").mkdir(parents=True)
    (tmp_path / "demo" / "old" / "checkpoint.pt").write_bytes(b"x")
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--rounds", "1"])
    assert res.exit_code == 2, res.output
    assert "--overwrite" in " ".join(res.output.split())
    assert (tmp_path / "demo" / "old" / "checkpoint.pt").read_bytes() == b"x"
