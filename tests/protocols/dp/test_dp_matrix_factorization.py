"""Banded matrix factorization: factorization, online noise, sensitivity, accounting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from protocols.dp import (
    BandedMatrixEvent,
    BandedMatrixNoise,
    GaussianEvent,
    PRVAccountant,
    RDPAccountant,
    banded_sqrt_factorization,
    prefix_sum_matrix,
    sqrt_toeplitz_coefficients,
)
from protocols.dp.accountants import DEFAULT_RDP_ORDERS
from protocols.errors import InvalidParameterError

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp  # noqa: E402


def test_coefficients_square_to_the_prefix_sum_matrix():
    c = sqrt_toeplitz_coefficients(30)
    assert c[3] == pytest.approx(20 / 64)
    _, full = banded_sqrt_factorization(30, 30)
    np.testing.assert_allclose(full @ full, prefix_sum_matrix(30), atol=1e-12)


@pytest.mark.parametrize("bands", [1, 2, 5, 40])
def test_banded_factorization_is_exact_and_banded(bands):
    b_mat, c_mat = banded_sqrt_factorization(40, bands)
    np.testing.assert_allclose(b_mat @ c_mat, prefix_sum_matrix(40), atol=1e-9)
    i, j = np.indices(c_mat.shape)
    assert np.all(c_mat[(i - j >= bands) | (i < j)] == 0.0)
    assert np.all(c_mat.T @ c_mat >= 0.0)  # what the column-sum sensitivity needs


def test_one_band_is_dp_fedavg_without_amplification():
    b_mat, c_mat = banded_sqrt_factorization(20, 1)
    np.testing.assert_array_equal(c_mat, np.eye(20))
    np.testing.assert_array_equal(b_mat, prefix_sum_matrix(20))
    mf = BandedMatrixNoise(bands=1)
    r1, r2 = np.random.default_rng(0), np.random.default_rng(0)
    for _ in range(5):  # independent noise each round
        np.testing.assert_array_equal(mf.next_noise(r1, (4,)), r2.standard_normal(size=(4,)))
    for k in (1, 3, 10):
        z = 1.3
        event = BandedMatrixEvent(
            noise_multiplier=z, steps=20, bands=1, max_participations=k, min_separation=1
        )
        assert event.gaussian_equivalent() == GaussianEvent(noise_multiplier=z / np.sqrt(k))
        ref = dpa_rdp.RdpAccountant(list(DEFAULT_RDP_ORDERS))
        ref.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(z), k))
        mine = RDPAccountant().compose(event).get_epsilon(delta=1e-5)
        assert mine == pytest.approx(ref.get_epsilon(1e-5), rel=1e-6)


@pytest.mark.parametrize("bands", [2, 4, 8])
def test_single_participation_is_the_largest_column_norm(bands):
    _, c_mat = banded_sqrt_factorization(25, bands)
    max_col = float(np.max(np.sum(c_mat**2, axis=0)))
    mf = BandedMatrixNoise(bands=bands)
    bound = mf.sensitivity_bound(steps=25, max_participations=1, min_separation=1)
    assert bound == pytest.approx(max_col, rel=1e-12)
    assert mf.max_column_norm_squared == pytest.approx(max_col, rel=1e-12)
    for r in (1, 10, 25):
        assert mf.sensitivity_squared([r], upto=25) == pytest.approx(
            float(np.sum(c_mat[:, r - 1] ** 2)), rel=1e-12
        )
    # Against dp_accounting's Gaussian at the equivalent noise multiplier.
    z = 2.0
    event = BandedMatrixEvent(noise_multiplier=z, steps=25, bands=bands)
    ref = dpa_rdp.RdpAccountant(list(DEFAULT_RDP_ORDERS))
    ref.compose(dp_event.GaussianDpEvent(z / np.sqrt(max_col)))
    assert RDPAccountant().compose(event).get_epsilon(delta=1e-5) == pytest.approx(
        ref.get_epsilon(1e-5), rel=1e-6
    )


@pytest.mark.parametrize(("k", "sep"), [(2, 1), (2, 3), (3, 3), (3, 2)])
def test_bound_covers_every_separated_pattern(k, sep):
    steps, bands = 10, 3
    _, c_mat = banded_sqrt_factorization(steps, bands)
    mf = BandedMatrixNoise(bands=bands)
    worst = 0.0
    for n in range(1, k + 1):
        for p in itertools.combinations(range(1, steps + 1), n):
            if all(y - x >= sep for x, y in itertools.pairwise(p)):
                exact = float(np.sum((c_mat[:, [r - 1 for r in p]].sum(axis=1)) ** 2))
                assert mf.sensitivity_squared(p, upto=steps) == pytest.approx(exact)
                worst = max(worst, exact)
    bound = mf.sensitivity_bound(steps=steps, max_participations=k, min_separation=sep)
    assert bound >= worst - 1e-12
    if sep >= bands:
        assert bound == pytest.approx(worst)


def test_online_noise_is_c_inverse_z():
    steps, bands = 12, 4
    _, c_mat = banded_sqrt_factorization(steps, bands)
    mf = BandedMatrixNoise(bands=bands)
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    noise = np.stack([mf.next_noise(rng, (3,)) for _ in range(steps)])
    z = np.stack([ref.standard_normal(size=(3,)) for _ in range(steps)])
    np.testing.assert_allclose(noise, np.linalg.solve(c_mat, z), atol=1e-12)
    # The noisy prefix sums are then A x + B z.
    b_mat, _ = banded_sqrt_factorization(steps, bands)
    np.testing.assert_allclose(np.cumsum(noise, axis=0), b_mat @ z, atol=1e-10)


def test_state_dict_and_errors():
    a, b = BandedMatrixNoise(bands=3), BandedMatrixNoise(bands=3)
    rng = np.random.default_rng(1)
    for _ in range(4):
        a.next_noise(rng, (2,))
    b.load_state_dict(a.state_dict())
    r1, r2 = np.random.default_rng(2), np.random.default_rng(2)
    np.testing.assert_array_equal(a.next_noise(r1, (2,)), b.next_noise(r2, (2,)))
    with pytest.raises(InvalidParameterError, match="bands"):
        BandedMatrixNoise(bands=0)
    with pytest.raises(InvalidParameterError, match="past noises"):
        BandedMatrixNoise(bands=2).load_state_dict(a.state_dict())
    with pytest.raises(InvalidParameterError, match="repeat"):
        a.sensitivity_squared([2, 2], upto=4)
    eps = PRVAccountant().compose(BandedMatrixEvent(noise_multiplier=1.0, steps=5, bands=2))
    assert eps.get_epsilon(delta=1e-5) > 0
