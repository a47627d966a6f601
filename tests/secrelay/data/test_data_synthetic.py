"""The embedded synthetic generator: determinism, structure and a learnable signal."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import InvalidParameterError
from secrelay.data import (
    device_train_test_split,
    make_synthetic,
    make_synthetic_with_latents,
    regulation_split,
)
from secrelay.metrics import auc, gauc

SMALL = dict(n_users=200, samples_per_user=50)


def test_same_seed_same_arrays_different_seed_different() -> None:
    a = make_synthetic(**SMALL, seed=3)
    b = make_synthetic(**SMALL, seed=3)
    c = make_synthetic(**SMALL, seed=4)
    for name in ("x", "y", "user", "timestamp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.schema == b.schema
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.y, c.y)


def test_global_rng_is_not_used() -> None:
    np.random.seed(123)
    before = np.random.get_state(legacy=False)
    make_synthetic(**SMALL, seed=0)
    after = np.random.get_state(legacy=False)
    assert before["state"]["key"].tolist() == after["state"]["key"].tolist()
    assert before["state"]["pos"] == after["state"]["pos"]


def test_structure_and_fields() -> None:
    s = make_synthetic_with_latents(n_users=50, samples_per_user=20, n_items=30, seed=1)
    ds, lat = s.dataset, s.latents
    assert len(ds) == 1000 and ds.n_users == 50
    assert ds.schema.names == (
        "user_id",
        "age",
        "gender",
        "region",
        "item_id",
        "category",
        "tags",
        "daypart",
    )
    roles = {f.name: f.role for f in ds.schema.fields}
    assert roles["daypart"] == "context" and roles["category"] == "item"
    assert ds.schema["tags"].max_len == 3
    np.testing.assert_array_equal(ds.user, ds.column("user_id"))
    np.testing.assert_array_equal(np.bincount(ds.user)[1:], np.full(50, 20))
    assert (np.diff(ds.timestamp) >= 0).all()
    # the observed category is the latent one, and the first tag follows it
    np.testing.assert_array_equal(
        ds.column("category"), lat.item_category[ds.column("item_id") - 1] + 1
    )
    assert (ds.column("tags")[:, 0] > 0).all()
    # user fields are a function of the user
    for name in ("age", "gender", "region"):
        per_user: dict[int, int] = {}
        for u, v in zip(ds.user.tolist(), ds.column(name).tolist()):
            assert per_user.setdefault(u, v) == v


def test_bayes_optimal_score_is_learnable_signal() -> None:
    s = make_synthetic_with_latents(seed=0)
    ds = s.dataset
    p = s.latents.click_probability(ds)
    g = gauc(ds.y, p, ds.user)
    assert g.value >= 0.65, g
    assert g.users_skipped < 0.05 * ds.n_users
    # per-user CTR heterogeneity: a per-user CTR lookup has gAUC 0.5 but a pooled AUC > 0.5
    _, inv = np.unique(ds.user, return_inverse=True)
    ctr = np.bincount(inv, ds.y) / np.bincount(inv)
    assert ctr.std() > 0.1
    assert auc(ds.y, ctr[inv]) > 0.6
    assert gauc(ds.y, ctr[inv], ds.user).value == pytest.approx(0.5)


def test_bayes_score_survives_splits_and_drift_matters() -> None:
    s = make_synthetic_with_latents(**SMALL, drift=1.0, seed=2)
    lat = s.latents
    reg = regulation_split(s.dataset, mode="random", alpha=0.05, seed=0)
    test = device_train_test_split(reg.device).test
    p_true = lat.click_probability(test)  # uses the identity, not the shuffled user_id column
    assert gauc(test.y, p_true, test.user).value >= 0.65
    # scoring post-drift rows with the pre-drift preferences loses signal
    assert (test.timestamp >= lat.drift_time).all()
    stale = type(lat)(**{**lat.__dict__, "preference_after": lat.preference_before})
    p_stale = stale.click_probability(test)
    assert gauc(test.y, p_stale, test.user).value < gauc(test.y, p_true, test.user).value - 0.03


def test_drift_parameter() -> None:
    same = make_synthetic_with_latents(**SMALL, drift=0.0).latents
    np.testing.assert_allclose(same.preference_after, same.preference_before)
    full = make_synthetic_with_latents(**SMALL, drift=1.0).latents
    corr = np.corrcoef(full.preference_after.ravel(), full.preference_before.ravel())[0, 1]
    assert abs(corr) < 0.9
    half = make_synthetic_with_latents(**SMALL, drift_at=0.5).latents
    ds = make_synthetic(**SMALL, drift_at=0.5)
    frac_after = float((ds.timestamp >= half.drift_time).mean())
    assert frac_after == pytest.approx(0.5, abs=0.03)


def test_region_reveals_the_group() -> None:
    s = make_synthetic_with_latents(n_users=2000, samples_per_user=1, seed=5)
    ds, lat = s.dataset, s.latents
    region = ds.column("region")
    group = lat.user_group[ds.user - 1]
    # majority group per region predicts a user's group far above chance (1 / n_groups)
    hits = 0
    for r in np.unique(region):
        hits += np.bincount(group[region == r]).max()
    assert hits / len(ds) > 0.5


@pytest.mark.parametrize(
    ("kw", "arg"),
    [
        ({"n_users": 0}, "n_users"),
        ({"samples_per_user": 1.5}, "samples_per_user"),
        ({"drift": 1.5}, "drift"),
        ({"drift_at": -0.1}, "drift_at"),
        ({"user_bias_scale": float("nan")}, "user_bias_scale"),
        ({"seed": -1}, "seed"),
        ({"n_groups": True}, "n_groups"),
    ],
)
def test_invalid_parameters(kw: dict[str, object], arg: str) -> None:
    with pytest.raises(InvalidParameterError, match=f"`{arg}`"):
        make_synthetic(**kw)  # type: ignore[arg-type]


def test_latent_logit_rejects_unknown_codes() -> None:
    lat = make_synthetic_with_latents(n_users=5, samples_per_user=2, n_items=4).latents
    with pytest.raises(InvalidParameterError, match="`item` codes"):
        lat.logit(np.array([1]), np.array([5]), np.array([0]))
