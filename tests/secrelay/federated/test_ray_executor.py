"""The Ray executor (``secrelay[ray]``): the same run as the sequential executor on a
local Ray instance, and a clear error naming the extra when Ray is absent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocols.errors import ConfigError
from secrelay.config import PrivacyConfig, load_config
from secrelay.experiment import run
from secrelay.federated import executor as executor_module
from secrelay.federated.executor import RayExecutor, make_executor, ray_available

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _config(kind: str):
    privacy = (
        {"randomness": "reproducible"}
        if "randomness" in {f.name for f in dataclasses.fields(PrivacyConfig)}
        else {}
    )
    return load_config(
        run={"name": "ray-test", "seed": 3, "progress": False, "executor": kind, "workers": 2},
        data={"name": "synthetic", "options": {"n_users": 24, "samples_per_user": 20}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": 2, "clients_per_round": 6, "dropout_rate": 0.2},
        strategy={"name": "fedavg"},
        privacy=privacy,
    )


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (the secrelay[ray] extra)")
def test_ray_run_equals_the_sequential_run(tmp_path: Path) -> None:
    seq = run(_config("sequential"), tmp_path / "seq", progress=False, log=lambda _: None)
    ray_run = run(_config("ray"), tmp_path / "ray", progress=False, log=lambda _: None)
    strip = lambda recs: [{k: v for k, v in r.items() if "seconds" not in k} for r in recs]  # noqa: E731
    assert strip(ray_run.records) == strip(seq.records)
    assert ray_run.final["traffic"] == seq.final["traffic"]


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "ray_available", lambda: False)
    with pytest.raises(ConfigError, match=r"secrelay\[ray\]"):
        make_executor("ray", 2)


def test_unknown_executor_lists_the_choices() -> None:
    with pytest.raises(Exception, match="'sequential', 'process' or 'ray'"):
        make_executor("dask")
    assert RayExecutor.__doc__
