"""Update inversion (DLG / inverting gradients) on planted batches with known rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.inversion import (
    GradientInversionAttack,
    Reconstruction,
    inversion_run,
    planted_batches,
    score_reconstruction,
)
from attacks.views import ModelLayout
from secrelay import RunConfig
from secrelay.data import CTRDataset, make_synthetic
from secrelay.models import flat_parameter_slices, load_flat_parameters


def _model(layout: ModelLayout, seed: int = 0) -> np.ndarray:
    from secrelay.models import flatten_parameters

    torch.manual_seed(seed)
    net = layout.build(seed=seed)
    with torch.no_grad():  # a model whose rows differ clearly (not the 0.01 init)
        net.embedding.embedding.weight.normal_(0.0, 0.3)
    return np.asarray(flatten_parameters(net).detach().numpy(), dtype=np.float64)


def _gradient(layout: ModelLayout, flat: np.ndarray, batch: CTRDataset) -> np.ndarray:
    """The flat gradient of the mean BCE loss at ``flat`` on ``batch`` (what one SGD
    step of the device computes)."""
    net = layout.build(seed=0)
    load_flat_parameters(net, torch.as_tensor(np.asarray(flat, dtype=np.float32)))
    z = net(torch.from_numpy(np.array(batch.x)))
    y = torch.from_numpy(np.array(batch.y, dtype=np.float32))
    loss = (torch.nn.functional.softplus(z) - y * z).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    slices = flat_parameter_slices(net)
    out = np.zeros(sum(s.stop - s.start for s in slices.values()))
    for (name, _), g in zip(net.named_parameters(), grads):
        out[slices[name]] = g.detach().double().numpy().reshape(-1)
    return out


def _batches(data: CTRDataset, size: int, count: int, seed: int = 0) -> list[CTRDataset]:
    rng = np.random.default_rng(seed)
    users = data.by_user()
    out = []
    for u in rng.choice(sorted(users), count, replace=False):
        out.append(data.subset(np.sort(rng.choice(users[u], size, replace=False))))
    return out


def _score(layout, atk, flat, batches, *, noise=0.0, seed=0):
    """Invert each batch's gradient; with ``noise`` > 0 as DP-SGD releases it: clipped
    to norm 1, plus N(0, noise²) on every coordinate (batch 1)."""
    rng = np.random.default_rng(seed)
    scores = []
    for b in batches:
        g = _gradient(layout, flat, b)
        if noise:
            g = g * min(1.0, 1.0 / np.linalg.norm(g)) + noise * rng.normal(size=g.size)
        rec = atk.invert(flat, g, len(b))
        scores += score_reconstruction(layout, flat, rec, b, atk.tolerance)
    return scores


def test_label_sign_rule_and_exact_rows_batch_one(small_data, layout):
    """Batch 1: the output bias's sign gives the label (iDLG), the moved rows give the
    feature values, z follows: every example recovered."""
    flat = _model(layout)
    atk = GradientInversionAttack(layout, iterations=30, restarts=1)
    scores = _score(layout, atk, flat, _batches(small_data, 1, 16))
    assert np.mean([s.label for s in scores]) >= 0.95
    assert np.mean([s.fields for s in scores]) >= 0.9
    assert np.mean([s.dense for s in scores]) >= 0.9


def test_noise_degrades_recovery(small_data, layout):
    """DP-SGD's clipping and noise (z = 1) drown the rows and blur the label:
    recovery falls far below the noiseless case."""
    flat = _model(layout)
    atk = GradientInversionAttack(layout, iterations=20, restarts=1, max_candidates=2)
    noisy = _score(layout, atk, flat, _batches(small_data, 1, 16, seed=1), noise=1.0)
    # noiseless, the same batches give >= 0.9 (test above)
    assert np.mean([s.fields for s in noisy]) <= 0.2
    assert np.mean([s.dense for s in noisy]) <= 0.2
    assert np.mean([s.label for s in noisy]) < 0.95


def test_aggregate_hides_each_device(small_data, layout):
    """A secure sum of 12 devices' one-example gradients, inverted as one example,
    gives no device its own row set."""
    flat = _model(layout)
    atk = GradientInversionAttack(layout, iterations=30, restarts=1)
    batches = _batches(small_data, 1, 12, seed=2)
    total = sum(_gradient(layout, flat, b) for b in batches) / len(batches)
    r = atk.run_aggregate(
        flat,
        -0.1 * total,  # the aggregate update of one SGD step at lr 0.1
        {i: b for i, b in enumerate(batches)},
        lr=0.1,
        batch_size=1,
    )
    assert r.feature_recovery.value <= 0.25
    assert r.examples == 12


def test_scoring_matches_examples_regardless_of_order(small_data, layout):
    flat = _model(layout)
    batch = _batches(small_data, 3, 1, seed=4)[0]
    net = layout.build(seed=0)
    load_flat_parameters(net, torch.as_tensor(flat.astype(np.float32)))
    with torch.no_grad():
        z = net.embedding(torch.from_numpy(np.array(batch.x))).flatten(1).double().numpy()
    order = [2, 0, 1]
    rec = Reconstruction(np.array(batch.x)[order], np.array(batch.y)[order], z[order], 0.0, 0)
    scores = score_reconstruction(layout, flat, rec, batch, 0.1)
    assert all(s.label and s.fields and s.dense for s in scores)
    wrong = Reconstruction(rec.x, 1 - rec.y, rec.dense + 1.0, 0.0, 0)
    scores = score_reconstruction(layout, flat, wrong, batch, 0.1)
    assert not any(s.label or s.dense for s in scores)


def test_bad_input_is_refused(layout, small_data):
    with pytest.raises(ValueError, match="distance"):
        GradientInversionAttack(layout, distance="l1")  # type: ignore[arg-type]
    atk = GradientInversionAttack(layout, iterations=5, restarts=1)
    with pytest.raises(ValueError, match="coordinates"):
        atk.invert(_model(layout), np.zeros(3), 1)
    lr_layout = ModelLayout("lr", small_data.schema, (("embedding_dim", 4),))
    with pytest.raises(ValueError, match="dnn"):
        GradientInversionAttack(lr_layout)


def test_planted_batches_give_each_device_its_batch(small_data):
    from secrelay.methods import prepare_data

    data, alpha = planted_batches(small_data, devices=5, batch_size=2, cloud_rows=100)
    cfg = RunConfig.from_dict(
        {"data": {"name": "synthetic"}, "split": {"mode": "temporal", "alpha": alpha}}
    )
    prepared = prepare_data(cfg, data)
    assert len(prepared.cloud) == 100
    assert sorted(len(d.train) for d in prepared.devices.values()) == [2] * 5


def _config(**privacy: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "run": {"name": "inversion-test", "seed": 0},
            "data": {"name": "synthetic"},
            "model": {"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [16]}},
            "privacy": {
                "randomness": "reproducible",
                "secagg_sign_advertisements": True,
                **privacy,
            },
        }
    )


@pytest.mark.slow
def test_real_fedsgd_round_plain_dp_and_secagg(tmp_path):
    """Through the real pipeline: plain uploads give labels and rows away (batch 1);
    DP-SGD (example ε = 8) and a secure sum of 16 devices measurably do not."""
    base = make_synthetic(n_users=60, samples_per_user=30, n_items=200, seed=3)
    layout = ModelLayout.from_config(_config(), base.schema)
    atk = GradientInversionAttack(layout, iterations=100, restarts=1)
    got = {}
    for name, priv in (
        ("plain", {}),
        ("dp", {"dp_sgd": True, "max_grad_norm": 1.0, "local_target_epsilon": 8.0}),
        ("secagg", {"secure_aggregation": True}),
    ):
        got[name] = inversion_run(
            _config(**priv), base, tmp_path / name, atk, devices=16, batch_size=1
        )
    assert got["plain"].label_accuracy.value >= 0.95
    assert got["plain"].feature_recovery.low > 0.6
    assert got["dp"].feature_recovery.high < got["plain"].feature_recovery.low
    assert got["secagg"].feature_recovery.high < got["plain"].feature_recovery.low
    assert got["secagg"].route.startswith("aggregate")
