"""Accountants: a contract every accountant inherits, cross-checks against dp_accounting."""

from __future__ import annotations

import abc
import json
import logging
import math
from pathlib import Path

import dp_accounting as dpa
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from protocols.dp.accountants import (
    PrivacyAccountant,
    PRVAccountant,
    RDPAccountant,
    available_accountants,
    make_accountant,
    register_accountant,
)
from protocols.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
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
from protocols.errors import InvalidParameterError, UnsupportedEventError

VECTORS = Path(__file__).parents[2] / "vectors" / "dp_epsilons.json"
SGD = PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.0))


@pytest.fixture(autouse=True, scope="module")
def _quiet_dp_accounting():
    logging.disable(logging.WARNING)  # dp_accounting logs convergence notes
    yield
    logging.disable(logging.NOTSET)


class AccountantContract(abc.ABC):
    """Every accountant must pass these; concrete suites implement ``make``."""

    @abc.abstractmethod
    def make(self) -> PrivacyAccountant:
        """A fresh accountant under test."""

    def test_empty_spends_nothing(self):
        assert self.make().get_epsilon(delta=1e-5) == 0.0

    def test_noop_spends_nothing(self):
        acc = self.make().compose(NoOpEvent(), count=10).compose(SelfComposedEvent(SGD, 0))
        assert acc.get_epsilon(delta=1e-5) == 0.0

    @pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
    def test_delta_validated(self, delta):
        acc = self.make().compose(SGD)
        with pytest.raises(InvalidParameterError, match=r"`delta` must be in \(0, 1\)"):
            acc.get_epsilon(delta=delta)

    def test_delta_is_keyword_only(self):
        with pytest.raises(TypeError):
            self.make().get_epsilon(1e-5)  # type: ignore[misc]

    def test_monotone_in_steps_and_delta(self):
        e = [self.make().compose(SGD, count=n).get_epsilon(delta=1e-5) for n in (10, 100, 1000)]
        assert 0.0 < e[0] < e[1] < e[2]
        acc = self.make().compose(SGD, count=100)
        assert (
            acc.get_epsilon(delta=1e-7) > acc.get_epsilon(delta=1e-5) > acc.get_epsilon(delta=1e-3)
        )

    def test_count_equals_self_composed_equals_repeated(self):
        a = self.make().compose(SGD, count=200).get_epsilon(delta=1e-5)
        b = self.make().compose(SelfComposedEvent(SGD, 200)).get_epsilon(delta=1e-5)
        c = self.make()
        for _ in range(4):
            c.compose(SelfComposedEvent(SGD, 50))
        assert a == pytest.approx(b, rel=1e-9)
        assert a == pytest.approx(c.get_epsilon(delta=1e-5), rel=1e-9)

    def test_nested_poisson_sampling_multiplies_rates(self):
        nested = PoissonSampledEvent(0.5, PoissonSampledEvent(0.02, GaussianEvent(1.0)))
        a = self.make().compose(nested, count=300).get_epsilon(delta=1e-5)
        b = self.make().compose(SGD, count=300).get_epsilon(delta=1e-5)
        assert a == pytest.approx(b, rel=1e-9)

    def test_pure_events_compose_basically(self):
        base = self.make().compose(SGD, count=100).get_epsilon(delta=1e-5)
        mixed = self.make().compose(
            ComposedEvent(
                [
                    SelfComposedEvent(SGD, 100),
                    LaplaceEvent(noise_multiplier=2.0),
                    RandomizedResponseEvent.from_epsilon(0.3),
                    SelfComposedEvent(PureEpsilonEvent(0.1), 2),
                ]
            )
        )
        assert mixed.get_epsilon(delta=1e-5) == pytest.approx(base + 0.5 + 0.3 + 0.2, rel=1e-9)
        only_pure = self.make().compose(PureEpsilonEvent(0.7), count=3)
        assert only_pure.get_epsilon(delta=1e-9) == pytest.approx(2.1)

    def test_poisson_sampled_pure_event_is_amplified(self):
        acc = self.make().compose(PoissonSampledEvent(0.1, LaplaceEvent(noise_multiplier=1.0)))
        assert acc.get_epsilon(delta=1e-5) == pytest.approx(math.log1p(0.1 * math.expm1(1.0)))

    def test_zcdp_matches_gaussian_rdp_bound(self):
        # ρ-zCDP with ρ = 1/(2z²) has the Gaussian's RDP curve; through RDP it cannot
        # be tighter than the Gaussian itself.
        z = 2.0
        zc = self.make().compose(ZCDPEvent(rho=1 / (2 * z * z)), count=10).get_epsilon(delta=1e-5)
        rdp = RDPAccountant().compose(GaussianEvent(z), count=10).get_epsilon(delta=1e-5)
        assert zc == pytest.approx(rdp, rel=1e-9)

    def test_discrete_gaussian_event_close_to_continuous(self):
        dg = DistributedDiscreteGaussianEvent(
            per_device_variance=400.0, num_shares=10, l2_sensitivity=40.0, dimension=1000
        )
        e_dg = self.make().compose(dg, count=5).get_epsilon(delta=1e-5)
        z = math.sqrt(10 * 400.0) / 40.0
        e_rdp = RDPAccountant().compose(GaussianEvent(z), count=5).get_epsilon(delta=1e-5)
        assert e_dg == pytest.approx(e_rdp, rel=1e-6)

    @pytest.mark.parametrize(
        ("event", "culprit"),
        [
            (
                PoissonSampledEvent(0.1, SelfComposedEvent(GaussianEvent(1.0), 2)),
                "SelfComposedEvent",
            ),
            (PoissonSampledEvent(0.1, ZCDPEvent(0.5)), "ZCDPEvent"),
            (PoissonSampledEvent(0.1, RandomizedResponseEvent(0.5)), "RandomizedResponseEvent"),
            (ComposedEvent([SGD, PoissonSampledEvent(0.1, ComposedEvent([SGD]))]), "ComposedEvent"),
        ],
    )
    def test_unsupported_raises_before_state_changes(self, event, culprit):
        acc = self.make().compose(SGD, count=100)
        before_events, before_eps = acc.events, acc.get_epsilon(delta=1e-5)
        assert not acc.supports(event)
        with pytest.raises(UnsupportedEventError, match=culprit):
            acc.compose(ComposedEvent([SGD, event]))
        assert acc.events == before_events
        assert acc.get_epsilon(delta=1e-5) == before_eps

    def test_foreign_objects_are_unsupported(self):
        acc = self.make()
        with pytest.raises(UnsupportedEventError, match="DpEvent"):
            acc.compose(dpa.GaussianDpEvent(1.0))  # type: ignore[arg-type]
        assert acc.events == ()

    def test_ledger_event_round_trips(self):
        acc = self.make().compose(SGD, count=7).compose(LaplaceEvent(1.0))
        again = self.make().compose(event_from_dict(acc.ledger_event.to_dict()))
        assert again.get_epsilon(delta=1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5))

    def test_upper_bounds_dp_accounting_pld_lower_side(self):
        # Any valid accountant is >= the (tight) PLD optimistic estimate.
        ref_event = dpa.SelfComposedDpEvent(
            dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0)), 500
        )
        pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        pld.compose(ref_event)
        ours = self.make().compose(SGD, count=500).get_epsilon(delta=1e-5)
        assert ours >= pld.get_epsilon(1e-5) * 0.999


class TestPRVAccountant(AccountantContract):
    def make(self) -> PrivacyAccountant:
        return PRVAccountant()

    def test_tighter_than_rdp(self):
        prv = PRVAccountant().compose(SGD, count=1000).get_epsilon(delta=1e-5)
        rdp = RDPAccountant().compose(SGD, count=1000).get_epsilon(delta=1e-5)
        assert prv < rdp
        # The team's orientation numbers.
        assert prv == pytest.approx(1.84, abs=0.01)
        assert rdp == pytest.approx(2.10, abs=0.01)

    def test_full_batch_gaussian_is_exact(self):
        # k Gaussians of z compose to one of z/√k; compare with dp_accounting's analytic value.
        eps = PRVAccountant().compose(GaussianEvent(2.0), count=4).get_epsilon(delta=1e-6)
        ref = dpa.get_epsilon_gaussian(1.0, 1e-6)
        assert eps == pytest.approx(ref, rel=1e-6)

    def test_mixed_with_zcdp_is_no_worse_than_rdp(self):
        ev = ComposedEvent([SelfComposedEvent(SGD, 1000), ZCDPEvent(rho=0.01)])
        prv = PRVAccountant().compose(ev).get_epsilon(delta=1e-5)
        rdp = RDPAccountant().compose(ev).get_epsilon(delta=1e-5)
        alone = PRVAccountant().compose(SGD, count=1000).get_epsilon(delta=1e-5)
        assert alone < prv <= rdp

    def test_eps_error_validated(self):
        with pytest.raises(InvalidParameterError, match="`eps_error`"):
            PRVAccountant(eps_error=0.0)


class TestRDPAccountant(AccountantContract):
    def make(self) -> PrivacyAccountant:
        return RDPAccountant()

    def test_orders_validated(self):
        with pytest.raises(InvalidParameterError, match="`orders`"):
            RDPAccountant(orders=(0.5, 2.0))


# ---- agreement with Google's dp_accounting over a grid of (q, z, steps, δ) ----

GRID_FAST = [
    (0.01, 1.0, 1000, 1e-5),
    (0.001, 2.0, 1, 1e-5),
    (0.001, 0.8, 300, 1e-5),
    (0.1, 0.8, 1, 1e-5),
    (0.1, 2.0, 300, 1e-5),
    (1.0, 1.0, 10, 1e-5),
    (0.05, 1.2, 1000, 1e-7),
]
GRID_SLOW = [
    (q, z, steps, delta)
    for q in (0.001, 0.01, 0.1, 1.0)
    for z in (0.8, 1.0, 2.0)
    for steps in (1, 100, 1000)
    for delta in (1e-5, 1e-7)
    if (q, z, steps, delta) not in GRID_FAST
]
GRID = [*GRID_FAST, *(pytest.param(*g, marks=pytest.mark.slow) for g in GRID_SLOW)]


def _pld_epsilon(event: dpa.DpEvent, delta: float, scale: float) -> float:
    # The PLD grid is absolute in privacy loss: resolve ε to ~0.05 % of its size.
    interval = max(1e-6, min(1e-3, scale / 2000.0))
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    pld.compose(event)
    return float(pld.get_epsilon(delta))


def _dpa_event(q: float, z: float, steps: int) -> dpa.DpEvent:
    inner = (
        dpa.GaussianDpEvent(z) if q == 1.0 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    )
    return dpa.SelfComposedDpEvent(inner, steps)


def _our_event(q: float, z: float, steps: int) -> SelfComposedEvent:
    inner = GaussianEvent(z) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(z))
    return SelfComposedEvent(inner, steps)


@pytest.mark.parametrize(("q", "z", "steps", "delta"), GRID)
def test_prv_agrees_with_dp_accounting_pld(q, z, steps, delta):
    ours = PRVAccountant().compose(_our_event(q, z, steps)).get_epsilon(delta=delta)
    ref = _pld_epsilon(_dpa_event(q, z, steps), delta, ours)
    assert ours == pytest.approx(ref, rel=0.02), (ours, ref)


INTEGER_ORDERS = tuple(float(a) for a in range(2, 257))


@pytest.mark.parametrize(("q", "z", "steps", "delta"), GRID)
def test_rdp_agrees_with_dp_accounting_rdp(q, z, steps, delta):
    # Same integer orders: both evaluate the same closed forms, so they must agree.
    ours = RDPAccountant(orders=INTEGER_ORDERS).compose(_our_event(q, z, steps))
    ref_acc = rdp_privacy_accountant.RdpAccountant(orders=INTEGER_ORDERS)
    ref_acc.compose(_dpa_event(q, z, steps))
    ref = ref_acc.get_epsilon(delta)
    assert ours.get_epsilon(delta=delta) == pytest.approx(ref, rel=0.02)
    # Default (fractional + integer) orders: never looser than dp_accounting by > 2 %.
    # (It can be tighter where dp_accounting's fractional-order series gives up.)
    ours_default = RDPAccountant().compose(_our_event(q, z, steps)).get_epsilon(delta=delta)
    ref_default = rdp_privacy_accountant.RdpAccountant()
    ref_default.compose(_dpa_event(q, z, steps))
    assert ours_default <= ref_default.get_epsilon(delta) * 1.02


def test_rdp_where_dp_accounting_drops_orders():
    # q = 0.1, z = 0.7, 1000 steps: dp_accounting's fractional-order series stops
    # after 1000 terms and excludes those orders, so its RDP bound is looser; ours
    # (Opacus' series, run to convergence) is smaller but still above the tight PLD.
    ev = _our_event(0.1, 0.7, 1000)
    ours = RDPAccountant().compose(ev).get_epsilon(delta=1e-5)
    ref_acc = rdp_privacy_accountant.RdpAccountant()
    ref_acc.compose(_dpa_event(0.1, 0.7, 1000))
    pld = _pld_epsilon(_dpa_event(0.1, 0.7, 1000), 1e-5, ours)
    assert pld < ours <= ref_acc.get_epsilon(1e-5)


def test_pinned_vectors():
    data = json.loads(VECTORS.read_text())
    assert data["format"] == 1 and len(data["vectors"]) >= 10
    for row in data["vectors"]:
        event = event_from_dict(row["event"])
        got = make_accountant(row["accountant"]).compose(event).get_epsilon(delta=row["delta"])
        assert got == pytest.approx(row["epsilon"], rel=1e-6), row
        assert row["epsilon"] == pytest.approx(row["reference_epsilon"], rel=0.02), row
        if row["accountant"] == "prv":
            assert row["epsilon"] >= row["reference_epsilon"] * 0.999  # an upper bound


# ---- registry ----


class _Pessimist(RDPAccountant):
    name = "pessimist"


def test_registry_refuses_silent_override():
    assert {"prv", "rdp"} <= set(available_accountants())
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_accountant("rdp", _Pessimist)
    assert type(make_accountant("rdp")) is RDPAccountant


def test_registry_register_and_force():
    register_accountant("pessimist-test", _Pessimist)
    try:
        assert type(make_accountant("pessimist-test")) is _Pessimist
        register_accountant("pessimist-test", RDPAccountant, force=True)
        assert type(make_accountant("pessimist-test")) is RDPAccountant
    finally:
        from protocols.dp import accountants

        accountants.ACCOUNTANTS.unregister("pessimist-test")


def test_registry_validation():
    with pytest.raises(InvalidParameterError, match="`accountant` must be one of"):
        make_accountant("gdp")
    with pytest.raises(InvalidParameterError, match="`cls` must be a PrivacyAccountant"):
        register_accountant("x", dict)  # type: ignore[arg-type]
    assert make_accountant().name == "prv"
