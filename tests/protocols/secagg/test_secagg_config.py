"""SecAggConfig validation, defaults and the insecure-parameter refusals."""

from __future__ import annotations

import math

import pytest

from protocols.errors import InvalidParameterError
from protocols.secagg import (
    SecAggConfig,
    default_neighbours,
    default_threshold,
    dropout_failure_probability,
    neighbour_graph,
)


def test_defaults_small_n_is_plain_secagg() -> None:
    cfg = SecAggConfig(n_clients=10, vector_length=3)
    assert cfg.neighbours == 9 and cfg.is_plain_secagg
    assert cfg.threshold == 6
    assert cfg.modulus_bits == 16 + 4


def test_defaults_large_n_is_logarithmic() -> None:
    ks = [default_neighbours(n) for n in (100, 1000, 10_000, 100_000)]
    assert all(k % 2 == 0 for k in ks)
    assert ks == sorted(ks)
    # O(log n): growing n by 1000x adds only a few neighbours.
    assert ks[-1] - ks[0] <= 12
    for n, k in zip((100, 1000, 10_000, 100_000), ks):
        t = default_threshold(k)
        assert n * dropout_failure_probability(k, t, 0.1) <= 2.0**-20
        assert n**2 * 0.1**k <= 2.0**-40


def test_default_neighbours_is_smallest() -> None:
    n = 1000
    k = default_neighbours(n)
    smaller = k - 2
    t = default_threshold(smaller)
    assert n * dropout_failure_probability(smaller, t, 0.1) > 2.0**-20


def test_dropout_failure_probability_matches_binomial() -> None:
    p = dropout_failure_probability(4, 3, 0.5)
    assert p == pytest.approx(sum(math.comb(4, j) for j in range(3)) / 16)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_clients": 1}, "`n_clients` must be an integer in [2, 1048576]; got 1"),
        ({"n_clients": 10, "vector_length": 0}, "`vector_length` must be an integer"),
        ({"n_clients": 10, "threshold": 1}, "`threshold` must be in [6, 10]"),
        ({"n_clients": 10, "threshold": 5}, "got 5: a threshold <= half"),
        ({"n_clients": 10, "threshold": 11}, "`threshold` must be in [6, 10]"),
        ({"n_clients": 10, "neighbours": 3}, "`neighbours` must be n_clients - 1 = 9"),
        ({"n_clients": 10, "neighbours": 10}, "got 10"),
        ({"n_clients": 10, "clip_range": 0.0}, "`clip_range` must be a finite number > 0; got 0.0"),
        ({"n_clients": 10, "clip_range": math.inf}, "`clip_range`"),
        ({"n_clients": 10, "precision_bits": 33}, "`precision_bits` must be in [1, 32]; got 33"),
        ({"n_clients": 10, "precision_bits": 0}, "got 0"),
        ({"n_clients": 10, "sign_advertisements": 1}, "`sign_advertisements` must be a bool"),
        ({"n_clients": 10, "max_dropout_rate": 1.0}, "`max_dropout_rate` must be in [0, 1)"),
    ],
)
def test_invalid_parameters_are_named(kwargs: dict[str, object], fragment: str) -> None:
    kwargs = {"vector_length": 4, **kwargs}
    with pytest.raises(InvalidParameterError) as info:
        SecAggConfig(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(InvalidParameterError) as info:
        SecAggConfig(n_clients=10, vector_length=-1, clip_range=-2.0, precision_bits=99)
    msg = str(info.value)
    assert "`vector_length`" in msg and "`clip_range`" in msg and "`precision_bits`" in msg


def test_threshold_majority_rule_prevents_two_disjoint_reconstructions() -> None:
    # For every valid (k, t) two disjoint holder sets of size t cannot exist.
    for n in (3, 8, 20):
        for k in [n - 1, *range(2, n - 1, 2)]:
            cfg = SecAggConfig(n_clients=n, vector_length=1, neighbours=k)
            assert 2 * cfg.t > k + 1
            with pytest.raises(InvalidParameterError):
                SecAggConfig(n_clients=n, vector_length=1, neighbours=k, threshold=(k + 1) // 2)


def test_config_is_frozen() -> None:
    cfg = SecAggConfig(n_clients=5, vector_length=2)
    with pytest.raises(AttributeError):
        cfg.threshold = 2  # type: ignore[misc]


def test_graph_is_regular_symmetric_and_public() -> None:
    rid = bytes(range(16))
    g = neighbour_graph(50, 8, rid)
    assert all(len(s) == 8 and u not in s for u, s in enumerate(g))
    assert all(u in g[v] for u in range(50) for v in g[u])
    assert neighbour_graph(50, 8, rid) == g
    assert neighbour_graph(50, 8, bytes(16)) != g
    complete = neighbour_graph(5, 4, rid)
    assert complete[0] == frozenset({1, 2, 3, 4})
