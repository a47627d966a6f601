"""Membership inference on a small overfit model with known members."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.membership import LiRAAttack, LossThresholdAttack, ReferenceAttack, membership_game
from attacks.training import Recipe, train_from
from secrelay.models import flatten_parameters


@pytest.fixture(scope="module")
def overfit(small_data, layout):
    """A DNN trained 30 epochs on 100 known members; 100 other rows are non-members."""
    perm = np.random.default_rng(0).permutation(len(small_data))
    members, non = small_data.subset(perm[:100]), small_data.subset(perm[100:200])
    start = flatten_parameters(layout.build(seed=0)).double().numpy()
    recipe = Recipe(epochs=30, batch_size=16, lr=0.01)
    target = train_from(layout, start, members, recipe, seed=1)
    rows, labels = membership_game(members, non)
    return start, recipe, target, rows, labels


def test_loss_attack_finds_members_of_an_overfit_model(layout, overfit):
    start, _, target, rows, labels = overfit
    r = LossThresholdAttack().run(layout, target, rows, labels)
    assert r.summary.auc.low > 0.6  # well above 0.5, with its interval
    assert r.summary.members == 100 and r.summary.non_members == 100
    ref = ReferenceAttack(start).run(layout, target, rows, labels)
    assert ref.summary.auc.low > 0.6


def test_lira_beats_chance_and_reports_low_fpr_tprs(layout, overfit):
    start, recipe, target, rows, labels = overfit
    lira = LiRAAttack(LiRAAttack.local_trainer(layout, start, recipe), n_shadows=6, seed=0)
    r = lira.run(layout, target, rows, labels)
    assert r.summary.auc.low > 0.65
    assert set(r.summary.tpr_at_fpr) == {0.001, 0.01}
    assert r.summary.tpr_at_fpr[0.01].value > 0.01  # above what chance gives at 1 % FPR
    d = r.as_dict()
    assert d["auc"]["ci_low"] <= d["auc"]["value"] <= d["auc"]["ci_high"]


def test_no_members_means_chance(layout, overfit, small_data):
    """Control: two disjoint sets of non-members are told apart no better than chance."""
    _, _, target, _, _ = overfit
    perm = np.random.default_rng(0).permutation(len(small_data))
    a, b = small_data.subset(perm[200:300]), small_data.subset(perm[300:400])
    rows, labels = membership_game(a, b)
    r = LossThresholdAttack().run(layout, target, rows, labels)
    assert abs(r.summary.auc.value - 0.5) < 0.1


def test_lira_needs_two_shadows(layout, overfit):
    start, recipe, *_ = overfit
    with pytest.raises(ValueError, match="n_shadows"):
        LiRAAttack(LiRAAttack.local_trainer(layout, start, recipe), n_shadows=1)
