"""The synthetic generator's ``exposure``: users see what their group likes; at 0 the
data are those of earlier versions, byte for byte."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from protocols.errors import InvalidParameterError
from secrelay.data import make_synthetic
from secrelay.data.synthetic import make_synthetic_with_latents

# sha256 of x, y and timestamps of make_synthetic(n_users=50, samples_per_user=20, seed=3),
# computed before `exposure` existed: the default must not change anyone's data.
DIGEST_BEFORE_EXPOSURE = "0baa629278f6e2fb768fd910e7e0fb7e21fd2f41d2c85f3ff12e4c6d98615bda"


def _digest(ds) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(ds.x.tobytes() + ds.y.tobytes() + ds.timestamp.tobytes()).hexdigest()


def test_no_exposure_keeps_earlier_data_byte_for_byte() -> None:
    assert _digest(make_synthetic(n_users=50, samples_per_user=20, seed=3)) == (
        DIGEST_BEFORE_EXPOSURE
    )
    assert _digest(make_synthetic(n_users=50, samples_per_user=20, seed=3, exposure=0.0)) == (
        DIGEST_BEFORE_EXPOSURE
    )


def _liked(exposure: float) -> float:
    """Mean group preference P_t[g_u, c_i] of the items users interacted with."""
    data = make_synthetic_with_latents(
        n_users=300, samples_per_user=30, n_items=200, exposure=exposure, seed=1
    )
    lat, ds = data.latents, data.dataset
    g = lat.user_group[ds.user - 1]
    c = lat.item_category[ds.column("item_id") - 1]
    late = ds.timestamp >= lat.drift_time
    pref = np.where(late, lat.preference_after[g, c], lat.preference_before[g, c])
    return float(pref.mean())


def test_exposure_makes_users_see_what_their_group_likes() -> None:
    none, some, strong = _liked(0.0), _liked(1.0), _liked(2.0)
    # at 0 the items do not depend on the user; the more exposure, the more users see
    # the categories their group likes (this seed: -0.16, 0.41, 0.75)
    assert some > none + 0.3 and strong > some + 0.2


def test_exposure_is_deterministic_by_seed() -> None:
    a = make_synthetic(n_users=30, samples_per_user=10, exposure=1.0, seed=2)
    b = make_synthetic(n_users=30, samples_per_user=10, exposure=1.0, seed=2)
    assert _digest(a) == _digest(b)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "x"])
def test_bad_exposure_is_one_clear_error(bad: object) -> None:
    with pytest.raises(InvalidParameterError, match="exposure"):
        make_synthetic(n_users=5, samples_per_user=4, exposure=bad)  # type: ignore[arg-type]
