"""Each model can fit a small separable CTR problem (a smoke test of learnability)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from secrelay.data.schema import Field, Schema
from secrelay.metrics import auc
from secrelay.models import make_model

MAX_STEPS = 300
TARGET_AUC = 0.9


def separable_problem(n: int = 512, seed: int = 0) -> tuple[Schema, torch.Tensor, torch.Tensor]:
    """Click iff the user's and the item's (and genres') hidden scores sum above the median.

    Linearly separable in the one-hot features, so even LR can reach AUC 1.
    """
    schema = Schema(
        (
            Field("user_id", "user", 31),
            Field("item_id", "item", 41),
            Field("genres", "item", 7, max_len=2),
            Field("hour", "context", 5),
        ),
        user_id_field="user_id",
    )
    rng = np.random.default_rng(seed)
    user = rng.integers(1, 31, n)
    item = rng.integers(1, 41, n)
    genres = rng.integers(0, 7, (n, 2))
    genres[:, 0] = np.maximum(genres[:, 0], 1)  # at least one genre
    hour = rng.integers(1, 5, n)
    u_score, i_score, g_score = rng.normal(size=31), rng.normal(size=41), rng.normal(size=7)
    g_score[0] = 0.0
    score = u_score[user] + i_score[item] + g_score[genres].sum(1)
    y = (score > np.median(score)).astype(np.float32)
    x = np.column_stack([user, item, genres, hour])
    return schema, torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y)


def xor_problem(n: int = 512, seed: int = 0) -> tuple[Schema, torch.Tensor, torch.Tensor]:
    """Click iff the user's hidden group differs from the item's: a pure interaction.

    No first-order model can separate it (its logit is additive in user and item).
    """
    schema = Schema(
        (Field("user_id", "user", 21), Field("item_id", "item", 21), Field("hour", "context", 5)),
        user_id_field="user_id",
    )
    rng = np.random.default_rng(seed)
    user, item, hour = rng.integers(1, 21, n), rng.integers(1, 21, n), rng.integers(1, 5, n)
    user_group, item_group = rng.integers(0, 2, 21), rng.integers(0, 2, 21)
    y = (user_group[user] ^ item_group[item]).astype(np.float32)
    x = np.column_stack([user, item, hour])
    return schema, torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y)


def train_auc(name: str, problem: tuple[Schema, torch.Tensor, torch.Tensor], steps: int) -> float:
    """Full-batch Adam; stops as soon as the training AUC reaches the target."""
    schema, x, y = problem
    model = make_model(name, schema, embedding_dim=8, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    start = auc(y.numpy(), model.predict_proba(x).numpy())
    assert start < 0.75, f"{name}: the untrained model already scores {start:.3f}"
    score = start
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()
        if step % 10 == 0:
            score = auc(y.numpy(), model.predict_proba(x).numpy())
            if score >= TARGET_AUC:
                break
    return score


@pytest.mark.parametrize("problem", [separable_problem, xor_problem])
def test_problems_are_balanced(
    problem: Callable[[], tuple[Schema, torch.Tensor, torch.Tensor]],
) -> None:
    _, _, y = problem()
    assert 0.4 < float(y.mean()) < 0.6


@pytest.mark.parametrize("name", ["lr", "dnn", "widedeep", "deepfm", "dcnv2", "xdeepfm"])
def test_fits_an_additive_problem(name: str) -> None:
    score = train_auc(name, separable_problem(), MAX_STEPS)
    assert score >= TARGET_AUC, f"{name}: training AUC {score:.3f}"


@pytest.mark.parametrize("name", ["dnn", "widedeep", "deepfm", "dcnv2", "xdeepfm"])
def test_interaction_models_fit_an_xor_problem(name: str) -> None:
    score = train_auc(name, xor_problem(), MAX_STEPS)
    assert score >= TARGET_AUC, f"{name}: training AUC {score:.3f}"


def test_lr_cannot_fit_the_xor_problem() -> None:
    """The XOR test discriminates: a first-order model stays well below the target."""
    score = train_auc("lr", xor_problem(), 100)
    assert score < 0.85
