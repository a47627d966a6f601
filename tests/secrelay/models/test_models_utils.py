"""Flat-parameter plumbing used by federated and secure aggregation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidParameterError
from secrelay.data.schema import Field, Schema
from secrelay.models import (
    CTRModel,
    count_parameters,
    flat_parameter_slices,
    flatten_parameters,
    load_flat_parameters,
    make_model,
    numpy_dict_to_parameters,
    parameters_to_numpy_dict,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def test_flat_layout_follows_state_dict_order(model_name: str, multi_schema: Schema) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=4, seed=0)
    state = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    flat = flatten_parameters(model)
    assert flat.ndim == 1 and flat.numel() == count_parameters(model)
    assert torch.equal(flat, torch.cat([v.reshape(-1) for _, v in state]))
    slices = flat_parameter_slices(model)
    assert list(slices) == [k for k, _ in state]
    for k, v in state:
        assert torch.equal(flat[slices[k]], v.reshape(-1))
    # the integer embedding offsets are a (non-persistent) buffer, not part of the layout
    assert not any("column_offsets" in k for k in slices)


def test_flatten_returns_a_detached_copy(multi_schema: Schema) -> None:
    model = make_model("dnn", multi_schema, embedding_dim=4, seed=0)
    flat = flatten_parameters(model)
    assert not flat.requires_grad
    flat.add_(1.0)
    assert not torch.equal(flat, flatten_parameters(model))


def test_round_trip_between_two_models(
    model_name: str, multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    a = make_model(model_name, multi_schema, embedding_dim=4, seed=1)
    b = make_model(model_name, multi_schema, embedding_dim=4, seed=2)
    x, _ = random_batch(multi_schema, 5)
    assert not torch.equal(a(x), b(x))
    load_flat_parameters(b, flatten_parameters(a))
    assert torch.equal(flatten_parameters(a), flatten_parameters(b))
    assert torch.equal(a(x), b(x))
    # numpy dict route
    c = make_model(model_name, multi_schema, embedding_dim=4, seed=3)
    numpy_dict_to_parameters(c, parameters_to_numpy_dict(a))
    assert torch.equal(a(x), c(x))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_load_then_flatten_is_identity(seed: int, scale: float) -> None:
    schema = Schema(
        (Field("u", "user", 4), Field("i", "item", 6)),
        user_id_field="u",
    )
    model = make_model("deepfm", schema, embedding_dim=2, hidden_units=(3,), seed=0)
    g = torch.Generator().manual_seed(seed)
    vec = torch.randn(count_parameters(model), generator=g) * scale
    load_flat_parameters(model, vec)
    assert torch.equal(flatten_parameters(model), vec)


def test_load_accepts_numpy(multi_schema: Schema) -> None:
    model = make_model("lr", multi_schema, seed=0)
    vec = np.arange(count_parameters(model), dtype=np.float32)
    load_flat_parameters(model, vec)
    np.testing.assert_array_equal(flatten_parameters(model).numpy(), vec)


@pytest.mark.parametrize(
    ("make_vec", "match"),
    [
        (lambda n: torch.zeros(n - 1), "1-D vector of"),
        (lambda n: torch.zeros(n + 1), "1-D vector of"),
        (lambda n: torch.zeros(1, n), "1-D vector of"),
        (lambda n: torch.zeros(n, dtype=torch.long), "floating-point"),
        (lambda n: torch.cat([torch.zeros(n - 1), torch.tensor([float("nan")])]), "NaN"),
        (lambda n: torch.cat([torch.tensor([float("inf")]), torch.zeros(n - 1)]), "infinite"),
    ],
)
def test_load_rejects_malformed_vectors_without_writing(
    multi_schema: Schema, make_vec: Callable[[int], torch.Tensor], match: str
) -> None:
    model = make_model("dnn", multi_schema, embedding_dim=4, seed=0)
    before = flatten_parameters(model)
    with pytest.raises(InvalidParameterError, match=match):
        load_flat_parameters(model, make_vec(count_parameters(model)))
    assert torch.equal(flatten_parameters(model), before)


def test_numpy_dict_rejects_every_problem_at_once_without_writing(multi_schema: Schema) -> None:
    model = make_model("deepfm", multi_schema, embedding_dim=4, seed=0)
    before = flatten_parameters(model)
    arrays = parameters_to_numpy_dict(model)
    names = list(arrays)
    del arrays[names[0]]
    arrays["extra.weight"] = np.zeros(3, dtype=np.float32)
    arrays[names[1]] = np.zeros((1, 1), dtype=np.float32)
    arrays[names[2]] = np.full_like(arrays[names[2]], np.nan)
    with pytest.raises(InvalidParameterError) as info:
        numpy_dict_to_parameters(model, arrays)
    msg = str(info.value)
    assert names[0] in msg and "extra.weight" in msg and "shape" in msg and "NaN" in msg
    assert "unchanged" in msg
    assert torch.equal(flatten_parameters(model), before)


def test_numpy_dict_is_a_copy(multi_schema: Schema) -> None:
    model = make_model("lr", multi_schema, seed=0)
    arrays = parameters_to_numpy_dict(model)
    before = flatten_parameters(model)
    for a in arrays.values():
        a += 1.0
    assert torch.equal(flatten_parameters(model), before)


def test_count_parameters(multi_schema: Schema, small_model: Callable[..., CTRModel]) -> None:
    # LR: one weight per vocabulary row (11 + 5 + 21 + 6 + 4 = 47) plus the bias.
    assert count_parameters(make_model("lr", multi_schema)) == multi_schema.total_vocab + 1
    # DNN(dim 4, hidden 8-4): table 47*4, 20->8, 8->4, 4->1.
    dnn = small_model("dnn", multi_schema)
    assert count_parameters(dnn) == 47 * 4 + (20 * 8 + 8) + (8 * 4 + 4) + (4 + 1)
    dnn.mlp.requires_grad_(False)  # type: ignore[union-attr]
    assert count_parameters(dnn, trainable_only=True) == 47 * 4
