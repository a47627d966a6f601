"""DPSGDTrainer: recorded steps equal steps taken, the planned record is the spent
one, calibration hits the target over the planned participations, FedProx works,
and training outside train_round is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.dp import PrivacyLedger
from protocols.errors import InvalidParameterError
from secrelay.federated.client import DeviceTask, LocalTrainingProgram
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.strategies import FedAvg, FedProx, WeightedDeltaRule
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.training import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _trainer(**kw) -> DPSGDTrainer:
    args = {
        "config": TrainConfig(epochs=3, batch_size=4, lr=0.05),
        "max_grad_norm": 1.0,
        "target_delta": 1e-5,
        "noise_multiplier": 0.8,
        "run_id": "t",
    }
    args.update(kw)
    return DPSGDTrainer(**args)


class CountingSteps:
    """Counts ``step()`` calls of the torch optimizers (Opacus wraps and calls them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.Adagrad):
            monkeypatch.setattr(cls, "step", self._wrap(cls.step))

    def _wrap(self, original):
        def step(opt, *a, **k):
            self.count += 1
            return original(opt, *a, **k)

        return step


@pytest.mark.parametrize("mode", ["ghost", "hooks", "sparse"])
def test_recorded_steps_equal_steps_taken(mode, make_devices, dnn_spec, monkeypatch) -> None:
    data = make_devices(rows=40)[2]  # 30 train rows, batch 4: q = 1/8
    trainer = _trainer(grad_sample_mode=mode)
    counter = CountingSteps(monkeypatch)
    model = dnn_spec.build()
    before = [p.detach().clone() for p in model.parameters()]
    task = DeviceTask(device_id=2, round=5, models={}, seed=1)
    planned = trainer.planned_record(data, round=5)
    out = trainer.train_round(
        model, data, generator=torch.Generator().manual_seed(1), reference=None, task=task
    )
    (rec,) = out.privacy_records
    assert counter.count == out.steps == rec.steps == 3 * 8
    assert rec == planned  # the dry run is exactly what is spent
    assert rec.unit == "example" and rec.devices == ("2",) and rec.round == 5
    assert rec.mechanism == f"dp_sgd[{mode}]" and rec.sample_rate == pytest.approx(1 / 8)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_target_epsilon_is_met_over_the_planned_participations(make_devices) -> None:
    devices = make_devices(rows=40)
    trainer = _trainer(noise_multiplier=None, target_epsilon=2.0, participations=3)
    for dev in (0, 3):
        rec = trainer.planned_record(devices[dev], round=1)
        ledger = PrivacyLedger()
        ledger.spend([rec] * 3)
        eps = ledger.epsilon(delta=1e-5, device=str(dev))
        assert 2.0 * 0.985 <= eps <= 2.0
        ledger.spend([rec])  # a fourth participation overspends
        assert ledger.epsilon(delta=1e-5, device=str(dev)) > 2.0


@pytest.mark.parametrize("mode", ["ghost", "sparse"])
def test_fedprox_term_pulls_towards_the_start_model(mode, make_devices, dnn_spec) -> None:
    data = make_devices(rows=40)[1]
    base = _trainer(noise_multiplier=0.5, grad_sample_mode=mode)
    prox = FedProx(mu=50.0).trainer(base)
    assert isinstance(prox, DPSGDTrainer) and prox.prox_mu == 50.0
    norms = []
    for trainer in (base, prox):
        prog = LocalTrainingProgram(model=dnn_spec, trainer=trainer, rule=WeightedDeltaRule())
        start = np.zeros(dnn_spec.num_parameters(), dtype=np.float32)
        res = prog.local_update(
            data, DeviceTask(device_id=1, round=1, models={"global": start}, seed=4)
        )
        assert len(res.privacy_records) == 1
        norms.append(np.linalg.norm(res.delta))
    assert norms[1] < 0.5 * norms[0]


def test_train_outside_train_round_is_refused(make_devices, tiny_spec) -> None:
    with pytest.raises(InvalidParameterError, match="must be driven through train_round"):
        _trainer().train(
            tiny_spec.build(), make_devices()[0], generator=torch.Generator(), reference=None
        )


def test_invalid_arguments_are_reported_together() -> None:
    with pytest.raises(InvalidParameterError) as info:
        _trainer(max_grad_norm=0.0, target_delta=1.5, grad_sample_mode="magic")
    msg = str(info.value)
    assert "`max_grad_norm`" in msg and "`target_delta`" in msg and "`grad_sample_mode`" in msg


def test_records_of_every_trained_device_reach_the_round(make_devices, tiny_spec) -> None:
    devices = make_devices()
    strategy = FedAvg()
    strategy.initialize({"global": np.zeros(tiny_spec.num_parameters(), dtype=np.float32)})
    program = strategy.client_program(
        tiny_spec, _trainer(config=TrainConfig(epochs=1, batch_size=3))
    )
    loop = FederatedLoop(
        strategy, program, devices, tiny_spec, config=RoundConfig(clients_per_round=3), seed=2
    )
    rec = loop.run_round(1)
    assert sorted(r.devices[0] for r in rec.privacy_records) == [str(d) for d in rec.sampled]
