"""LCFT: the server's estimate of a device's local CTR from its query, with known w_i."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.lcft import LocalCTRAttack, ldp_sweep
from attacks.views import ModelLayout, ServerView
from secrelay.relay.lcft import CTRQuery, query_request


def _view(layout: ModelLayout, truth: dict[int, float], query: CTRQuery, seed: int = 0):
    rng = np.random.default_rng(seed)
    queries = tuple(query_request(d, 1, w, query, generator=rng) for d, w in truth.items())
    return ServerView(layout, {}, {}, {}, {}, False, queries=queries)


@pytest.fixture(scope="module")
def truth() -> dict[int, float]:
    rng = np.random.default_rng(5)
    return {d: float(w) for d, w in enumerate(rng.beta(2, 3, size=300))}


@pytest.fixture(scope="module")
def prior_ctrs() -> np.ndarray:
    return np.random.default_rng(6).beta(2, 3, size=200)


def test_plain_query_gives_the_local_ctr_exactly(layout, truth):
    atk = LocalCTRAttack(CTRQuery(), prior=0.4)
    r = atk.run(_view(layout, truth, CTRQuery()), truth)
    assert r.mae.value == pytest.approx(0.0, abs=1e-12)
    assert r.above_median.value == 1.0
    assert r.queried == len(truth)


def test_table_download_leaves_the_prior(layout, truth):
    atk = LocalCTRAttack(None, prior=0.4)
    r = atk.run(_view(layout, {}, CTRQuery()), truth)
    assert r.queried == 0
    assert r.mae.value == pytest.approx(r.baseline_mae.value)
    assert r.above_median.value == pytest.approx(r.above_median_baseline, abs=0.02)


@pytest.mark.parametrize("mechanism", ["gaussian", "randomized_response"])
def test_ldp_query_hides_most_of_it(layout, truth, prior_ctrs, mechanism):
    """At ε = 1 the report leaves the server's error near the prior's; at ε = 8 the
    randomized response still only partly reveals w_i."""
    q = CTRQuery.plan(mechanism, epsilon=1.0, delta=1e-5)
    atk = LocalCTRAttack(q, prior=float(np.median(prior_ctrs)), prior_ctrs=prior_ctrs)
    view = _view(layout, truth, q)
    decoded = atk.run(view, truth)
    bayes = atk.run(view, truth, bayes=True)
    assert decoded.mae.low > 0.2  # the unbiased decoding is very noisy
    assert bayes.mae.value <= decoded.mae.value
    assert bayes.mae.value == pytest.approx(bayes.baseline_mae.value, abs=0.03)
    assert bayes.above_median.high < 0.75


def test_sweep_orders_by_epsilon(truth, prior_ctrs):
    rows = ldp_sweep(truth, prior=0.4, prior_ctrs=prior_ctrs, epsilons=[0.5, 8.0, 50.0])
    rr = {
        r["epsilon"]: r["above_median_accuracy"]["value"]
        for r in rows
        if r["mechanism"] == "randomized_response" and "posterior" not in r["route"]
    }
    assert rr[50.0] > rr[8.0] > rr[0.5] - 0.05
    off = next(r for r in rows if r["mechanism"] == "off")
    assert off["mae"]["value"] == 0.0


def test_bad_prior_is_refused():
    with pytest.raises(ValueError, match="prior"):
        LocalCTRAttack(None, prior=1.5)


@pytest.mark.slow
def test_real_lcft_runs_through_the_grid(tmp_path):
    """The grid's LCFT settings: the plain query leaks w_i exactly, the table download
    nothing beyond the prior (benchmarks/attack_lcft_coda_synthetic.toml, reduced)."""
    from pathlib import Path

    from attacks import attack
    from attacks.config import load_attack_config

    root = Path(__file__).resolve().parents[2]
    base, options = load_attack_config(root / "benchmarks" / "attack_lcft_coda_synthetic.toml")
    from dataclasses import replace

    options = replace(
        options,
        settings=tuple(s for s in options.settings if s.name in ("lcft_table", "lcft_query_plain")),
        attacks=("lcft",),
    )
    report = attack((base, options), tmp_path, progress=False, log=lambda s: None)
    assert report.entry("lcft_query_plain", "lcft:ctr").value.value == pytest.approx(0.0)
    assert report.entry("lcft_query_plain", "lcft:above_median").value.value == 1.0
    table = report.entry("lcft_table", "lcft:ctr")
    assert table.value.value == pytest.approx(table.details["baseline_mae"]["value"])
