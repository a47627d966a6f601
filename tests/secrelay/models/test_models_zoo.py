"""Contract tests every registered CTR model must pass, plus the registry."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import secrelay.models as models
from protocols.errors import InvalidParameterError
from secrelay.data.schema import Schema
from secrelay.models import MODEL_REGISTRY, CTRModel, make_model, register_model

Batch = tuple[torch.Tensor, torch.Tensor]


def test_import_registers_all_six(all_models: tuple[str, ...]) -> None:
    assert set(all_models) <= set(MODEL_REGISTRY)
    for name in all_models:
        assert MODEL_REGISTRY[name].name == name  # type: ignore[attr-defined]


# --- forward / backward contract ----------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7])
def test_forward_shape_and_finite(
    model_name: str,
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    batch_size: int,
) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=16, seed=0)
    x, _ = random_batch(multi_schema, batch_size)
    logits = model(x)
    assert logits.shape == (batch_size,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    p = model.predict_proba(x)
    assert p.shape == (batch_size,) and ((p > 0) & (p < 1)).all()


def test_default_construction_on_single_valued_schema(
    model_name: str, single_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    model = make_model(model_name, single_schema)
    x, _ = random_batch(single_schema, 5)
    assert model(x).shape == (5,)


def test_backward_reaches_every_parameter(
    model_name: str, multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=8, seed=1)
    x, y = random_batch(multi_schema, 16, seed=1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{model_name}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{model_name}: zero gradient for {name}"


def test_user_and_item_embeddings(
    model_name: str, multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=16, seed=0)
    x, _ = random_batch(multi_schema, 6)
    dim = model.embedding_dim
    assert dim == (1 if model_name == "lr" else 16)
    assert model.user_embeddings(x).shape == (6, 2 * dim)  # user_id, age
    assert model.item_embeddings(x).shape == (6, 2 * dim)  # item_id, genres
    # They are the rows of the model's own embedding table.
    emb = model.embedding(x)
    torch.testing.assert_close(model.user_embeddings(x), emb[:, [0, 1]].flatten(1))


def test_lr_user_embeddings_are_its_first_order_weights(
    multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    model = make_model("lr", multi_schema, embedding_dim=16, seed=0)
    x, _ = random_batch(multi_schema, 4)
    # logit = bias + sum of the per-field first-order weights, the same table the
    # user/item/context embeddings read from.
    per_field = model.embedding(x).squeeze(-1)
    bias = dict(model.named_parameters())["bias.bias"]
    torch.testing.assert_close(model(x), per_field.sum(1) + bias)
    torch.testing.assert_close(model.user_embeddings(x), per_field[:, :2])


def test_multi_valued_field_is_order_invariant_mean(
    model_name: str, multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    model = make_model(model_name, multi_schema, embedding_dim=8, seed=2)
    x, _ = random_batch(multi_schema, 3)
    g = multi_schema.column_slice("genres")
    a = x.clone()
    a[:, g] = torch.tensor([[1, 2, 0], [3, 0, 0], [0, 0, 0]])
    b = x.clone()  # same sets in another order / with duplicates: same mean
    b[:, g] = torch.tensor([[0, 2, 1], [3, 3, 0], [0, 0, 0]])
    c = x.clone()  # a different set
    c[:, g] = torch.tensor([[4, 5, 0], [1, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(model(a), model(b))
    assert not torch.allclose(model(a)[:2], model(c)[:2])


def test_deterministic_under_manual_seed(
    model_name: str, multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    x, _ = random_batch(multi_schema, 5)
    torch.manual_seed(123)
    a = make_model(model_name, multi_schema, embedding_dim=8)
    torch.manual_seed(123)
    b = make_model(model_name, multi_schema, embedding_dim=8)
    torch.manual_seed(124)
    c = make_model(model_name, multi_schema, embedding_dim=8)
    assert torch.equal(models.flatten_parameters(a), models.flatten_parameters(b))
    assert torch.equal(a(x), b(x))
    assert not torch.equal(models.flatten_parameters(a), models.flatten_parameters(c))


def test_seed_argument_is_reproducible_and_leaves_global_rng_alone(
    model_name: str, multi_schema: Schema
) -> None:
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = make_model(model_name, multi_schema, embedding_dim=4, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = make_model(model_name, multi_schema, embedding_dim=4, seed=5)
    assert torch.equal(models.flatten_parameters(a), models.flatten_parameters(b))


def test_dropout_and_layer_norm_options(
    multi_schema: Schema, random_batch: Callable[..., Batch]
) -> None:
    x, _ = random_batch(multi_schema, 8)
    for name in ("dnn", "widedeep", "deepfm", "dcnv2", "xdeepfm"):
        model = make_model(name, multi_schema, embedding_dim=4, dropout=0.5, layer_norm=True)
        kinds = {type(m) for m in model.modules()}
        assert torch.nn.LayerNorm in kinds and torch.nn.Dropout in kinds
        model.eval()
        assert torch.equal(model(x), model(x))  # dropout off in eval mode
        model.train()
        assert model(x).shape == (8,)


# --- DCN-V2 variants ----------------------------------------------------------------


@pytest.mark.parametrize("structure", ["parallel", "stacked", "crossnet_only"])
@pytest.mark.parametrize("low_rank", [None, 3])
def test_dcnv2_variants(
    multi_schema: Schema,
    random_batch: Callable[..., Batch],
    structure: str,
    low_rank: int | None,
) -> None:
    model = make_model(
        "dcnv2",
        multi_schema,
        embedding_dim=4,
        structure=structure,
        low_rank=low_rank,
        num_experts=2,
        hidden_units=(8,),
        seed=0,
    )
    x, y = random_batch(multi_schema, 6)
    out = model(x)
    assert out.shape == (6,)
    torch.nn.functional.binary_cross_entropy_with_logits(out, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    d = multi_schema.n_fields * 4
    fc_in = {"parallel": d + 8, "stacked": 8, "crossnet_only": d}[structure]
    assert model.fc.in_features == fc_in  # type: ignore[union-attr]


def test_dcnv2_full_rank_cross_layer_formula(multi_schema: Schema) -> None:
    from secrelay.models.layers import CrossNetV2

    torch.manual_seed(0)
    net = CrossNetV2(5, 1)
    x0 = torch.randn(3, 5)
    lin = net.layers[0]
    assert isinstance(lin, torch.nn.Linear)
    expected = x0 * (x0 @ lin.weight.T + lin.bias) + x0
    torch.testing.assert_close(net(x0), expected)


def test_cin_matches_paper_formula() -> None:
    """CIN layer k: X^k_h = Σ_{i,j} W^{k,h}_{ij} (X^{k-1}_i ∘ X^0_j), sum-pooled."""
    from secrelay.models.layers import CompressedInteractionNet

    torch.manual_seed(0)
    m, d = 3, 4
    cin = CompressedInteractionNet(m, (2, 2))
    x0 = torch.randn(2, m, d)
    xk = x0
    pooled = []
    for conv in cin.convs:
        assert isinstance(conv, torch.nn.Conv1d)
        w = conv.weight.squeeze(-1).view(conv.out_channels, xk.shape[1], m)
        assert conv.bias is not None
        xk = torch.einsum("hij,bid,bjd->bhd", w, xk, x0) + conv.bias[None, :, None]
        pooled.append(xk.sum(-1))
    expected = cin.fc(torch.cat(pooled, -1)).squeeze(-1)
    torch.testing.assert_close(cin(x0), expected)


def test_fm_interaction_matches_pairwise_sum() -> None:
    from secrelay.models.layers import fm_interaction

    torch.manual_seed(0)
    e = torch.randn(4, 5, 3)
    pairwise = sum((e[:, i] * e[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(fm_interaction(e), pairwise)


# --- constructor validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("dnn", {"hidden_units": (8, 0)}, "hidden_units"),
        ("dnn", {"hidden_units": "128"}, "hidden_units"),
        ("dnn", {"dropout": 1.0}, "dropout"),
        ("deepfm", {"dropout": -0.1}, "dropout"),
        ("dnn", {"embedding_dim": 0}, "embedding_dim"),
        ("lr", {"embedding_dim": 0}, "embedding_dim"),
        ("dcnv2", {"structure": "serial"}, "structure"),
        ("dcnv2", {"structure": "stacked", "hidden_units": ()}, "hidden_units"),
        ("dcnv2", {"num_cross_layers": 0}, "num_cross_layers"),
        ("dcnv2", {"low_rank": 0}, "low_rank"),
        ("dcnv2", {"low_rank": 4, "num_experts": 0}, "num_experts"),
        ("xdeepfm", {"cin_layer_sizes": ()}, "cin_layer_sizes"),
        ("xdeepfm", {"cin_layer_sizes": (4, -1)}, "cin_layer_sizes"),
    ],
)
def test_invalid_arguments_are_refused(
    multi_schema: Schema, name: str, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        make_model(name, multi_schema, **kwargs)


def test_dcnv2_crossnet_only_needs_no_dnn(multi_schema: Schema) -> None:
    model = make_model("dcnv2", multi_schema, structure="crossnet_only", hidden_units=())
    assert model.dnn is None  # type: ignore[union-attr]


# --- registry ---------------------------------------------------------------------------


def test_registry_refuses_duplicates(model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODEL_REGISTRY, model_name, MODEL_REGISTRY[model_name])
    with pytest.raises(InvalidParameterError, match=rf"{model_name!r} is already registered"):

        @register_model(model_name)
        class Duplicate(models.DNN):
            pass


def test_registry_force_replaces(monkeypatch: pytest.MonkeyPatch, multi_schema: Schema) -> None:
    monkeypatch.setitem(MODEL_REGISTRY, "dnn", MODEL_REGISTRY["dnn"])

    @register_model("dnn", force=True)
    class Replacement(models.DNN):
        pass

    assert isinstance(make_model("dnn", multi_schema), Replacement)


def test_registry_refuses_unknown_names(multi_schema: Schema) -> None:
    with pytest.raises(InvalidParameterError, match=r"unknown model 'fm'.*'deepfm'"):
        make_model("fm", multi_schema)


def test_registry_lookup_is_case_insensitive_and_refuses_upper_case_names(
    multi_schema: Schema,
) -> None:
    assert isinstance(make_model("DeepFM", multi_schema), models.DeepFM)
    with pytest.raises(InvalidParameterError, match="lower-case"):
        register_model("MyModel")


def test_make_model_refuses_bad_seed(multi_schema: Schema) -> None:
    with pytest.raises(InvalidParameterError, match="seed"):
        make_model("dnn", multi_schema, seed=-1)


def test_every_model_is_a_ctr_model(model_name: str, multi_schema: Schema) -> None:
    model = make_model(model_name, multi_schema)
    assert isinstance(model, CTRModel)
    assert model.schema is multi_schema
