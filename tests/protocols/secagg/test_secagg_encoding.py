"""Fixed-point encoder: error bound, no overflow, unbiased stochastic rounding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidParameterError
from protocols.secagg import FixedPointEncoder, SecureRandom

encoders = st.builds(
    FixedPointEncoder,
    clip_range=st.floats(min_value=1e-3, max_value=1e3),
    precision_bits=st.integers(min_value=1, max_value=32),
    max_summands=st.integers(min_value=1, max_value=1 << 20),
)


@settings(max_examples=200, deadline=None)
@given(
    enc=encoders,
    values=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=1, max_size=50),
    seed=st.integers(0, 2**32),
)
def test_round_trip_error_below_one_step(
    enc: FixedPointEncoder, values: list[float], seed: int
) -> None:
    x = np.array(values) * enc.clip_range
    q = enc.encode(x, rng=np.random.default_rng(seed))
    assert q.dtype == enc.dtype
    assert int(q.max()) <= enc.levels
    err = np.abs(enc.decode_sum(q, n_summands=1) - x)
    # < one step, plus float64 rounding of the scale (relative 2**-50).
    assert np.all(err < enc.step + 2.0**-50 * enc.clip_range * 4)


@settings(max_examples=100, deadline=None)
@given(enc=encoders, data=st.data())
def test_sum_of_n_clients_never_overflows_and_error_below_n_steps(
    enc: FixedPointEncoder, data: st.DataObject
) -> None:
    n = data.draw(st.integers(min_value=1, max_value=min(enc.max_summands, 64)))
    extreme = data.draw(st.sampled_from([1.0, -1.0, 0.0]))
    x = np.full((n, 3), extreme * enc.clip_range * 10)  # beyond the range: clipped
    rng = SecureRandom.from_seed(data.draw(st.integers(0, 2**16)))
    modulus = 1 << enc.modulus_bits
    total = np.zeros(3, dtype=np.uint64)
    for row in x:
        total = (total + enc.encode(row, rng=rng).astype(np.uint64)) % np.uint64(modulus)
    clipped = np.clip(x, -enc.clip_range, enc.clip_range).sum(axis=0)
    decoded = enc.decode_sum(total, n_summands=n)
    assert np.all(
        np.abs(decoded - clipped) <= n * enc.step * (1 + 1e-9) + 1e-9 * enc.clip_range * n
    )


def test_worst_case_sum_fits_modulus_at_max_clients() -> None:
    for q in (1, 16, 32):
        for n in (1, 2, 3, 1000, 1 << 20):
            enc = FixedPointEncoder(clip_range=1.0, precision_bits=q, max_summands=n)
            assert n * enc.levels < 1 << enc.modulus_bits
            assert enc.modulus_bits <= 52  # exact in float64
            assert enc.dtype.itemsize * 8 >= enc.modulus_bits


def test_stochastic_rounding_is_unbiased() -> None:
    enc = FixedPointEncoder(clip_range=1.0, precision_bits=3, max_summands=1)
    x = np.full(200_000, 0.1)
    dec = enc.decode_sum(enc.encode(x, rng=np.random.default_rng(0)), n_summands=1)
    assert abs(dec.mean() - 0.1) < 0.005
    assert set(np.round(dec, 9)) == {
        round(-1 + enc.step * k, 9) for k in (np.floor(1.1 / enc.step), np.ceil(1.1 / enc.step))
    }


def test_exact_grid_points_are_not_rounded() -> None:
    enc = FixedPointEncoder(clip_range=2.0, precision_bits=4, max_summands=1)
    x = -2.0 + enc.step * np.arange(16)
    q = enc.encode(x, rng=SecureRandom.from_seed(0))
    np.testing.assert_array_equal(q, np.arange(16))


def test_encoder_rejects_bad_input() -> None:
    enc = FixedPointEncoder(clip_range=1.0, precision_bits=8, max_summands=2)
    with pytest.raises(InvalidParameterError, match="finite"):
        enc.encode(np.array([0.0, np.nan]), rng=np.random.default_rng(0))
    with pytest.raises(InvalidParameterError, match="1-D"):
        enc.encode(np.zeros((2, 2)), rng=np.random.default_rng(0))
    with pytest.raises(InvalidParameterError, match="`n_summands`"):
        enc.decode_sum(np.zeros(2), n_summands=3)
    with pytest.raises(InvalidParameterError, match="`rng`"):
        enc.encode(np.zeros(2), rng=42)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="`precision_bits`"):
        FixedPointEncoder(clip_range=1.0, precision_bits=0, max_summands=2)
