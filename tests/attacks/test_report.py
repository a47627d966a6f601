"""The trade-off grid: its config, one small end-to-end grid, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attacks.cli import app
from attacks.config import PRESETS, AttackConfig, Setting, load_attack_config
from attacks.plots import pareto_frontier
from attacks.report import attack
from secrelay import ConfigError, RunConfig

GRID = """
[run]
name = "grid"
seed = 0
[data]
name = "synthetic"
options = {{ n_users = 30, samples_per_user = 20, n_items = 150 }}
[model]
name = "dnn"
embedding_dim = 4
options = {{ hidden_units = [8] }}
[cloud]
epochs = 1
[local]
epochs = 2
batch_size = 16
[federated]
rounds = 2
clients_per_round = 8
sample_rate = 0.3
[privacy]
secagg_sign_advertisements = true
randomness = "reproducible"
[attack]
attacks = {attacks}
settings = {settings}
attributes = ["gender", "region", "nope"]
devices = 4
shadows = 2
membership_rows = 100
audit_trials = 2000
canaries = 60
"""


def _write(tmp_path: Path, attacks: str, settings: str) -> Path:
    p = tmp_path / "grid.toml"
    p.write_text(GRID.format(attacks=attacks, settings=settings))
    return p


def test_presets_and_inline_settings_parse():
    cfg = AttackConfig.from_dict(
        {"settings": ["none", {"name": "mine", "privacy": {"secure_aggregation": True}}]}
    )
    assert [s.name for s in cfg.settings] == ["none", "mine"]
    assert set(PRESETS) >= {"none", "secagg", "user_dp_e8", "example_dp_e8", "all"}


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        AttackConfig.from_dict(
            {"settings": ["nope", 3], "attacks": ["items", "zzz"], "shadows": 1, "bogus": 1}
        )
    msg = str(e.value)
    for part in (
        "'nope' is not a preset",
        "settings[1]",
        "unknown attacks ['zzz']",
        "attack.shadows",
        "attack.bogus",
    ):
        assert part in msg


def test_a_setting_states_its_protection_in_full():
    base = RunConfig.from_dict({"privacy": {"secure_aggregation": True}})
    s = Setting("dp", PRESETS["example_dp_e8"])
    p = s.apply(base).privacy
    assert p.dp_sgd and not p.secure_aggregation  # the base's SecAgg is not inherited
    assert Setting("none", {}).apply(base).privacy.secure_aggregation  # no privacy key: base kept


def test_a_bad_setting_is_refused_before_training(tmp_path):
    p = _write(tmp_path, '["items"]', '[{ name = "bad", privacy = { user_level_dp = true } }]')
    with pytest.raises(ConfigError, match="setting 'bad'"):
        load_attack_config(p)


def test_pareto_frontier():
    assert pareto_frontier([0.9, 0.2, 0.5], [0.7, 0.6, 0.6]) == [1, 0]


def test_small_grid_end_to_end(tmp_path):
    cfg = _write(tmp_path, '["items", "difference", "attributes"]', '["none", "secagg"]')
    report = attack(cfg, tmp_path / "out", progress=False, log=lambda s: None)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    pairs = {(e["setting"], e["attack"]) for e in data["entries"]}
    for setting in ("none", "secagg"):
        for a in ("items", "difference", "attribute:gender", "attribute:region", "attribute:nope"):
            assert (setting, a) in pairs
    for e in data["entries"]:
        assert {"metric", "value", "ci_low", "ci_high", "gauc"} <= set(e)
        assert e["gauc"] is not None
    items = report.entry("none", "items")
    assert items.value.value == 1.0 and items.details["recall"]["value"] == 1.0
    assert report.entry("secagg", "items").value.value < 0.9
    assert not report.entry("none", "attribute:nope").applicable
    assert (
        (tmp_path / "out" / "report.md")
        .read_text()
        .startswith("# Utility–privacy trade-off report")
    )
    assert (tmp_path / "out" / "tradeoff_items.png").is_file()
    # --reuse: no retraining, the same entries
    again = attack(cfg, tmp_path / "out", progress=False, log=lambda s: None, reuse=True)
    assert again.entry("none", "items").value == items.value


@pytest.mark.slow
def test_full_grid_every_attack(tmp_path):
    settings = '["none", "secagg", "user_dp_e8", "example_dp_e8", "all"]'
    cfg = _write(
        tmp_path,
        '["items", "difference", "membership", "attributes", "audit", "cluster"]',
        settings,
    )
    report = attack(cfg, tmp_path / "out", progress=False, log=lambda s: None)
    assert report.entry("none", "membership").value.value > 0.5
    for name in ("user_dp_e8", "all"):
        e = report.entry(name, "audit:user")
        assert e.details["epsilon_lower"] <= e.details["epsilon_upper"]
    e = report.entry("example_dp_e8", "audit:example")
    assert not e.applicable or e.details["epsilon_lower"] <= e.details["epsilon_upper"]
    assert list((tmp_path / "out").glob("membership_roc_*.png"))


def test_cli_help_and_bad_config(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["--help"]).exit_code == 0
    res = runner.invoke(app, [str(tmp_path / "missing.toml")])
    assert res.exit_code == 2


def test_new_attack_keys_parse_and_are_checked():
    cfg = AttackConfig.from_dict(
        {"attacks": ["inversion", "lcft", "coda"], "inversion_batch_sizes": [1, 2]}
    )
    assert cfg.inversion_batch_sizes == (1, 2) and cfg.attacks == ("inversion", "lcft", "coda")
    with pytest.raises(ConfigError) as e:
        AttackConfig.from_dict({"inversion_batch_sizes": [0], "inversion_devices": 1})
    assert "inversion_batch_sizes" in str(e.value) and "inversion_devices" in str(e.value)


def test_method_specific_attacks_say_where_they_do_not_apply(tmp_path):
    cfg = _write(tmp_path, '["lcft", "coda"]', '["none"]')
    report = attack(cfg, tmp_path / "out", progress=False, log=lambda s: None)
    for name in ("lcft:ctr", "coda:reidentify", "coda:attribute:gender"):
        e = report.entry("none", name)
        assert not e.applicable and "not" in e.note


def test_grid_inversion_entries(tmp_path):
    """The grid's inversion entries: plain uploads give batch-1 labels away, DP-SGD and
    SecAgg+ do not (planted FedSGD rounds of each setting)."""
    cfg = _write(tmp_path, '["inversion"]', '["none", "secagg", "example_dp_e8"]')
    text = cfg.read_text().replace("canaries = 60", "canaries = 60\ninversion_devices = 12")
    text = text.replace(
        "inversion_devices = 12", "inversion_devices = 12\ninversion_batch_sizes = [1]"
    )
    cfg.write_text(text)
    report = attack(cfg, tmp_path / "out", progress=False, log=lambda s: None)
    plain = report.entry("none", "inversion:b1")
    assert plain.value.value >= 0.95 and plain.details["feature_recovery"]["value"] >= 0.9
    for name in ("secagg", "example_dp_e8"):
        e = report.entry(name, "inversion:b1")
        assert e.details["feature_recovery"]["value"] < 0.5
        assert e.gauc is not None
