"""SparseEmbeddingDPSGD: the noiseless update is Opacus' ghost-clipping update; the
noise has DP-SGD's variance on every row, deferred or not; arguments are checked.
"""

from __future__ import annotations

import doctest
import warnings
from collections.abc import Callable

import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import secrelay.privacy.dp_embedding as dp_embedding
from protocols.dp.events import GaussianEvent, PoissonSampledEvent
from protocols.errors import InvalidParameterError
from secrelay.data.schema import Field, Schema
from secrelay.models import CTRModel, make_model
from secrelay.privacy.dp_embedding import SparseEmbeddingDPSGD, dense_parameters

Batch = tuple[torch.Tensor, torch.Tensor]

SCHEMA = Schema(
    (
        Field("user_id", "user", 11),
        Field("age", "user", 5),
        Field("item_id", "item", 21),
        Field("genres", "item", 6, max_len=3),
        Field("hour", "context", 4),
    ),
    user_id_field="user_id",
    item_id_field="item_id",
)
SMALL: dict[str, dict[str, object]] = {
    "lr": {},
    "dnn": {"hidden_units": (8, 4)},
    "widedeep": {"hidden_units": (8, 4)},
    "deepfm": {"hidden_units": (8, 4)},
    "dcnv2": {"hidden_units": (8,), "num_cross_layers": 2},
    "xdeepfm": {"hidden_units": (8,), "cin_layer_sizes": (3, 2)},
}


def _model(name: str, seed: int = 0, schema: Schema = SCHEMA) -> CTRModel:
    return make_model(name, schema, embedding_dim=4, seed=seed, **SMALL[name])


def _batch(schema: Schema, size: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cols = [
        torch.randint(0, f.vocab_size, (size,), generator=g)
        for f in schema.fields
        for _ in range(f.max_len)
    ]
    return torch.stack(cols, dim=1), torch.randint(0, 2, (size,), generator=g).float()


def _bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")


def _trainer(model: nn.Module, **kwargs: object) -> SparseEmbeddingDPSGD:
    args: dict[str, object] = {
        "loss_fn": _bce,
        "embedding_lr": 0.5,
        "noise_multiplier": 0.0,
        "max_grad_norm": 1.0,
        "expected_batch_size": 8,
        "generator": torch.Generator().manual_seed(0),
    }
    args.update(kwargs)
    lr = float(args["embedding_lr"])  # type: ignore[arg-type]
    dense = dense_parameters(model)
    optimizer = torch.optim.SGD(dense, lr=lr) if dense else None
    return SparseEmbeddingDPSGD(model, optimizer, **args)  # type: ignore[arg-type]


def _opacus_ghost_steps(model: nn.Module, batches: list[Batch], *, clip: float, lr: float) -> None:
    """Noiseless steps of Opacus' ghost clipping (mean loss over a fixed batch size)."""
    x0, y0 = batches[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, optimizer, criterion, _ = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=lr),
            data_loader=DataLoader(TensorDataset(x0, y0), batch_size=len(y0)),
            criterion=nn.BCEWithLogitsLoss(),
            noise_multiplier=0.0,
            max_grad_norm=clip,
            poisson_sampling=False,
            grad_sample_mode="ghost",
            noise_generator=torch.Generator().manual_seed(0),
        )
        for x, y in batches:
            optimizer.zero_grad()
            criterion(module(x), y).backward()
            optimizer.step()


# DeepFM (the benchmark's model) in both noise modes with and without clipping; the
# other models with every example clipped, the case that exercises the norms.
COMPARISONS = [("deepfm", clip, noise) for clip in (0.05, 100.0) for noise in ("dense", "lazy")]
COMPARISONS += [(name, 0.05, "dense") for name in sorted(SMALL) if name != "deepfm"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("name", "clip", "noise"), COMPARISONS, ids=[f"{n}-C{c}-{z}" for n, c, z in COMPARISONS]
)
def test_noiseless_update_is_opacus_ghost_update(name: str, clip: float, noise: str) -> None:
    batches = [_batch(SCHEMA, 8, seed) for seed in (1, 2)]
    reference = _model(name)
    _opacus_ghost_steps(reference, batches, clip=clip, lr=0.5)
    model = _model(name)
    trainer = _trainer(model, max_grad_norm=clip, noise=noise)
    for x, y in batches:
        trainer.step(x, y)
    assert trainer.close() is model
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5, msg=key)


def test_clipping_is_active_in_the_comparison() -> None:
    """The small clip really changes the update (so the test above tests clipping)."""
    x, y = _batch(SCHEMA, 8, 1)
    small, large = _model("deepfm"), _model("deepfm")
    _trainer(small, max_grad_norm=0.05).step(x, y)
    _trainer(large, max_grad_norm=100.0).step(x, y)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(small.state_dict().values(), large.state_dict().values())
    )
    assert diff > 1e-3


def _untouched_noise_std(noise: str, lrs: list[float], *, sigma: float, batch: int) -> float:
    """Empirical std of the displacement of rows no example ever reads."""
    big = Schema(
        (Field("user_id", "user", 3), Field("item_id", "item", 40_000)),
        user_id_field="user_id",
    )
    model = make_model("lr", big, seed=0)
    before = model.embedding.embedding.weight.detach().clone()
    trainer = _trainer(
        model,
        noise=noise,
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        expected_batch_size=batch,
        embedding_lr=lrs[0],
        generator=torch.Generator().manual_seed(7),
    )
    x = torch.tensor([[1, 1], [2, 2]])  # reads rows 0..5 of the table only
    for lr in lrs:
        trainer.embedding_lr = lr
        trainer.step(x, torch.tensor([1.0, 0.0]))
    if noise == "lazy":
        assert trainer.pending_rows > 0
    trainer.close()
    assert trainer.pending_rows == 0
    moved = model.embedding.embedding.weight.detach() - before
    return float(moved[10:].std())


@pytest.mark.parametrize("noise", ["dense", "lazy"])
def test_untouched_rows_get_dp_sgd_noise_variance(noise: str) -> None:
    """Σ_steps (lr_s · z · C / B)² per coordinate, with a changing learning rate."""
    lrs = [0.5] * 6 + [2.0] * 4
    sigma, batch = 1.5, 4
    expected = sigma / batch * sum(lr**2 for lr in lrs) ** 0.5
    measured = _untouched_noise_std(noise, lrs, sigma=sigma, batch=batch)
    assert measured == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("noise", ["dense", "lazy"])
def test_rows_read_between_steps_carry_every_steps_noise(noise: str) -> None:
    """Two disjoint row sets read in turn (so lazy rows catch up in the forward hook).

    The loss is linear in the lookups, so the clipped gradients do not depend on the
    weights and the noisy run minus the noiseless run is exactly the noise; its
    per-coordinate std must be lr·z·C·sqrt(T)/B on read and never-read rows alike.
    """
    per_example, batch, steps, sigma, lr = 100, 50, 6, 2.0, 0.5
    block = per_example * batch
    turns = [torch.arange(k * block, (k + 1) * block).reshape(batch, per_example) for k in (0, 1)]

    def run(z: float) -> torch.Tensor:
        table = nn.Embedding(3 * block, 1)
        nn.init.zeros_(table.weight)
        trainer = SparseEmbeddingDPSGD(
            table,
            None,
            loss_fn=lambda out, y: out.reshape(len(y), -1).sum(dim=1),
            embedding_lr=lr,
            noise_multiplier=z,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            generator=torch.Generator().manual_seed(3),
            noise=noise,  # type: ignore[arg-type]
        )
        for t in range(steps):
            trainer.step(turns[t % 2], torch.zeros(batch))
        trainer.close()
        return table.weight.detach().flatten()

    noise_only = run(sigma) - run(0.0)
    expected = lr * sigma * steps**0.5 / batch
    for part in torch.split(noise_only, block):  # read at even steps, at odd steps, never
        assert float(part.std()) == pytest.approx(expected, rel=0.05)
        assert abs(float(part.mean())) < 4 * expected / block**0.5


def test_lazy_rows_catch_up_when_read() -> None:
    model = _model("deepfm")
    trainer = _trainer(model, noise="lazy", noise_multiplier=1.0)
    x, y = _batch(SCHEMA, 8, 1)
    trainer.step(x, y)
    pending = trainer.pending_rows
    assert pending > 0
    with torch.no_grad():
        model(torch.arange(SCHEMA.n_columns).remainder(3).unsqueeze(0))  # reads more rows
    assert 0 < trainer.pending_rows < pending
    trainer.flush()
    assert trainer.pending_rows == 0


def test_empty_batch_takes_a_noise_only_step() -> None:
    model = _model("deepfm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, noise_multiplier=1.0)
    x, y = _batch(SCHEMA, 0, 1)
    loss = trainer.step(x, y)
    assert trainer.steps == 1 and float(loss) == 0.0
    for key, value in model.state_dict().items():
        assert not torch.equal(value, before[key]), key


def test_close_removes_the_hooks() -> None:
    model = _model("deepfm")
    trainer = _trainer(model, noise="lazy", noise_multiplier=1.0)
    trainer.step(*_batch(SCHEMA, 8, 1))
    trainer.close()
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model(_batch(SCHEMA, 8, 2)[0])
    for key, value in model.state_dict().items():
        assert torch.equal(value, after[key]), key
    assert trainer.close() is model
    with pytest.raises(RuntimeError, match="closed"):
        trainer.step(*_batch(SCHEMA, 8, 1))


def test_step_event_is_the_sampled_gaussian() -> None:
    trainer = _trainer(_model("lr"), noise_multiplier=1.3)
    assert trainer.step_event(sample_rate=0.01) == PoissonSampledEvent(
        sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.3)
    )


def test_every_bad_argument_is_reported_at_once() -> None:
    model = _model("deepfm")
    with pytest.raises(InvalidParameterError) as err:
        SparseEmbeddingDPSGD(
            model,
            torch.optim.SGD(dense_parameters(model), lr=0.1),
            loss_fn=_bce,
            embedding_lr=0.0,
            noise_multiplier=-1.0,
            max_grad_norm=float("nan"),
            expected_batch_size=0,
            generator=torch.Generator(),
            noise="sparse",  # type: ignore[arg-type]
        )
    text = str(err.value)
    for name in ("embedding_lr", "noise_multiplier", "max_grad_norm", "expected_batch_size"):
        assert f"`{name}`" in text
    assert "'sparse'" in text


def _module_with(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _module_with(nn.Embedding(5, 2, padding_idx=0), nn.Linear(2, 1)), "padding_idx"),
        (lambda: _module_with(nn.Embedding(5, 2), nn.BatchNorm1d(2)), "ModuleValidator"),
        (lambda: _module_with(nn.Linear(2, 2)), "no trainable nn.Embedding"),
    ],
    ids=["padding_idx", "batchnorm", "no-table"],
)
def test_unsupported_modules_are_refused(build: Callable[[], nn.Module], message: str) -> None:
    module = build()
    with pytest.raises(InvalidParameterError, match=message):
        _trainer(module)


def test_optimizer_must_hold_exactly_the_dense_parameters() -> None:
    model = _model("deepfm")
    with pytest.raises(InvalidParameterError, match="lacks dense parameters"):
        SparseEmbeddingDPSGD(
            model,
            torch.optim.SGD(dense_parameters(model)[:1], lr=0.1),
            loss_fn=_bce,
            embedding_lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=8,
            generator=torch.Generator(),
        )
    with pytest.raises(InvalidParameterError, match="not dense parameters"):
        SparseEmbeddingDPSGD(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            loss_fn=_bce,
            embedding_lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=8,
            generator=torch.Generator(),
        )


def test_per_example_losses_are_required() -> None:
    trainer = _trainer(_model("deepfm"), loss_fn=nn.BCEWithLogitsLoss())
    with pytest.raises(InvalidParameterError, match="per-example losses"):
        trainer.step(*_batch(SCHEMA, 8, 1))


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(dp_embedding, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_a_model_of_tables_only_needs_no_optimizer() -> None:
    table = nn.Embedding(30, 3)
    before = table.weight.detach().clone()
    model = nn.Sequential(table, nn.Flatten(0))
    trainer = SparseEmbeddingDPSGD(
        model,
        None,
        loss_fn=lambda out, y: (out.reshape(len(y), -1).sum(dim=1) - y).pow(2),
        embedding_lr=0.1,
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
        generator=torch.Generator(),
    )
    trainer.step(torch.tensor([[1], [2]]), torch.tensor([1.0, -1.0]))
    changed = (table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 2]
