"""The round loop: transcript contents, dropouts, aborts, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import ProtocolAbort
from secrelay.federated.client import PlainTrainer
from secrelay.federated.executor import ProcessPoolExecutor, SequentialExecutor
from secrelay.federated.loop import FederatedLoop, RoundAborted, RoundConfig
from secrelay.federated.messages import SERVER, ContributionUpload, ModelDownload
from secrelay.federated.strategies import FedAvg, make_strategy
from secrelay.federated.transcript import Channel
from secrelay.training import TrainConfig


def _loop(devices, spec, *, strategy="fedavg", config=None, executor=None, seed=0):
    s = make_strategy(strategy)
    s.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    trainer = PlainTrainer(TrainConfig(epochs=1, batch_size=4, lr=0.1, optimizer="sgd"))
    program = s.client_program(spec, trainer)
    return FederatedLoop(
        s,
        program,
        devices,
        spec,
        config=config or RoundConfig(clients_per_round=4),
        seed=seed,
        executor=executor,
        channel=Channel(),
    )


def test_plain_transcript_holds_every_individual_update(devices, spec):
    loop = _loop(devices, spec)
    rec = loop.run_round(1)
    ups = loop.channel.transcript.messages(kind=ContributionUpload, round=1)
    assert sorted(m.sender for m in ups) == sorted(rec.sampled)
    downs = loop.channel.transcript.messages(kind=ModelDownload, round=1)
    assert sorted(m.receiver for m in downs) == sorted(rec.sampled)
    assert all(m.receiver == SERVER for m in ups)
    # The server can read each device's individual update in the clear: the leak that
    # secure aggregation must remove. Re-running one device alone gives the same delta.
    program = loop.program
    dev = rec.sampled[0]
    from secrelay.federated.client import DeviceTask

    task = DeviceTask(dev, 1, downs[0].models, loop.device_seed(1, dev))
    own = program.run(devices[dev], task).contribution["delta"]
    seen = next(m for m in ups if m.sender == dev).contribution["delta"]
    np.testing.assert_array_equal(own, seen)
    assert np.abs(seen).sum() > 0
    # Recorded payloads are read-only.
    with pytest.raises(ValueError):
        seen[0] = 1.0


def test_average_equals_weighted_mean_of_transcript(devices, spec):
    loop = _loop(devices, spec)
    before = loop.strategy.models["global"].copy()
    loop.run_round(1)
    ups = loop.channel.transcript.messages(kind=ContributionUpload, round=1)
    num = sum(m.contribution["delta"] for m in ups)
    den = sum(m.contribution["weight"][0] for m in ups)
    np.testing.assert_allclose(
        loop.strategy.models["global"], before + num / den, rtol=1e-5, atol=1e-7
    )


def test_dropouts_leave_survivors_and_are_deterministic(devices, spec):
    cfg = RoundConfig(clients_per_round=6, dropout_rate=0.5)
    a = _loop(devices, spec, config=cfg).run_round(1)
    b = _loop(devices, spec, config=cfg).run_round(1)
    assert a.dropped == b.dropped and a.survivors == b.survivors
    assert set(a.survivors).isdisjoint(a.dropped)
    assert set(a.survivors) | set(a.dropped) == set(a.sampled)
    assert set(a.dropped.values()) <= {"download", "train", "upload"}


def test_too_few_survivors_abort_and_leave_state_unchanged(devices, spec):
    cfg = RoundConfig(clients_per_round=6, dropout_rate=0.9, min_survivors=5)
    loop = _loop(devices, spec, config=cfg, seed=3)
    before = loop.strategy.models["global"].copy()
    with pytest.raises(RoundAborted, match="min_survivors=5") as info:
        loop.run_round(1)
    assert isinstance(info.value, ProtocolAbort)
    np.testing.assert_array_equal(loop.strategy.models["global"], before)


def test_skip_policy_records_aborted_round(devices, spec):
    cfg = RoundConfig(clients_per_round=6, dropout_rate=0.9, min_survivors=5, on_abort="skip")
    loop = _loop(devices, spec, config=cfg, seed=3)
    before = loop.strategy.models["global"].copy()
    rec = loop.run_round(1)
    assert rec.aborted
    np.testing.assert_array_equal(loop.strategy.models["global"], before)


def test_poisson_sampling_rate(devices, spec):
    loop = _loop(devices, spec, config=RoundConfig(sampling="poisson", sample_rate=0.5))
    sizes = [len(loop.sample(t)) for t in range(400)]
    assert abs(np.mean(sizes) - 3.0) < 0.3


def test_same_seed_same_metrics_different_seed_differs(devices, spec):
    runs = []
    for seed in (0, 0, 1):
        loop = _loop(devices, spec, seed=seed)
        runs.append([loop.run_round(t).metrics.auc for t in (1, 2)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_sequential_and_process_pool_are_identical(devices, spec):
    seq = _loop(devices, spec, executor=SequentialExecutor())
    par = _loop(devices, spec, executor=ProcessPoolExecutor(2))
    try:
        for t in (1, 2):
            seq.run_round(t)
            par.run_round(t)
    finally:
        par.close()
    np.testing.assert_array_equal(seq.strategy.models["global"], par.strategy.models["global"])


def test_standalone_keeps_personal_models(devices, spec):
    s = make_strategy("standalone")
    s.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = s.client_program(
        spec, PlainTrainer(TrainConfig(epochs=2, batch_size=4, lr=0.5, optimizer="sgd"))
    )
    loop = FederatedLoop(
        s, program, devices, spec, config=RoundConfig(clients_per_round=len(devices))
    )
    rec = loop.run_round(1)
    assert not loop.channel.transcript.messages(kind=ContributionUpload)
    assert set(loop.personal_predictions) == set(devices)
    assert rec.metrics is not None and rec.metrics.n == sum(len(d.test) for d in devices.values())
    np.testing.assert_array_equal(s.models["global"], 0)


def test_fedprox_sets_proximal_term(devices, spec):
    s = make_strategy("fedprox", mu=0.5)
    s.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = s.client_program(spec, PlainTrainer(TrainConfig(epochs=1)))
    assert program.trainer.prox_mu == 0.5
    assert isinstance(s, FedAvg)
