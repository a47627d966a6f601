"""Events: validation at construction, immutability, serialization round trip."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    PoissonSampledEvent,
    PureEpsilonEvent,
    RandomizedResponseEvent,
    SelfComposedEvent,
    ZCDPEvent,
    event_from_dict,
)
from protocols.errors import InvalidParameterError


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: GaussianEvent(noise_multiplier=0.0),
            "`noise_multiplier` must be in (0, inf); got 0.0",
        ),
        (lambda: GaussianEvent(noise_multiplier=math.nan), "`noise_multiplier` must be in"),
        (lambda: GaussianEvent(noise_multiplier=True), "`noise_multiplier` must be a real number"),
        (
            lambda: PoissonSampledEvent(sample_rate=0.0, event=GaussianEvent(1.0)),
            "`sample_rate` must be in (0, 1]; got 0.0",
        ),
        (
            lambda: PoissonSampledEvent(sample_rate=1.5, event=GaussianEvent(1.0)),
            "`sample_rate` must be in (0, 1]; got 1.5",
        ),
        (lambda: PoissonSampledEvent(sample_rate=0.5, event="gauss"), "`event` must be a DpEvent"),
        (
            lambda: SelfComposedEvent(event=GaussianEvent(1.0), count=-1),
            "`count` must be an integer",
        ),
        (
            lambda: SelfComposedEvent(event=GaussianEvent(1.0), count=2.0),
            "`count` must be an integer",
        ),
        (lambda: ComposedEvent([GaussianEvent(1.0), 3]), "`events[1]` must be a DpEvent"),
        (lambda: ComposedEvent(GaussianEvent(1.0)), "`events` must be an iterable"),
        (
            lambda: RandomizedResponseEvent(noise_parameter=0.0),
            "`noise_parameter` must be in (0, 1]",
        ),
        (lambda: RandomizedResponseEvent(noise_parameter=0.5, num_buckets=1), "`num_buckets`"),
        (lambda: PureEpsilonEvent(epsilon=-1.0), "`epsilon` must be in (0, inf); got -1.0"),
        (lambda: ZCDPEvent(rho=0.0), "`rho` must be in (0, inf)"),
        (
            lambda: DistributedDiscreteGaussianEvent(
                per_device_variance=0.1, num_shares=2, l2_sensitivity=1.0, dimension=3
            ),
            "`per_device_variance` must be in [0.25, inf); got 0.1",
        ),
        (
            lambda: DistributedDiscreteGaussianEvent(
                per_device_variance=1.0, num_shares=0, l2_sensitivity=1.0, dimension=3
            ),
            "`num_shares` must be an integer in [1, inf); got 0",
        ),
    ],
)
def test_invalid_parameters_name_argument_and_value(build, message):
    with pytest.raises(InvalidParameterError) as info:
        build()
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_events_are_frozen_and_hashable():
    e = PoissonSampledEvent(sample_rate=0.1, event=GaussianEvent(noise_multiplier=1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.sample_rate = 0.2  # type: ignore[misc]
    assert hash(e) == hash(PoissonSampledEvent(sample_rate=0.1, event=GaussianEvent(1.0)))
    assert len({e, PoissonSampledEvent(0.1, GaussianEvent(1.0))}) == 1


def test_randomized_response_epsilon_round_trip():
    for eps in (0.1, 1.0, 5.0):
        for k in (2, 3, 10):
            assert RandomizedResponseEvent.from_epsilon(
                eps, num_buckets=k
            ).epsilon == pytest.approx(eps)
    assert LaplaceEvent(noise_multiplier=0.5).epsilon == 2.0


def test_discrete_gaussian_event_single_share_is_cks_zcdp():
    # n = 1: τ = 0 and ρ = Δ²/(2σ²) exactly (Canonne–Kamath–Steinke 2020).
    e = DistributedDiscreteGaussianEvent(
        per_device_variance=25.0, num_shares=1, l2_sensitivity=3.0, dimension=100
    )
    assert e.tau == 0.0
    assert e.rho == pytest.approx(9.0 / 50.0)


def test_discrete_gaussian_event_tau_grows_for_small_sigma():
    big = DistributedDiscreteGaussianEvent(
        per_device_variance=4.0, num_shares=10, l2_sensitivity=10.0, dimension=10
    )
    small = DistributedDiscreteGaussianEvent(
        per_device_variance=0.25, num_shares=10, l2_sensitivity=10.0, dimension=10
    )
    assert big.tau < 1e-15
    assert small.tau > 1e-3
    # With negligible τ, ρ is the continuous Gaussian's Δ²/(2nσ²).
    assert big.rho == pytest.approx(100.0 / (2 * 10 * 4.0))
    assert small.rho > 100.0 / (2 * 10 * 0.25)


_leaf = st.one_of(
    st.builds(GaussianEvent, st.floats(0.01, 100.0)),
    st.builds(LaplaceEvent, st.floats(0.01, 100.0)),
    st.builds(PureEpsilonEvent, st.floats(0.001, 10.0)),
    st.builds(ZCDPEvent, st.floats(1e-4, 10.0)),
    st.builds(RandomizedResponseEvent, st.floats(0.01, 1.0), st.integers(2, 10)),
    st.builds(
        DistributedDiscreteGaussianEvent,
        st.floats(0.25, 1e8),
        st.integers(1, 100),
        st.floats(0.1, 1e6),
        st.integers(1, 10**6),
    ),
    st.just(NoOpEvent()),
)
_events = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(PoissonSampledEvent, st.floats(1e-6, 1.0), inner),
        st.builds(SelfComposedEvent, inner, st.integers(0, 10_000)),
        st.builds(ComposedEvent, st.lists(inner, max_size=4)),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(_events)
def test_serialization_round_trip(event: DpEvent):
    assert event_from_dict(event.to_dict()) == event


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "gaussians", "noise_multiplier": 1.0}, "`event.type` must be one of"),
        ({"type": "gaussian"}, "missing keys ['noise_multiplier']"),
        ({"type": "gaussian", "noise_multiplier": 1.0, "x": 1}, "unexpected keys ['x']"),
        (
            {
                "type": "self_composed",
                "count": 3,
                "event": {
                    "type": "poisson_sampled",
                    "sample_rate": 0.0,
                    "event": {"type": "gaussian", "noise_multiplier": 1.0},
                },
            },
            "`event.event`",
        ),
        ({"type": "composed", "events": {"type": "noop"}}, "`event.events` must be a list"),
        ([1, 2], "`event` must be a mapping"),
    ],
)
def test_from_dict_rejects_malformed(data, message):
    with pytest.raises(InvalidParameterError) as info:
        event_from_dict(data)
    assert message in str(info.value)
