"""Lazy device data: rows materialize where they are read (a worker), each device
from its own stream, identical to eager data; the server holds only ids."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from protocols.errors import InvalidParameterError
from secrelay.data.population import SyntheticPopulation
from secrelay.federated.client import DeviceData, ModelSpec, PlainTrainer
from secrelay.federated.executor import Executor, ProcessPoolExecutor, SequentialExecutor
from secrelay.federated.lazy import LazyDeviceData, PopulationSource, lazy_devices
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import FedAvg
from secrelay.training import TrainConfig


def test_each_device_has_its_own_stream() -> None:
    small, big = (
        SyntheticPopulation(n_devices=10, seed=3),
        SyntheticPopulation(n_devices=10_000, seed=3),
    )
    a, b = small.device(7), big.device(7)
    assert np.array_equal(a[0].x, b[0].x) and np.array_equal(a[1].y, b[1].y)
    assert not np.array_equal(small.device(8)[0].x, a[0].x)
    assert len(a[0]) + len(a[1]) == small.samples_per_device
    with pytest.raises(InvalidParameterError, match="device_id"):
        small.device(11)
    with pytest.raises(InvalidParameterError, match=r"n_devices.*test_fraction"):
        SyntheticPopulation(n_devices=0, test_fraction=1.0)


def test_lazy_proxy_pickles_small_and_loads_the_same_rows() -> None:
    pop = SyntheticPopulation(n_devices=1000)
    devices = lazy_devices(PopulationSource(pop), pop.device_ids)
    blob = pickle.dumps(devices)
    assert len(blob) < 40 * len(devices)  # ids and one shared source, no rows
    proxy = pickle.loads(blob)[5]
    assert isinstance(proxy, LazyDeviceData)
    train, test = pop.device(5)
    assert np.array_equal(proxy.train.x, train.x) and np.array_equal(proxy.test.y, test.y)
    assert proxy.num_train == len(train)


def _loop(devices: dict[int, DeviceData], spec: ModelSpec, executor: Executor) -> FederatedLoop:
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = strategy.client_program(
        spec, PlainTrainer(TrainConfig(epochs=1, batch_size=8, lr=1e-2, optimizer="adam"))
    )
    return FederatedLoop(
        strategy,
        program,
        devices,
        spec,
        config=RoundConfig(clients_per_round=4, min_survivors=1),
        executor=executor,
        seed=2,
    )


def test_lazy_run_equals_eager_run_in_worker_processes() -> None:
    pop = SyntheticPopulation(n_devices=12, samples_per_device=16, seed=1)
    spec = ModelSpec("lr", pop.schema)
    eager: dict[int, DeviceData] = {u: DeviceData(u, *pop.device(u)) for u in pop.device_ids}
    lazy = lazy_devices(PopulationSource(pop), pop.device_ids)
    ref = _loop(eager, spec, SequentialExecutor())
    got = _loop(lazy, spec, ProcessPoolExecutor(2))
    try:
        for t in (1, 2):
            ref.run_round(t, evaluate=False)
            got.run_round(t, evaluate=False)
    finally:
        ref.close()
        got.close()
    assert np.array_equal(ref.strategy.models["global"], got.strategy.models["global"])
