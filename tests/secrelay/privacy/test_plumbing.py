"""The additive plumbing in secrelay.federated that the privacy layer relies on:
trainer ledger records reach the round record, SumResult records are collected, and
SecureSum's device encoding sums signed integers exactly and never clips."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from protocols.dp import GaussianEvent, LedgerRecord
from protocols.errors import InvalidParameterError
from secrelay.federated.aggregation import PlaintextSum, SumResult
from secrelay.federated.client import DeviceTask, ModelSpec, PlainTrainer, TrainOutcome
from secrelay.federated.loop import FederatedLoop, RoundAborted, RoundConfig
from secrelay.federated.secure import DeviceEncoding, SecureSum
from secrelay.federated.strategies import FedAvg
from secrelay.federated.transcript import Channel
from secrelay.training import TrainConfig


def _record(round: int, device: str, mechanism: str = "test") -> LedgerRecord:
    return LedgerRecord(
        run_id="r",
        round=round,
        mechanism=mechanism,
        event=GaussianEvent(noise_multiplier=1.0),
        unit="example",
        devices=(device,),
        delta=1e-5,
        adjacency="add_remove",
    )


@dataclass(frozen=True)
class RecordingTrainer(PlainTrainer):
    """A plain trainer that reports one ledger record per round it trains."""

    def train_round(self, model, data, *, generator, reference, task: DeviceTask) -> TrainOutcome:
        out = super().train_round(model, data, generator=generator, reference=reference, task=task)
        return TrainOutcome(out.steps, out.loss, (_record(task.round, str(task.device_id)),))


class RecordingSum(PlaintextSum):
    def aggregate(self, round, contributions, channel, *, dropouts=None):
        res = super().aggregate(round, contributions, channel, dropouts=dropouts)
        return _RecordedResult(res.sums, res.survivors, (_record(round, "sum", "sum"),))


@dataclass(frozen=True)
class _RecordedResult(SumResult):
    privacy_records: tuple[LedgerRecord, ...] = ()


def _loop(devices, spec: ModelSpec, **kw) -> FederatedLoop:
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(spec.num_parameters(), dtype=np.float32)})
    program = strategy.client_program(spec, RecordingTrainer(TrainConfig(epochs=1)))
    return FederatedLoop(strategy, program, devices, spec, seed=3, **kw)


def test_device_and_sum_records_reach_the_round_record(make_devices, tiny_spec) -> None:
    loop = _loop(
        make_devices(),
        tiny_spec,
        config=RoundConfig(clients_per_round=4),
        sum_protocol=RecordingSum(),
    )
    rec = loop.run_round(1)
    devices = sorted(r.devices[0] for r in rec.privacy_records if r.mechanism == "test")
    assert devices == sorted(str(d) for d in rec.sampled)
    assert [r.mechanism for r in rec.privacy_records].count("sum") == 1
    assert all(r.round == 1 for r in rec.privacy_records)


def test_records_survive_an_abort(make_devices, tiny_spec) -> None:
    loop = _loop(
        make_devices(), tiny_spec, config=RoundConfig(clients_per_round=3, min_survivors=5)
    )
    with pytest.raises(RoundAborted) as info:
        loop.run_round(2)
    attached = info.value.privacy_records  # type: ignore[attr-defined]
    assert len(attached) == 3 and all(r.round == 2 for r in attached)


class IdentityInts(DeviceEncoding):
    """Contributes the integer array under ``"x"`` unchanged."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def precision_bits(self, *, round, num_devices, shapes) -> int:
        return self.bits

    def encode(self, contribution: Mapping[str, np.ndarray], *, round, device, num_devices):
        return np.asarray(contribution["x"], dtype=np.int64)

    def decode(self, total, *, round, survivors, num_devices, shapes):
        return {"x": total.reshape(shapes["x"])}


@pytest.mark.parametrize("bits", [2, 8, 20])
def test_device_encoding_sums_signed_integers_exactly(bits: int) -> None:
    rng = np.random.default_rng(bits)
    half = 1 << (bits - 1)
    contribs = {d: {"x": rng.integers(-half, half, size=7)} for d in range(5)}
    contribs[0]["x"][:2] = (-half, half - 1)  # both ends of the range
    channel = Channel()
    res = SecureSum(device_encoding=IdentityInts(bits), seed=1).aggregate(
        4, contribs, channel, dropouts={3: "masked_input"}
    )
    expected = sum(c["x"] for d, c in contribs.items() if d != 3)
    assert res.survivors == (0, 1, 2, 4)
    np.testing.assert_array_equal(res.sums["x"], expected)
    assert res.sums["x"].dtype == np.int64


def test_device_encoding_refuses_to_clip() -> None:
    contribs = {d: {"x": np.zeros(3, dtype=np.int64)} for d in range(3)}
    contribs[1]["x"][2] = 128
    with pytest.raises(InvalidParameterError, match=r"device 1: encoded values \[0, 128\] exceed"):
        SecureSum(device_encoding=IdentityInts(8)).aggregate(0, contribs, Channel())


def test_default_train_round_matches_train(make_devices, tiny_spec) -> None:
    data = make_devices()[0]
    spec = tiny_spec
    trainer = PlainTrainer(TrainConfig(epochs=2, batch_size=4))
    m1, m2 = spec.build(), spec.build()
    m2.load_state_dict(m1.state_dict())
    steps, loss = trainer.train(
        m1, data, generator=torch.Generator().manual_seed(0), reference=None
    )
    task = DeviceTask(device_id=0, round=1, models={}, seed=0)
    out = trainer.train_round(
        m2, data, generator=torch.Generator().manual_seed(0), reference=None, task=task
    )
    assert (out.steps, out.loss, out.privacy_records) == (steps, loss, ())
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
