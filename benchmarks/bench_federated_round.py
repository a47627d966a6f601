"""One FedAvg round of 25 DNN devices on ML-100K: sequential vs a process pool.

Run: pytest benchmarks/bench_federated_round.py --benchmark-columns=mean,stddev,rounds
(skips when MovieLens-100K is absent). Both executors run in one session so their
ratio is measured on the same machine state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from secrelay.config import load_config
from secrelay.federated.client import PlainTrainer
from secrelay.federated.executor import ProcessPoolExecutor, SequentialExecutor
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import FedAvg
from secrelay.methods import model_spec_from, prepare_data
from secrelay.training import TrainConfig

ML100K = Path(
    os.environ.get("SECRELAY_ML100K", Path(__file__).resolve().parents[2] / "shared/data/ml-100k")
)


@pytest.fixture(scope="module")
def setup():
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K}; set SECRELAY_ML100K")
    cfg = load_config(data={"name": "movielens100k", "path": str(ML100K)}, model={"name": "dnn"})
    data = prepare_data(cfg)
    spec = model_spec_from(cfg, data.full.schema)
    return data, spec


@pytest.mark.parametrize("executor", ["sequential", "process-2"])
def test_fedavg_round_25_dnn_devices(benchmark, setup, executor):
    data, spec = setup
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = strategy.client_program(
        spec, PlainTrainer(TrainConfig(epochs=5, batch_size=32, lr=1e-3, optimizer="adam"))
    )
    ex = SequentialExecutor() if executor == "sequential" else ProcessPoolExecutor(2)
    loop = FederatedLoop(
        strategy,
        program,
        data.devices,
        spec,
        config=RoundConfig(clients_per_round=25),
        executor=ex,
    )
    loop.start()
    counter = iter(range(1, 10_000))
    try:
        benchmark.pedantic(
            lambda: loop.run_round(next(counter), evaluate=False), rounds=5, warmup_rounds=1
        )
    finally:
        loop.close()
