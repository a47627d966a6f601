"""The Flower app (``secrelay[flower]``): a Flower simulation of the secure relay
round gives the in-process run's models for the same seed (reproducible mode, exact
secure sum), with secrelay's SecAgg+ carried over Flower messages and, under
user-level DP, the devices' noise shares added on the devices."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols.errors import ConfigError
from secrelay.checkpoint import load_checkpoint
from secrelay.config import RunConfig, load_config
from secrelay.experiment import run
from secrelay.flower import flower_available, require_flower

needs_flwr = pytest.mark.skipif(
    not flower_available(), reason="flwr is not installed (the secrelay[flower] extra)"
)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N_DEVICES = 5


def _config(trainable: str = "all", **privacy: Any) -> RunConfig:
    return load_config(
        run={"name": "flower-test", "seed": 5, "progress": False, "executor": "sequential"},
        data={"name": "synthetic", "options": {"n_users": N_DEVICES, "samples_per_user": 24}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16, "trainable": trainable},
        federated={"rounds": 2, "clients_per_round": 4, "eval_every": 100},
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy={"randomness": "reproducible", "secure_aggregation": True, **privacy},
    )


def _in_process(config: RunConfig, tmp_path: Path) -> np.ndarray:
    res = run(config, tmp_path / "in-process", progress=False, log=lambda _: None)
    assert res.final["complete"]
    state = load_checkpoint(tmp_path / "in-process" / "checkpoint.pt")
    return np.asarray(state["method"]["loop"]["strategy"]["models"]["global"])


def _flower(config: RunConfig) -> Any:
    from flwr.simulation import run_simulation

    from secrelay.flower.app import make_client_app, make_server_app

    out: dict[str, Any] = {}
    run_simulation(
        server_app=make_server_app(config, on_result=lambda r: out.setdefault("result", r)),
        client_app=make_client_app(config),
        num_supernodes=N_DEVICES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 1, "include_dashboard": False},
        },
    )
    logging.getLogger("flwr").handlers.clear()
    assert "result" in out, "the ServerApp did not finish (see the simulation log)"
    return out["result"]


@needs_flwr
def test_flower_simulation_equals_the_in_process_run(tmp_path: Path) -> None:
    config = _config()
    expected = _in_process(config, tmp_path)
    result = _flower(config)
    assert len(result.rounds) == 2
    assert all(r["survivors"] == 4 and not r["aborted"] for r in result.rounds)
    got = result.models["global"]
    # Exact: same samples, seeds, training and SecAgg+ keys/masks/rounding per device.
    np.testing.assert_array_equal(got, expected)
    # And the rounds moved the model away from the cloud model they started from.
    from secrelay.flower.job import FlowerJob
    from secrelay.methods.cloud import make_train_config, train_cloud_model

    job = FlowerJob(config)
    cloud = train_cloud_model(
        job.model_spec, job.data.cloud, make_train_config(config.cloud), seed=config.run.seed
    )
    assert not np.array_equal(got, cloud)


@needs_flwr
@pytest.mark.slow
def test_flower_simulation_with_user_level_dp_equals_the_in_process_run(tmp_path: Path) -> None:
    config = _config(user_level_dp=True, clipping_norm=0.5, noise_multiplier=0.7, delta=1e-5)
    expected = _in_process(config, tmp_path)
    result = _flower(config)
    np.testing.assert_array_equal(result.models["global"], expected)
    assert result.privacy_records, "the DP sum's releases reach the server's ledger"


@needs_flwr
@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["dense", "seen"])
def test_flower_simulation_trains_what_local_trainable_says(tmp_path: Path, trainable: str) -> None:
    """``[local] trainable`` over Flower: the devices train (and the user-level DP
    release noises) exactly the parameters the in-process run does."""
    config = _config(
        trainable, user_level_dp=True, clipping_norm=0.5, noise_multiplier=0.7, delta=1e-5
    )
    expected = _in_process(config, tmp_path)
    result = _flower(config)
    np.testing.assert_array_equal(result.models["global"], expected)


@pytest.mark.parametrize("trainable", ["dense", "seen"])
def test_flower_job_builds_the_in_process_trainer_and_release(trainable: str) -> None:
    from secrelay.flower.job import FlowerJob
    from secrelay.methods.cloud import seen_rows
    from secrelay.training import trainable_mask

    config = _config(
        trainable, user_level_dp=True, clipping_norm=0.5, noise_multiplier=0.7, delta=1e-5
    )
    job = FlowerJob(config)
    train = job.train_config
    assert train.trainable == trainable
    rows = seen_rows(job.data.cloud) if trainable == "seen" else None
    assert train.trainable_rows == rows
    mask = trainable_mask(job.model_spec.build(), trainable, rows)
    assert 0 < mask.sum() < mask.size
    assert job.dp_sum is not None
    support = dict(job.dp_sum.spec.support)
    assert support, "the device-side release must know what devices can change"
    for name, shape in job.dp_sum.spec.shapes:
        size = int(np.prod(shape))
        if size % mask.size == 0 and size >= mask.size:
            np.testing.assert_array_equal(support[name], np.tile(mask, size // mask.size))


def test_flower_job_refuses_what_it_cannot_run() -> None:
    from secrelay.flower.job import flower_problems

    bad = load_config(
        run={"name": "x", "progress": False},
        data={"name": "synthetic", "options": {"n_users": 4, "samples_per_user": 10}},
        federated={"dropout_rate": 0.2},
        local={"trainable": "seen"},
        privacy={"secure_aggregation": False},
    )
    problems = flower_problems(bad)
    assert any("secure_aggregation" in p for p in problems)
    assert any("dropout_rate" in p for p in problems)
    assert not any("local.trainable" in p for p in problems)  # wired since session 5


def test_missing_flwr_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"secrelay\[flower\]"):
        require_flower()


def test_the_example_app_config_runs_as_the_flower_app() -> None:
    from secrelay.flower.job import FlowerJob, flower_problems

    app = Path(__file__).resolve().parents[3] / "examples" / "flower_app"
    config = load_config(app / "secrelay.toml")
    assert flower_problems(config) == []
    job = FlowerJob(config)
    assert job.dp_sum is not None and not job.secure_settings.deterministic
    assert "secrelay_app:server_app" in (app / "pyproject.toml").read_text()
