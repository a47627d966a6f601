"""Issue 16 item 9, the two privacy-config defects: a budget below its own target is
refused before anything runs, and a DP run whose noise destroys the model says so."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from secrelay.cli import app
from secrelay.experiment import utility_warning

runner = CliRunner()

_BASE = """
[run]
name = "tiny-dp"
progress = false
[data]
name = "synthetic"
options = { n_users = 40, samples_per_user = 20 }
[model]
name = "lr"
embedding_dim = 4
[cloud]
epochs = 2
[local]
epochs = 1
lr = 2.0
[federated]
rounds = 2
clients_per_round = 20
[strategy]
params = { weighting = "uniform" }
[privacy]
randomness = "reproducible"
user_level_dp = true
clipping_norm = 50.0
"""


def test_budget_below_its_target_is_refused_before_any_run_directory(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(_BASE + "target_epsilon = 8.0\nuser_epsilon = 4.0\n")
    out = tmp_path / "r"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "target_epsilon = 8 exceeds its own budget privacy.user_epsilon = 4" in text
    assert not out.exists()  # refused before the data or the cloud model


def test_a_run_destroyed_by_its_noise_warns_in_the_log_and_summary(tmp_path):
    cfg = tmp_path / "c.toml"
    # A huge clip with a fixed noise multiplier: noise of std 50·z on an LR's weights.
    cfg.write_text(_BASE + "noise_multiplier = 5.0\n")
    out = tmp_path / "r"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["logloss"] > 1.5 * summary["cloud"]["logloss"]
    assert any("DP noise destroyed the model" in w for w in summary["warnings"])
    assert "DP noise destroyed the model" in " ".join(res.output.split())


def test_utility_warning_thresholds():
    cloud = {"logloss": 0.6, "auc": 0.70}
    assert utility_warning(cloud, {"logloss": 0.62, "auc": 0.69}) is None
    assert "logloss 8.7" in (utility_warning(cloud, {"logloss": 8.7, "auc": 0.69}) or "")
    assert "AUC 0.600" in (utility_warning(cloud, {"logloss": 0.65, "auc": 0.60}) or "")
    assert utility_warning({}, {"logloss": 9.0}) is None  # nothing to compare against
