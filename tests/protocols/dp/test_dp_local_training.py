"""make_private_local_training: hooks and ghost modes train; recorded steps = steps taken."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from protocols.dp.ledger import PrivacyBudget, PrivacyLedger
from protocols.dp.local_training import make_private_local_training, train_private_epochs
from protocols.errors import BudgetExceededError, InvalidParameterError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_task(seed: int = 0, n: int = 240, batch_size: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    torch.manual_seed(seed)  # only for module init in this test, not used by the wrapper
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    return model, opt, loader, x, y


def train(pt, epochs: int) -> int:
    steps = 0
    for _ in range(epochs):
        for xb, yb in pt.data_loader:
            loss = pt.criterion(pt.module(xb).squeeze(-1), yb)
            loss.backward()
            pt.optimizer.step()
            pt.optimizer.zero_grad()
            steps += 1
    return steps


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_trains_and_records_exact_steps(mode):
    model, opt, loader, x, y = tiny_task()
    with torch.no_grad():
        before = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y).item()
    pt = make_private_local_training(
        model,
        opt,
        loader,
        noise_multiplier=0.6,
        target_delta=1e-5,
        max_grad_norm=1.0,
        epochs=3,
        run_id="run",
        round=2,
        device_id="dev-7",
        criterion=nn.BCEWithLogitsLoss(),
        grad_sample_mode=mode,
        generator=torch.Generator().manual_seed(1),
    )
    assert pt.sample_rate == pytest.approx(1 / len(loader))
    assert pt.steps == 3 * len(pt.data_loader)
    taken = train(pt, epochs=3)
    assert taken == pt.steps == pt.steps_taken() == pt.record.steps
    with torch.no_grad():
        after = nn.functional.binary_cross_entropy_with_logits(pt.module(x).squeeze(-1), y).item()
    assert after < before
    rec = pt.record
    assert rec.unit == "example" and rec.devices == ("dev-7",) and rec.round == 2
    assert rec.mechanism == f"dp_sgd[{mode}]" and rec.sensitivity == 1.0
    # Our PRV ε of the record equals Opacus' own accountant after the actual steps.
    ledger = PrivacyLedger()
    ledger.spend(pt.records)
    ours = ledger.epsilon(delta=1e-5, device="dev-7")
    assert ours == pytest.approx(pt.privacy_engine.get_epsilon(1e-5), rel=0.02)


def test_target_epsilon_calibrates_and_budget_can_refuse():
    model, opt, loader, _, _ = tiny_task()
    pt = make_private_local_training(
        model,
        opt,
        loader,
        target_epsilon=2.0,
        target_delta=1e-5,
        max_grad_norm=1.0,
        epochs=2,
        run_id="run",
        round=0,
        device_id="d",
        criterion=nn.BCEWithLogitsLoss(),
        generator=torch.Generator().manual_seed(0),
        accountant="rdp",
    )
    ledger = PrivacyLedger()
    assert ledger.epsilon(delta=1e-5, device="d") == 0.0
    report = ledger.spend(
        pt.records, budget=PrivacyBudget(delta=1e-5, example_epsilon=2.0, accountant="rdp")
    )
    assert report is not None and 1.9 <= report.example_epsilon["d"] <= 2.0
    with pytest.raises(BudgetExceededError):  # a second training round would overspend
        ledger.spend(
            pt.records, budget=PrivacyBudget(delta=1e-5, example_epsilon=2.0, accountant="rdp")
        )
    assert len(ledger) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"noise_multiplier": None}, InvalidParameterError, "exactly one of"),
        ({"target_epsilon": 1.0}, InvalidParameterError, "exactly one of"),
        ({"grad_sample_mode": "magic"}, InvalidParameterError, "`grad_sample_mode` must be one of"),
        (
            {"grad_sample_mode": "ghost", "criterion": None},
            InvalidParameterError,
            "`criterion` is required",
        ),
        ({"generator": None}, InvalidParameterError, "`generator` must be a torch.Generator"),
        ({"max_grad_norm": 0.0}, InvalidParameterError, "`max_grad_norm` must be in (0, inf)"),
        ({"epochs": 0}, InvalidParameterError, "`epochs` must be an integer in [1, inf)"),
        ({"secure_mode": True}, InvalidParameterError, "`generator` must be None in `secure_mode`"),
    ],
)
def test_arguments_validated(kwargs, error, message):
    model, opt, loader, _, _ = tiny_task()
    args = {
        "noise_multiplier": 1.0,
        "target_delta": 1e-5,
        "max_grad_norm": 1.0,
        "epochs": 1,
        "run_id": "r",
        "round": 0,
        "device_id": "d",
        "criterion": nn.BCEWithLogitsLoss(),
        "generator": torch.Generator().manual_seed(0),
    }
    args.update(kwargs)
    with pytest.raises(error) as info:
        make_private_local_training(model, opt, loader, **args)
    assert message in str(info.value)


@pytest.mark.skipif(
    importlib.util.find_spec("torchcsprng") is not None, reason="torchcsprng installed"
)
def test_secure_mode_without_csprng_backend_says_so():
    model, opt, loader, _, _ = tiny_task()
    with pytest.raises(ImportError, match="torchcsprng"):
        make_private_local_training(
            model,
            opt,
            loader,
            noise_multiplier=1.0,
            target_delta=1e-5,
            max_grad_norm=1.0,
            epochs=1,
            run_id="r",
            round=0,
            device_id="d",
            criterion=nn.BCEWithLogitsLoss(),
            secure_mode=True,
        )


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_train_private_epochs_takes_noise_only_steps_on_empty_batches(mode):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g)
    y = (x[:, 0] > 0).float()
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=1)  # q = 1/40: many empty batches
    pt = make_private_local_training(
        model,
        opt,
        loader,
        noise_multiplier=1.0,
        target_delta=1e-5,
        max_grad_norm=1.0,
        epochs=2,
        run_id="run",
        round=1,
        device_id="d",
        criterion=nn.BCEWithLogitsLoss(),
        grad_sample_mode=mode,
        generator=torch.Generator().manual_seed(5),
    )
    sizes = [len(yb) for _, yb in pt.data_loader]
    assert 0 in sizes  # the situation under test occurs with this seed
    before = [p.detach().clone() for p in pt.module.parameters()]
    steps, loss = train_private_epochs(pt, 2)
    assert steps == pt.steps == pt.steps_taken() == 80
    assert loss == loss  # not NaN: some batches were non-empty
    assert any(not torch.equal(a, b) for a, b in zip(before, pt.module.parameters()))
