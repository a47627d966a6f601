"""Config rejection messages name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.errors import ConfigError
from secrelay.config import RunConfig, load_config

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_defaults_round_trip_through_dict():
    cfg = load_config()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"federated": {"roundz": 3}}, r"unknown key\(s\) 'roundz' in section \[federated\]"),
        ({"federated": {"rounds": "50"}}, r"federated.rounds must be int; got '50'"),
        ({"federated": {"rounds": -1}}, r"federated.rounds must be >= 0; got -1"),
        ({"split": {"alpha": 1.5}}, r"split.alpha must be in \(0, 1\); got 1.5"),
        ({"split": {"mode": "sideways"}}, r"split.mode must be one of 'random', 'temporal'"),
        ({"local": {"lr": 0}}, r"local.lr must be > 0"),
        ({"run": {"workers": -2}}, r"run.workers must be >= 0"),
        ({"cloud": {"batch_size": True}}, r"cloud.batch_size must be int; got True"),
    ],
)
def test_bad_values_are_rejected_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(**overrides)


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[federatd]\nrounds = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'federatd' in the config"):
        load_config(p)


def test_invalid_toml_and_missing_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[run\nname=1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_replace_changes_only_the_given_keys():
    cfg = load_config().replace(federated={"rounds": 3})
    assert cfg.federated.rounds == 3 and cfg.federated.clients_per_round == 25


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    load_config(path)
