"""The models under Opacus: validation, per-sample gradients, hooks and ghost clipping.

Per-sample gradients from Opacus are compared with a ``torch.func`` reference
(``vmap`` over ``grad`` of the single-example loss), and one DP-SGD step with no
noise is compared, parameter by parameter, with the clipped-and-averaged reference
gradient, in hooks mode and in ghost-clipping mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from secrelay.data.schema import Schema
from secrelay.models import CTRModel, flat_parameter_slices, flatten_parameters, make_model
from secrelay.models.layers import Bias

Batch = tuple[torch.Tensor, torch.Tensor]

pytestmark = [
    # The embedding is the first layer; its integer input never requires grad.
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
]

# Leaf modules whose per-sample gradients Opacus computes with a registered sampler.
_SUPPORTED = (nn.Linear, nn.Embedding, nn.Conv1d, nn.LayerNorm, Bias)


def reference_per_sample_grads(
    model: CTRModel, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-example gradients of the BCE loss by ``vmap(grad(...))``."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logit = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.binary_cross_entropy_with_logits(logit, yi.unsqueeze(0))

    out: dict[str, torch.Tensor] = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return out


def reference_clipped_mean(
    per_sample: dict[str, torch.Tensor], max_grad_norm: float
) -> dict[str, torch.Tensor]:
    """Opacus' flat clipping: scale each example's whole gradient to norm <= C, average."""
    flat = torch.cat([g.flatten(1) for g in per_sample.values()], dim=1)
    norms = flat.norm(dim=1)
    coef = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    n = flat.shape[0]
    return {k: torch.einsum("n,n...->...", coef, g) / n for k, g in per_sample.items()}


def test_validator_finds_nothing(model_name: str, multi_schema: Schema) -> None:
    model = make_model(model_name, multi_schema)
    assert ModuleValidator.validate(model, strict=True) == []
    assert GradSampleModule.validate(model, strict=True) == []


def test_every_trainable_leaf_has_a_registered_sampler(
    model_name: str, multi_schema: Schema, small_model: Callable[..., CTRModel]
) -> None:
    """No functorch fallback: parameters live only on leaf modules Opacus knows."""
    model = small_model(model_name, multi_schema)
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        assert isinstance(module, _SUPPORTED), f"{model_name}: {name} is {type(module)}"
        assert type(module) in GradSampleModule.GRAD_SAMPLERS, name
    assert Bias in GradSampleModuleFastGradientClipping.NORM_SAMPLERS


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.sampled_from(["lr", "dnn", "deepfm", "widedeep", "dcnv2", "xdeepfm"]),
    batch_size=st.integers(1, 6),
    embedding_dim=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_opacus_per_sample_grads_match_reference(
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    small_model: Callable[..., CTRModel],
    name: str,
    batch_size: int,
    embedding_dim: int,
    seed: int,
) -> None:
    model = small_model(name, multi_schema, seed=seed, embedding_dim=embedding_dim)
    x, y = random_batch(multi_schema, batch_size, seed=seed)
    expected = reference_per_sample_grads(model, x, y)
    gsm = GradSampleModule(model, loss_reduction="sum")
    nn.functional.binary_cross_entropy_with_logits(gsm(x), y, reduction="sum").backward()
    for k, p in model.named_parameters():
        assert p.grad_sample is not None, k
        torch.testing.assert_close(p.grad_sample, expected[k], atol=1e-6, rtol=1e-4, msg=k)


@pytest.mark.parametrize("name", ["lr", "dnn", "deepfm"])
def test_per_sample_grads_match_a_python_loop(
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    small_model: Callable[..., CTRModel],
    name: str,
) -> None:
    """Second, independent reference for the three device models: one backward per row."""
    model = small_model(name, multi_schema, seed=3)
    x, y = random_batch(multi_schema, 5, seed=3)
    loop: dict[str, list[torch.Tensor]] = {k: [] for k, _ in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            assert p.grad is not None
            loop[k].append(p.grad.clone())
    model.zero_grad()
    gsm = GradSampleModule(model, loss_reduction="sum")
    nn.functional.binary_cross_entropy_with_logits(gsm(x), y, reduction="sum").backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad_sample, torch.stack(loop[k]), atol=1e-6, rtol=1e-4)


def _one_private_step(
    model: CTRModel,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: str,
    noise_multiplier: float,
    max_grad_norm: float,
) -> nn.Module:
    """One DP-SGD step (SGD, lr=1) over the whole batch; returns the wrapped module."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    engine = PrivacyEngine()
    criterion: Callable[..., torch.Tensor] = nn.BCEWithLogitsLoss()
    common = {
        "optimizer": optimizer,
        "data_loader": loader,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "poisson_sampling": False,
        "noise_generator": torch.Generator().manual_seed(0),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "ghost":
            module, optimizer, criterion, loader = engine.make_private(
                module=model, criterion=criterion, grad_sample_mode="ghost", **common
            )
        else:
            module, optimizer, loader = engine.make_private(
                module=model, grad_sample_mode="hooks", **common
            )
    for xb, yb in loader:
        optimizer.zero_grad()
        criterion(module(xb), yb).backward()
        optimizer.step()
    assert engine.accountant.history, "the accountant saw no step"
    return module


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_private_step_changes_every_parameter(
    model_name: str,
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    mode: str,
) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=8, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = random_batch(multi_schema, 16)
    _one_private_step(model, x, y, mode=mode, noise_multiplier=1.0, max_grad_norm=1.0)
    for k, p in model.named_parameters():
        assert torch.isfinite(p).all(), k
        assert not torch.equal(p.detach(), before[k]), f"{model_name}/{mode}: {k} unchanged"


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_noiseless_private_step_is_the_clipped_mean_gradient(
    model_name: str,
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    small_model: Callable[..., CTRModel],
    mode: str,
) -> None:
    """With σ = 0 and lr = 1, the update must equal −mean_i clip_C(g_i), whatever the mode.

    C is small enough that every example is clipped, so a wrong per-sample norm
    (e.g. a missed parameter in ghost clipping) changes the result.
    """
    model = small_model(model_name, multi_schema, seed=4, embedding_dim=3)
    x, y = random_batch(multi_schema, 8, seed=4)
    per_sample = reference_per_sample_grads(model, x, y)
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
    c = float(norms.min()) / 2
    expected = reference_clipped_mean(per_sample, c)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    module = _one_private_step(model, x, y, mode=mode, noise_multiplier=0.0, max_grad_norm=c)
    for k, p in model.named_parameters():
        torch.testing.assert_close(before[k] - p.detach(), expected[k], atol=1e-6, rtol=1e-4)
    if mode == "ghost":
        assert isinstance(module, GradSampleModuleFastGradientClipping)
        torch.testing.assert_close(module.per_sample_gradient_norms, norms, rtol=1e-4, atol=1e-6)


def test_flat_layout_is_unchanged_by_opacus_wrapping(
    model_name: str, multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=4, seed=0)
    slices = flat_parameter_slices(model)
    x, y = random_batch(multi_schema, 4)
    module = _one_private_step(model, x, y, mode="ghost", noise_multiplier=0.5, max_grad_norm=1.0)
    assert flat_parameter_slices(module) == slices
    assert torch.equal(flatten_parameters(module), flatten_parameters(model))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("dnn", {"layer_norm": True}),
        ("deepfm", {"layer_norm": True}),
        ("dcnv2", {"low_rank": 2, "num_experts": 2, "structure": "stacked"}),
        ("dcnv2", {"structure": "crossnet_only", "hidden_units": ()}),
    ],
)
def test_noiseless_private_step_for_variants(
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    small_model: Callable[..., CTRModel],
    name: str,
    overrides: dict[str, object],
    mode: str,
) -> None:
    """LayerNorm (no ghost norm sampler in Opacus) and the DCN-Mix experts, both modes."""
    model = small_model(name, multi_schema, seed=5, embedding_dim=3, **overrides)
    x, y = random_batch(multi_schema, 8, seed=5)
    per_sample = reference_per_sample_grads(model, x, y)
    expected = reference_clipped_mean(per_sample, 0.01)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    _one_private_step(model, x, y, mode=mode, noise_multiplier=0.0, max_grad_norm=0.01)
    for k, p in model.named_parameters():
        torch.testing.assert_close(before[k] - p.detach(), expected[k], atol=1e-6, rtol=1e-4)
