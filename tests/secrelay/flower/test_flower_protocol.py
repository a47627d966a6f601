"""The Flower app's wire vocabulary (no flwr needed): round setups and contribution
shapes round-trip, anything malformed is one MessageError, and the device-side
encoding is SecureSum's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from protocols.errors import InvalidParameterError, MessageError
from secrelay.federated.secure import SecureSum, SecureSumSettings
from secrelay.federated.transcript import Channel
from secrelay.flower.protocol import (
    RoundSetup,
    decode_shapes,
    encode_shapes,
    round_seed,
    scaled_vector,
)


def _setup(**kw: Any) -> RoundSetup:
    args: dict[str, Any] = dict(
        round=3,
        devices=(7, 2, 9),
        round_id=b"r" * 16,
        beacon=b"",
        pki=(b"a" * 32, b"b" * 32, b"c" * 32),
        encoding="scaled",
    )
    args.update(kw)
    return RoundSetup(**args)


def test_round_setup_round_trips_and_names_positions() -> None:
    s = _setup()
    assert RoundSetup.from_record(s.to_record()) == s
    assert s.client_id(9) == 2
    with pytest.raises(MessageError, match="device 5"):
        s.client_id(5)


@pytest.mark.parametrize(
    "change",
    [
        {"round": "3"},
        {"devices": [1, "2"]},
        {"round_id": "not-bytes"},
        {"encoding": "float"},
        {"pki": [b"a" * 32]},
        {"devices": [4, 4]},
    ],
)
def test_malformed_setup_is_one_message_error(change: dict[str, object]) -> None:
    rec = {**_setup().to_record(), **change}
    with pytest.raises(MessageError):
        RoundSetup.from_record(rec)


def test_setup_validates_at_construction() -> None:
    with pytest.raises(InvalidParameterError, match="encoding"):
        _setup(encoding="x")


def test_shapes_round_trip_and_bad_replies_are_rejected() -> None:
    c = {"delta": np.zeros((3, 2)), "weight": np.ones(1)}
    assert decode_shapes(encode_shapes(c)) == {"delta": (3, 2), "weight": (1,)}
    for bad in ("{", "[1]", '{"a": [-1]}', '{"a": "x"}'):
        with pytest.raises(MessageError):
            decode_shapes(bad)


def test_device_encoding_is_secure_sums_and_seeds_match() -> None:
    # The device-side vector, summed by an in-process SecureSum, equals SecureSum's sum.
    settings = SecureSumSettings(bounds={"w": 2.0}, default_bound=10.0, deterministic=True)
    rng = np.random.default_rng(0)
    contribs = {d: {"u": rng.normal(0, 3, 4), "w": rng.normal(0, 3, 1)} for d in range(4)}
    vecs = [scaled_vector(c, settings) for c in contribs.values()]
    assert all(np.all(np.abs(v) <= 1.0) for v in vecs)  # clipped at the public bounds
    res = SecureSum(settings, seed=1).aggregate(0, contribs, Channel())
    total = np.sum(vecs, axis=0)
    got = np.concatenate([res.sums["u"] / 10.0, res.sums["w"] / 2.0])
    assert np.allclose(got, total, atol=4 * 2 / (2**24 - 1) * 2)
    assert round_seed(1, 2) == round_seed(1, 2) != round_seed(1, 3)
