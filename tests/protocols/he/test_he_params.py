"""CKKS parameter sets: the 128-bit table, every problem at once, the wire format."""

from __future__ import annotations

import pytest

from protocols.errors import InvalidParameterError, MessageError
from protocols.he import (
    MATCHING_PARAMETERS,
    MAX_COEFF_MODULUS_BITS_128,
    SELECTOR_PARAMETERS,
    CKKSParameters,
)
from protocols.he._seal import SealContext


def test_presets_meet_128_bit_security() -> None:
    for p in (SELECTOR_PARAMETERS, MATCHING_PARAMETERS):
        assert p.total_bits <= MAX_COEFF_MODULUS_BITS_128[p.poly_modulus_degree]
        assert SealContext.of(p).context.parameters_set()
    assert SELECTOR_PARAMETERS.depth == 2 and MATCHING_PARAMETERS.depth == 1


ACCEPTED_AT_LIMIT = {
    2048: ((27, 27), 20),
    4096: ((40, 29, 40), 29),
    8192: ((58, 50, 50, 60), 50),
    16384: ((58, *[40] * 8, 60), 40),
    32768: ((61 - 1, *[40] * 19, 61 - 1), 40),
}
ONE_BIT_OVER = {
    1024: ((20, 20), 19 + 1),
    2048: ((28, 28), 20),
    4096: ((40, 30, 40), 30),
    8192: ((59, 50, 50, 60), 50),
    16384: ((59, *[40] * 8, 60), 40),
    32768: ((60, *[40] * 18, 42, 60), 40),
}


@pytest.mark.parametrize(("n", "limit"), sorted(MAX_COEFF_MODULUS_BITS_128.items()))
def test_weaker_than_128_bits_is_refused_naming_the_limit(n: int, limit: int) -> None:
    if n in ACCEPTED_AT_LIMIT:
        primes, scale = ACCEPTED_AT_LIMIT[n]
        assert CKKSParameters(n, primes, scale).total_bits <= limit
    primes, scale = ONE_BIT_OVER[n]
    assert sum(primes) > limit
    with pytest.raises(InvalidParameterError, match=rf"N = {n} allows at most {limit} bits"):
        CKKSParameters(n, primes, scale)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidParameterError) as info:
        CKKSParameters(8192, (40, 30, 35), 45)
    msg = str(info.value)
    assert "special prime" in msg and "below the first prime" in msg and "middle primes" in msg


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((3000, (60, 40, 60), 40), "poly_modulus_degree"),
        ((8192, (60,), 40), "at least two"),
        ((8192, (60, 61, 61), 40), r"\[20, 60\]"),
        ((8192, (60, 40, 60), 10), "scale_bits"),
        ((8192, (60, 40, 60), True), "scale_bits"),
    ],
)
def test_bad_values_name_the_argument(args: tuple, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        CKKSParameters(*args)


def test_wire_format_round_trips_and_rechecks_security() -> None:
    assert CKKSParameters.from_bytes(SELECTOR_PARAMETERS.to_bytes()) == SELECTOR_PARAMETERS
    raw = bytearray(MATCHING_PARAMETERS.to_bytes())
    raw[0:4] = (4096).to_bytes(4, "big")  # 160 bits at N = 4096: over the 109-bit limit
    with pytest.raises(MessageError, match="109 bits"):
        CKKSParameters.from_bytes(bytes(raw))
    with pytest.raises(MessageError, match="announce"):
        CKKSParameters.from_bytes(MATCHING_PARAMETERS.to_bytes()[:-1])
    with pytest.raises(MessageError, match="header"):
        CKKSParameters.from_bytes(b"\x00")


def test_doctests() -> None:
    import doctest

    from protocols.he import context, linalg, params

    for mod in (params, context, linalg):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_layouts_are_public_and_checked() -> None:
    from protocols.he import MatVecLayout, SquareNetworkLayout

    lay = SquareNetworkLayout(48, 32, 2, SELECTOR_PARAMETERS)
    assert (lay.width, lay.units, lay.groups, lay.galois_steps) == (
        64,
        64,
        1,
        (1, 4, 16, 64, 256, 1024),
    )
    assert SquareNetworkLayout.from_array(lay.to_array(), SELECTOR_PARAMETERS) == lay
    with pytest.raises(MessageError, match="4 integers"):
        SquareNetworkLayout.from_array([1.0, 2.0, 3.0, 4.0], SELECTOR_PARAMETERS)
    with pytest.raises(InvalidParameterError, match="exceeds 4096 slots"):
        SquareNetworkLayout(4096, 2, 1, SELECTOR_PARAMETERS)
    with pytest.raises(InvalidParameterError, match="depth >= 2"):
        SquareNetworkLayout(8, 8, 2, MATCHING_PARAMETERS)
    assert SquareNetworkLayout(64, 32, 5, SELECTOR_PARAMETERS).groups == 3
    m = MatVecLayout(10_000, 19, MATCHING_PARAMETERS)
    assert (m.width, m.chunks, m.galois_steps) == (32, 3, (1,))
    with pytest.raises(InvalidParameterError, match="rows"):
        MatVecLayout(0, 3, MATCHING_PARAMETERS)


def test_import_loads_neither_torch_nor_secrelay() -> None:
    import subprocess
    import sys

    code = (
        "import sys, protocols.he; "
        "assert 'torch' not in sys.modules and 'secrelay' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
