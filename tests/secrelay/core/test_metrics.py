"""Metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from protocols.errors import InvalidParameterError
from secrelay.metrics import auc, evaluate_predictions, gauc, logloss


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=200))
def test_auc_matches_sklearn_with_ties(pairs):
    y = np.array([p[0] for p in pairs], dtype=float)
    s = np.array([p[1] for p in pairs], dtype=float) / 20
    if y.min() == y.max():
        with pytest.raises(InvalidParameterError, match="only one class"):
            auc(y, s)
        return
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    p = rng.random(500)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_gauc_weights_by_size_and_counts_skipped_users():
    y = np.array([1, 0, 1, 0, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.6, 0.7, 0.1, 0.2])
    g = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])  # user 2 all positive, user 3 all negative
    r = gauc(y, p, g)
    u0 = roc_auc_score([1, 0], [0.9, 0.1])
    u1 = roc_auc_score([1, 0, 1], [0.2, 0.8, 0.5])
    assert r.value == pytest.approx((2 * u0 + 3 * u1) / 5)
    assert (r.users_used, r.users_skipped) == (2, 2)


def test_per_user_ctr_lookup_has_gauc_one_half():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(50), 20)
    ctr = rng.random(50)
    y = (rng.random(g.size) < ctr[g]).astype(float)
    m = evaluate_predictions(y, ctr[g], g)
    assert m.gauc == pytest.approx(0.5)
    assert m.auc > 0.6


def test_shape_mismatch_and_bad_labels():
    with pytest.raises(InvalidParameterError, match="same length"):
        auc(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(InvalidParameterError, match="only 0 and 1"):
        logloss(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(InvalidParameterError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))
