"""The shared training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.errors import InvalidParameterError
from secrelay.training import TrainConfig, soft_bce_with_logits


def test_soft_bce_equals_bce_for_targets_in_unit_interval():
    z = torch.randn(50)
    t = torch.rand(50)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z, t)
    assert soft_bce_with_logits(z, t).item() == pytest.approx(ref.item(), rel=1e-5)


def test_soft_bce_with_target_above_one_pushes_logit_up():
    z = torch.zeros(1, requires_grad=True)
    soft_bce_with_logits(z, torch.tensor([1.5])).backward()
    # gradient sigmoid(z) - t = 0.5 - 1.5 < 0: descent raises the logit
    assert z.grad.item() == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"epochs": -1}, "`epochs` must be an int >= 0"),
        ({"batch_size": 0}, "`batch_size` must be an int >= 1"),
        ({"lr": float("nan")}, "`lr` must be a finite number > 0"),
        ({"optimizer": "rmsprop"}, "`optimizer` must be one of"),
        ({"prox_mu": -0.1}, "`prox_mu` must be >= 0"),
    ],
)
def test_train_config_validation(kwargs, msg):
    with pytest.raises(InvalidParameterError, match=msg):
        TrainConfig(**kwargs)


def test_training_is_deterministic_and_learns():
    from secrelay.data import make_synthetic
    from secrelay.models import make_model
    from secrelay.training import evaluate_model, train_epochs

    ds = make_synthetic(n_users=60, samples_per_user=40, seed=3)
    results = []
    for _ in range(2):
        model = make_model("lr", ds.schema, embedding_dim=4, seed=0)
        train_epochs(
            model,
            ds,
            TrainConfig(epochs=3, batch_size=64, lr=0.05),
            generator=torch.Generator().manual_seed(1),
        )
        results.append(evaluate_model(model, ds))
    assert results[0] == results[1]
    assert results[0].auc > 0.7
    assert np.isfinite(results[0].logloss)
