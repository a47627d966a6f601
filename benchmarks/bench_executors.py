"""Devices trained per second: 10,000 synthetic devices, 100 a round, on the process
pool and on a local Ray instance, side by side in one session (issue 18).

Run: pytest benchmarks/bench_executors.py --benchmark-columns=mean,stddev,rounds
(the Ray case skips without the secrelay[ray] extra). Devices/s = 100 / mean round
time. Data placement (start) is outside the timed rounds: both executors place each
device's data once per run. A whole 20-round run of both executors (start included)
and the scaling table: ``python benchmarks/bench_scaling.py run`` (docs/results.md,
"Scaling").
"""

from __future__ import annotations

import numpy as np
import pytest

from secrelay.config import load_config
from secrelay.federated.client import PlainTrainer
from secrelay.federated.executor import (
    ProcessPoolExecutor,
    RayExecutor,
    SequentialExecutor,
    ray_available,
)
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import FedAvg
from secrelay.methods import model_spec_from, prepare_data
from secrelay.training import TrainConfig

POPULATION, PER_ROUND, WORKERS = 10_000, 100, 2


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(
        data={"name": "synthetic", "options": {"n_users": POPULATION, "samples_per_user": 20}},
        model={"name": "dnn", "embedding_dim": 8, "options": {"hidden_units": [32, 16]}},
        split={"alpha": 0.01},
    )
    data = prepare_data(cfg)
    return data, model_spec_from(cfg, data.full.schema)


def _executor(kind: str):
    if kind == "sequential":
        return SequentialExecutor()
    if kind == "process":
        return ProcessPoolExecutor(WORKERS)
    if not ray_available():
        pytest.skip("Ray is not installed (the secrelay[ray] extra)")
    return RayExecutor(WORKERS)


@pytest.mark.parametrize("kind", ["sequential", "process", "ray"])
def test_round_of_100_devices_among_10000(benchmark, setup, kind):
    data, spec = setup
    assert len(data.devices) >= 0.95 * POPULATION
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = strategy.client_program(
        spec, PlainTrainer(TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam"))
    )
    loop = FederatedLoop(
        strategy,
        program,
        data.devices,
        spec,
        config=RoundConfig(clients_per_round=PER_ROUND),
        executor=_executor(kind),
    )
    loop.start()
    counter = iter(range(1, 10_000))
    try:
        benchmark.pedantic(
            lambda: loop.run_round(next(counter), evaluate=False), rounds=5, warmup_rounds=1
        )
        benchmark.extra_info["devices_per_second"] = PER_ROUND / benchmark.stats.stats.mean
    finally:
        loop.close()
