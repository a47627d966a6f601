"""Confidence intervals, ROC summaries and the ε lower bounds against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from attacks.stats import (
    clopper_pearson,
    epsilon_lower_bound,
    mean_estimate,
    one_run_epsilon_ceiling,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    roc_summary,
)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (57, 200)])
def test_clopper_pearson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    e = clopper_pearson(k, n)
    assert e.value == pytest.approx(k / n)
    assert e.low == pytest.approx(ci.low, abs=1e-9)
    assert e.high == pytest.approx(ci.high, abs=1e-9)


def test_clopper_pearson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 3, confidence=1.0)


def test_mean_estimate_covers_the_mean_and_drops_nan():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    e = mean_estimate([*x, float("nan")])
    assert e.n == 400 and e.low < 1.0 < e.high and e.low < e.value < e.high


def test_roc_summary_perfect_and_chance():
    y = np.r_[np.ones(500), np.zeros(500)].astype(int)
    perfect = roc_summary(np.r_[np.ones(500), np.zeros(500)] + np.linspace(0, 0.1, 1000), y)
    assert perfect.auc.value == 1.0
    assert perfect.tpr_at_fpr[0.001].value == 1.0
    rng = np.random.default_rng(1)
    chance = roc_summary(rng.random(1000), y)
    assert chance.auc.low < 0.5 < chance.auc.high
    assert chance.tpr_at_fpr[0.01].value < 0.05


def test_roc_summary_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_summary([0.1, 0.2], [1, 1])


def test_epsilon_lower_bound_known_answer_and_monotone():
    # perfect separation on 500 + 500 trials: FPR⁺ = FNR⁺ = 1 - 0.025^(1/500)
    fpr_hi = 1 - 0.025 ** (1 / 500)
    expected = math.log((1 - 1e-5 - fpr_hi) / fpr_hi)  # FNR⁺ = FPR⁺ here
    got = epsilon_lower_bound(
        true_positives=500, false_negatives=0, false_positives=0, true_negatives=500, delta=1e-5
    )
    assert got == pytest.approx(expected, rel=1e-6)
    worse = epsilon_lower_bound(
        true_positives=400, false_negatives=100, false_positives=20, true_negatives=480, delta=1e-5
    )
    assert 0 < worse < got
    assert (
        epsilon_lower_bound(
            true_positives=250,
            false_negatives=250,
            false_positives=250,
            true_negatives=250,
            delta=1e-5,
        )
        == 0.0
    )


def test_one_run_ceilings_are_the_known_values():
    # the ceilings the issue quotes (95 %, δ = 1e-5): ≈ 5.8 for 1,000 and ≈ 7.8 for 10,000
    assert one_run_epsilon_ceiling(canaries=1000, delta=1e-5) == pytest.approx(5.78, abs=0.01)
    assert one_run_epsilon_ceiling(canaries=10_000, delta=1e-5) == pytest.approx(7.83, abs=0.01)
    assert one_run_epsilon_ceiling(canaries=1000) == pytest.approx(5.81, abs=0.01)


def test_one_run_bound_is_the_largest_rejected_epsilon():
    eps = one_run_epsilon_lower_bound(canaries=1000, guesses=200, correct=180, delta=1e-5)
    assert eps > 0
    assert (
        one_run_p_value(canaries=1000, guesses=200, correct=180, epsilon=eps * 0.99, delta=1e-5)
        < 0.05
    )
    assert (
        one_run_p_value(canaries=1000, guesses=200, correct=180, epsilon=eps * 1.01, delta=1e-5)
        >= 0.05
    )
    # chance-level guessing certifies nothing
    assert one_run_epsilon_lower_bound(canaries=1000, guesses=200, correct=100) == 0.0
