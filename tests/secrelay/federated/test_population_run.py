"""``[data] name = "population"``: ``secrelay run`` on a lazy population gives the
same records with every executor, the server reads only the evaluation sample's
rows, the cloud is separate users from the same model, and methods that need every
device's data in the server are refused before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocols.errors import ConfigError
from secrelay.config import RunConfig, load_config
from secrelay.data import load_dataset
from secrelay.data.population import SyntheticPopulation
from secrelay.experiment import resume, run
from secrelay.federated.client import ModelSpec, PlainTrainer
from secrelay.federated.executor import ProcessPoolExecutor
from secrelay.federated.lazy import LazyDeviceData, PopulationSource
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import FedAvg
from secrelay.methods.data import prepare_data
from secrelay.training import TrainConfig

N_DEVICES = 30


def _config(executor: str = "sequential", **over: Any) -> RunConfig:
    sections: dict[str, Any] = dict(
        run={"name": "population", "seed": 5, "progress": False, "executor": executor},
        data={
            "name": "population",
            "options": {
                "n_devices": N_DEVICES,
                "samples_per_device": 10,
                "n_items": 20,
                "user_buckets": 8,
                "cloud_devices": 12,
            },
        },
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 8},
        federated={"rounds": 2, "clients_per_round": 4, "eval_devices": 5},
        privacy={"randomness": "reproducible"},
    )
    if executor == "process":
        sections["run"]["workers"] = 2
    sections.update(over)
    return load_config(**sections)


def _quiet(_: str) -> None:
    pass


def _record_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the devices whose rows this (the server's) process loads from now on."""
    loaded: list[int] = []
    original = PopulationSource.load

    def recording(self: PopulationSource, device_id: int) -> Any:
        loaded.append(int(device_id))
        return original(self, device_id)

    monkeypatch.setattr(PopulationSource, "load", recording)
    return loaded


def test_prepared_population_is_lazy_and_its_cloud_is_other_users() -> None:
    data = prepare_data(_config())
    assert data.population is not None and len(data.devices) == N_DEVICES
    assert all(isinstance(d, LazyDeviceData) for d in data.devices.values())
    source = vars(data.devices[1])["source"]
    assert isinstance(source, PopulationSource) and source.cached_ids == ()
    # The cloud: every row of 12 users above the device ids, from the same model.
    assert set(np.unique(data.cloud.user)) == set(range(N_DEVICES + 1, N_DEVICES + 13))
    assert len(data.cloud) == 12 * 10
    big = SyntheticPopulation(
        n_devices=N_DEVICES + 12, samples_per_device=10, n_items=20, user_buckets=8, seed=5
    )
    assert np.array_equal(data.cloud.x[:10], np.concatenate([p.x for p in big.device(31)]))
    # Device rows: split.train_fraction (0.8) sets each device's test split.
    assert (len(data.devices[3].train), len(data.devices[3].test)) == (8, 2)
    with pytest.raises(ValueError, match="never gathered"):
        data.device_test  # noqa: B018


def test_eager_loader_matches_the_lazy_devices() -> None:
    opts = dict(_config().data.options, seed=5)
    full = load_dataset("population", **opts)
    assert len(full) == (N_DEVICES + 12) * 10
    lazy = prepare_data(_config()).devices[7]
    rows = full.user == 7
    assert np.array_equal(full.x[rows], np.concatenate([lazy.train.x, lazy.test.x]))


def test_run_is_the_same_across_executors_and_server_reads_only_the_eval_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seq = run(_config("sequential"), tmp_path / "seq", progress=False, log=_quiet)
    # Every load in this (the server's) process is recorded; spawned workers re-import
    # the class and load unrecorded.
    loaded = _record_loads(monkeypatch)
    proc = run(_config("process"), tmp_path / "proc", progress=False, log=_quiet)
    assert proc.records == seq.records
    assert [r["eval_devices"] for r in proc.records[1:]] == [5, 5]
    assert all(r["sampled"] == 4 for r in proc.records[1:])
    # 8 devices trained in 2 rounds, in the workers: the server read at most the
    # 5 evaluated devices' rows, never a trained device's outside that sample.
    assert loaded and len(set(loaded)) <= 5


def test_server_never_loads_a_trained_device_with_the_process_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = prepare_data(_config())
    spec = ModelSpec("lr", data.cloud.schema)
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(spec.num_parameters(), np.float32)})
    loaded = _record_loads(monkeypatch)
    loop = FederatedLoop(
        strategy,
        strategy.client_program(spec, PlainTrainer(TrainConfig(epochs=1, batch_size=8))),
        data.devices,
        spec,
        config=RoundConfig(clients_per_round=6, eval_devices=3),
        executor=ProcessPoolExecutor(workers=1),
    )
    try:
        record = loop.run_round(1, evaluate=False)
    finally:
        loop.close()
    assert len(record.survivors) == 6 and loaded == []
    assert loop.store.state == {}  # FedAvg keeps no per-device state
    metrics = loop.evaluate()
    assert metrics.n == 3 * 2 and sorted(set(loaded)) == loop.eval_ids.tolist()


def test_a_stopped_population_run_resumes_to_the_same_records(tmp_path: Path) -> None:
    full = run(_config(), tmp_path / "full", progress=False, log=_quiet)
    run(_config(), tmp_path / "part", progress=False, log=_quiet, stop_after=1)
    assert resume(tmp_path / "part", progress=False, log=_quiet).records == full.records


def test_metaua_runs_on_a_population(tmp_path: Path) -> None:
    result = run(_config(method={"name": "metaua"}), tmp_path, progress=False, log=_quiet)
    assert result.final["complete"] and result.records[-1]["eval_devices"] == 5


_RELAYREC = {
    "name": "relayrec",
    "options": {"num_clusters": 2, "num_categories": 3, "meta_epochs": 1, "server_model": "dnn"},
}


def test_relayrec_runs_on_a_population_choosing_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each device chooses its initial model when it is first sampled or evaluated:
    # the server never loads the other devices' rows, and the run resumes to the
    # same records (the cloud phase is redone for the devices not yet seen).
    loaded = _record_loads(monkeypatch)
    cfg = _config(method=_RELAYREC)
    full = run(cfg, tmp_path / "full", progress=False, log=_quiet)
    assert full.final["complete"] and full.records[-1]["eval_devices"] == 5
    chosen = set(loaded)
    assert len(chosen) <= 2 * 4 + 5 < N_DEVICES  # the sampled and the evaluated only
    run(cfg, tmp_path / "part", progress=False, log=_quiet, stop_after=1)
    assert resume(tmp_path / "part", progress=False, log=_quiet).records == full.records


@pytest.mark.parametrize(
    ("method", "reason"),
    [("lcft", "training CTR"), ("coda", "matching pool")],
)
def test_methods_that_read_every_device_refuse_a_population(
    tmp_path: Path, method: str, reason: str
) -> None:
    cfg = _config(method={"name": method})
    with pytest.raises(ConfigError, match=rf"{method}.*population.*{reason}"):
        run(cfg, tmp_path / method, progress=False, log=_quiet)
    assert not (tmp_path / method / "checkpoint.pt").exists()


def test_relayrec_standalone_refuses_a_population(tmp_path: Path) -> None:
    options = {**_RELAYREC["options"], "collaboration": "standalone"}
    cfg = _config(method={"name": "relayrec", "options": options})
    with pytest.raises(ConfigError, match=r"standalone.*whole population"):
        run(cfg, tmp_path / "r", progress=False, log=_quiet)


def test_bad_population_options_and_personalized_strategies_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"'standalone' is personalized"):
        prepare_data(_config(strategy={"name": "standalone"}))
    for options, problem in (
        ({"n_devices": 5, "colour": 1}, r"unknown option\(s\) \['colour'\]"),
        ({"samples_per_device": 5}, r"needs the option `n_devices`"),
        ({"n_devices": 0}, r"`n_devices` must be an int >= 1; got 0"),
        ({"n_devices": 5, "cloud_devices": 0}, r"`cloud_devices` must be an int >= 1"),
    ):
        with pytest.raises(ConfigError, match=problem):
            prepare_data(_config(data={"name": "population", "options": options}))
    with pytest.raises(ConfigError, match="validation"):
        prepare_data(_config(split={"evaluate_on": "validation"}))
