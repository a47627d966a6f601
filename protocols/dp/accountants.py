"""Privacy accountants: compose :mod:`~protocols.dp.events` into an (ε, δ) guarantee.

Two accountants share one interface (:class:`PrivacyAccountant`), in the style of
``dp_accounting``: :meth:`~PrivacyAccountant.compose` first does a dry run over the
whole event tree and raises :class:`~protocols.errors.UnsupportedEventError` naming
the offending sub-event *before* any state changes; :meth:`~PrivacyAccountant.get_epsilon`
takes a keyword-only ``delta``.

* :class:`PRVAccountant` (``"prv"``, the default) — numerical composition of privacy
  loss random variables (Gopi, Lee & Wutschitz, NeurIPS 2021) through Opacus'
  ``opacus.accountants.analysis.prv``; reports the *upper* end of its error band,
  so the value is a guarantee, not an estimate. Tight for (sub-sampled) Gaussians.
* :class:`RDPAccountant` (``"rdp"``) — Rényi DP (Mironov 2017; sub-sampled Gaussian
  of Mironov, Talwar & Zhang 2019) through ``opacus.accountants.analysis.rdp``,
  converted with Balle et al. 2020, Thm. 21 (the same conversion as ``dp_accounting``).
  Looser by 10–30 % on typical DP-SGD runs.

What each kind of event costs (both accountants):

* Gaussian, Poisson-sampled Gaussian — PRV (or RDP).
* zCDP and distributed discrete Gaussian — RDP curve ρ·α. In the PRV accountant,
  when these are mixed with Gaussians, δ is split between a PRV part and an RDP part
  (basic composition of the two (ε, δ) guarantees) and the best of a few splits, or
  of the pure-RDP bound, is reported; every candidate is a valid upper bound.
* Tree aggregation and banded matrix factorization (``TreeAggregationEvent``,
  ``BandedMatrixEvent``) — the Gaussian mechanism they are (``gaussian_equivalent``),
  not amplified.
* Pure-ε events (Laplace, randomized response, :class:`~protocols.dp.events.PureEpsilonEvent`)
  — **basic composition**: their ε's are added to the (ε, δ) of the rest, which is
  valid but can be loose for many small ε's. A Poisson-sampled Laplace or pure-ε
  event costs log(1 + q(e^ε − 1)) (Balle, Barthe & Gaboardi 2018, add/remove relation).

The GDP/CLT approximation is deliberately not offered: it is not an upper bound.
"""

from __future__ import annotations

import abc
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft
from scipy import optimize, special

from protocols.dp._validation import check_int, check_real
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
)
from protocols.errors import InvalidParameterError, UnsupportedEventError
from protocols.registry import Registry

if TYPE_CHECKING:
    from opacus.accountants.analysis.prv import Domain

# Opacus' analysis modules (``opacus.accountants.analysis.rdp`` and ``.prv``) are
# numpy/scipy only, but importing any ``opacus.*`` submodule first runs
# ``opacus/__init__.py``, which imports torch. They are therefore imported inside
# the functions that use them: a deliberate lazy import that defers a heavy optional
# dependency (not a workaround for an import cycle), so ``import protocols.dp`` loads
# neither torch nor Opacus while computing an RDP/PRV ε may load both.

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_RDP_ORDERS",
    "PRVAccountant",
    "PrivacyAccountant",
    "PrivacyAccountingWarning",
    "RDPAccountant",
    "available_accountants",
    "make_accountant",
    "register_accountant",
]

DEFAULT_RDP_ORDERS: tuple[float, ...] = (
    tuple(1.0 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(11, 64))
    + (128.0, 256.0, 512.0, 1024.0)
)
"""Rényi orders searched by the RDP conversion (the same grid as ``dp_accounting``)."""


class PrivacyAccountingWarning(UserWarning):
    """A numerical fallback was used; the reported ε is still a valid upper bound."""


@dataclass
class _Leaves:
    """An event tree flattened into what the accountants need."""

    gaussian: dict[tuple[float, float], int] = field(default_factory=dict)  # (q, z) -> count
    rho: float = 0.0  # total zCDP (RDP-only events)
    pure_epsilon: float = 0.0  # basic composition of pure-ε events

    def merged(self, other: _Leaves) -> _Leaves:
        g = dict(self.gaussian)
        for key, n in other.gaussian.items():
            g[key] = g.get(key, 0) + n
        return _Leaves(g, self.rho + other.rho, self.pure_epsilon + other.pure_epsilon)

    @property
    def empty(self) -> bool:
        return not self.gaussian and self.rho == 0.0 and self.pure_epsilon == 0.0


def _pure_epsilon_of(event: DpEvent) -> float | None:
    if isinstance(event, (LaplaceEvent, RandomizedResponseEvent, PureEpsilonEvent)):
        return float(event.epsilon)
    return None


def _unsupported(event: DpEvent, why: str) -> UnsupportedEventError:
    return UnsupportedEventError(f"cannot account sub-event {event!r}: {why}")


def _flatten(event: DpEvent, count: int, q: float, out: _Leaves) -> None:
    """Accumulate ``event`` (repeated ``count`` times, Poisson-sampled at rate ``q``)."""
    if count == 0 or isinstance(event, NoOpEvent):
        return
    if isinstance(event, SelfComposedEvent):
        if q < 1.0:
            raise _unsupported(event, "a Poisson-sampled composition has no supported analysis")
        _flatten(event.event, count * event.count, q, out)
    elif isinstance(event, ComposedEvent):
        if q < 1.0:
            raise _unsupported(event, "a Poisson-sampled composition has no supported analysis")
        for e in event.events:
            _flatten(e, count, q, out)
    elif isinstance(event, PoissonSampledEvent):
        # Poisson sampling twice is Poisson sampling with the product rate.
        _flatten(event.event, count, q * event.sample_rate, out)
    elif isinstance(event, GaussianEvent):
        key = (q, event.noise_multiplier)
        out.gaussian[key] = out.gaussian.get(key, 0) + count
    elif isinstance(event, RandomizedResponseEvent) and q < 1.0:
        raise _unsupported(
            event,
            "randomized response is analysed under replace-one, for which Poisson "
            "amplification is not implemented",
        )
    elif (eps := _pure_epsilon_of(event)) is not None:
        eps_q = eps if q == 1.0 else math.log1p(q * math.expm1(eps))
        out.pure_epsilon += count * eps_q
    elif isinstance(event, (ZCDPEvent, DistributedDiscreteGaussianEvent)):
        if q < 1.0:
            raise _unsupported(event, "Poisson amplification of zCDP is not implemented")
        out.rho += count * event.rho
    elif callable(expand := getattr(event, "gaussian_equivalent", None)):
        # A whole linear mechanism that is one Gaussian (tree aggregation, banded MF:
        # protocols.dp.tree / .matrix_factorization); their analyses claim no amplification.
        if q < 1.0:
            raise _unsupported(event, "no amplification analysis for this mechanism")
        _flatten(expand(), count, q, out)
    else:
        raise _unsupported(event, f"unknown event type {type(event).__name__}")


def _flatten_event(event: DpEvent, count: int) -> _Leaves:
    if not isinstance(event, DpEvent):
        raise UnsupportedEventError(
            f"`event` must be a DpEvent; got {event!r} of type {type(event).__name__}"
        )
    out = _Leaves()
    _flatten(event, count, 1.0, out)
    return out


def _check_delta(delta: object) -> float:
    return check_real("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)


def _rdp_curve(leaves: _Leaves, orders: NDArray[np.float64]) -> NDArray[np.float64]:
    from opacus.accountants.analysis import rdp as _opacus_rdp  # lazy: imports torch

    rdp = np.zeros_like(orders)
    for (q, z), n in leaves.gaussian.items():
        rdp += np.asarray(
            _opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=n, orders=list(orders)),
            dtype=np.float64,
        )
    return rdp + leaves.rho * orders


def _rdp_to_epsilon(orders: NDArray[np.float64], rdp: NDArray[np.float64], delta: float) -> float:
    """Balle et al. 2020, Thm. 21, via Opacus; plus the KL shortcut of ``dp_accounting``."""
    if not np.any(rdp > 0):
        return 0.0
    from opacus.accountants.analysis import rdp as _opacus_rdp  # lazy: imports torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" advice
        eps, _ = _opacus_rdp.get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    # delta <= sqrt(1 - exp(-KL)) <= ... : if some order already gives this, ε = 0 works.
    if np.any(delta**2 + np.expm1(-rdp) > 0):
        return 0.0
    return max(0.0, float(eps))


def _gaussian_delta(mu: float, eps: float) -> float:
    """δ(ε) of a Gaussian with sensitivity/σ = μ (Balle & Wang 2018, Thm. 8)."""
    a = special.log_ndtr(-eps / mu + mu / 2.0)
    b = eps + special.log_ndtr(-eps / mu - mu / 2.0)
    return float(np.exp(a) - np.exp(b)) if a > b else 0.0


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε(δ) of the Gaussian mechanism with μ = Δ/σ (analytic Gaussian)."""
    if _gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    high = 1.0
    while _gaussian_delta(mu, high) > delta:
        high *= 2.0
    root = optimize.brentq(lambda e: _gaussian_delta(mu, e) - delta, 0.0, high, xtol=1e-12)
    # brentq brackets the root within xtol; report the upper end (a valid ε).
    return float(root) + 1e-12


def _fft_friendly_domain(half: float, mesh: float) -> Domain:
    """Opacus' aligned domain on [-half, half], widened until its size is 5-smooth.

    A wider domain only truncates less mass; a 5-smooth size keeps the FFT fast
    (a size with a large prime factor can be 10x slower).
    """
    from opacus.accountants.analysis.prv import Domain  # lazy: imports torch

    domain = Domain.create_aligned(-half, half, mesh)
    for _ in range(8):
        target = sp_fft.next_fast_len(domain.size, real=True)
        if target == domain.size:
            break
        half += (target - domain.size + 1) * mesh / 2.0
        domain = Domain.create_aligned(-half, half, mesh)
    return domain


class PrivacyAccountant(abc.ABC):
    """Accumulates events and reports the ε they spend at a given δ.

    Subclasses implement :meth:`_approximate_epsilon`; flattening, the dry run and
    pure-ε basic composition live here.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._events: list[DpEvent] = []
        self._leaves = _Leaves()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(events={len(self._events)})"

    @property
    def events(self) -> tuple[DpEvent, ...]:
        """The events composed so far, in order."""
        return tuple(self._events)

    @property
    def ledger_event(self) -> ComposedEvent:
        """Everything composed so far, as one event."""
        return ComposedEvent(self._events)

    def supports(self, event: DpEvent) -> bool:
        """Whether :meth:`compose` would accept ``event`` (no state change)."""
        try:
            _flatten_event(event, 1)
        except UnsupportedEventError:
            return False
        return True

    def compose(self, event: DpEvent, *, count: int = 1) -> PrivacyAccountant:
        """Add ``event`` repeated ``count`` times.

        The whole tree is checked first; on an unsupported sub-event this raises
        :class:`~protocols.errors.UnsupportedEventError` naming it, and the
        accountant is unchanged.

        Returns
        -------
        The accountant itself, for chaining.
        """
        n = check_int("count", count, low=0)
        leaves = _flatten_event(event, n)  # dry run: raises before any state change
        self._leaves = self._leaves.merged(leaves)
        self._events.append(event if n == 1 else SelfComposedEvent(event=event, count=n))
        return self

    def get_epsilon(self, *, delta: float) -> float:
        """The ε of everything composed so far at ``delta`` in (0, 1) (an upper bound)."""
        d = _check_delta(delta)
        leaves = self._leaves
        if leaves.empty:
            return 0.0
        approx = 0.0
        if leaves.gaussian or leaves.rho > 0.0:
            approx = self._approximate_epsilon(leaves, d)
        return approx + leaves.pure_epsilon

    @abc.abstractmethod
    def _approximate_epsilon(self, leaves: _Leaves, delta: float) -> float:
        """ε at ``delta`` of the Gaussian and zCDP leaves (pure-ε ones excluded)."""


class RDPAccountant(PrivacyAccountant):
    """Rényi-DP accountant on :data:`DEFAULT_RDP_ORDERS` (or the given orders).

    Examples
    --------
    >>> acc = RDPAccountant().compose(
    ...     PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.0)),
    ...     count=1000)
    >>> round(acc.get_epsilon(delta=1e-5), 2)
    2.1
    """

    name: ClassVar[str] = "rdp"

    def __init__(self, *, orders: tuple[float, ...] = DEFAULT_RDP_ORDERS) -> None:
        super().__init__()
        arr = np.asarray(orders, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0 or not np.all(arr > 1.0):
            raise InvalidParameterError(
                f"`orders` must be a non-empty sequence of reals > 1; got {orders!r}"
            )
        self._orders = arr

    def _approximate_epsilon(self, leaves: _Leaves, delta: float) -> float:
        return _rdp_to_epsilon(self._orders, _rdp_curve(leaves, self._orders), delta)


class PRVAccountant(PrivacyAccountant):
    """PRV accountant (Gopi et al. 2021) on Opacus' implementation.

    Parameters
    ----------
    eps_error:
        Width of the numerical error band on ε. ``None`` (default) is adaptive:
        0.01, refined to 0.5 % of ε (at least 1e-5) when ε < 1, so the reported
        upper bound is within ~1 % of the true value also for small ε. The band is
        widened when the discretisation would exceed 2**21 points (very large ε,
        where it stays far below 1 % of ε). Should the numerical composition fail,
        the RDP bound is reported with a :class:`PrivacyAccountingWarning`.

    Examples
    --------
    >>> acc = PRVAccountant().compose(
    ...     PoissonSampledEvent(sample_rate=0.01, event=GaussianEvent(noise_multiplier=1.0)),
    ...     count=1000)
    >>> round(acc.get_epsilon(delta=1e-5), 1)
    1.8
    """

    name: ClassVar[str] = "prv"
    _DELTA_SPLITS: ClassVar[tuple[float, ...]] = (0.1, 0.5, 0.9)
    _MAX_POINTS: ClassVar[float] = float(2**21)

    def __init__(self, *, eps_error: float | None = None) -> None:
        super().__init__()
        self._eps_error = (
            None
            if eps_error is None
            else check_real("eps_error", eps_error, low=0.0, high=1.0, low_open=True)
        )
        self._rdp_fallback = RDPAccountant()

    def _prv_epsilon(self, gaussian: dict[tuple[float, float], int], delta: float) -> float:
        if all(q == 1.0 for q, _ in gaussian):
            # Composed full-batch Gaussians are one Gaussian: exact, no discretisation.
            mu = math.sqrt(math.fsum(n / z**2 for (_, z), n in gaussian.items()))
            return _gaussian_epsilon(mu, delta)
        from opacus.accountants.analysis.prv import (  # lazy: imports torch
            PoissonSubsampledGaussianPRV,
            TruncatedPrivacyRandomVariable,
            compose_heterogeneous,
            compute_safe_domain_size,
            discretize,
        )

        history = sorted(gaussian.items())
        prvs = [PoissonSubsampledGaussianPRV(q, z) for (q, z), _ in history]
        counts = [n for _, n in history]
        total = sum(counts)
        delta_error = delta / 1000.0
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            # Opacus: half-width max(L_rdp, eps_error) + 3 (Gopi et al., Remark 5.6).
            l_rdp = compute_safe_domain_size(prvs, counts, 0.0, delta_error) - 3.0

        def run(eps_error: float) -> float:
            spread = math.sqrt(total * math.log(12.0 / delta_error) / 2.0)
            half = max(l_rdp, eps_error) + 3.0
            # Keep the grid under _MAX_POINTS by widening the error band.
            if 2.0 * half * spread / eps_error > self._MAX_POINTS:
                eps_error = 2.0 * (l_rdp + 3.0) * spread / self._MAX_POINTS
                half = max(l_rdp, eps_error) + 3.0
            domain = _fft_friendly_domain(half, eps_error / spread)
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.simplefilter("ignore")  # q -> 1 takes log(0) on a masked branch
                dprvs = [
                    discretize(
                        TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max), domain
                    )
                    for prv in prvs
                ]
                composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)
                _, _, eps_upper = composed.compute_epsilon(delta, delta_error, eps_error)
            eps = float(eps_upper)
            if not math.isfinite(eps):
                raise FloatingPointError(f"PRV returned ε = {eps}")
            return eps

        try:
            if self._eps_error is not None:
                return run(self._eps_error)
            eps_error, eps = 0.01, run(0.01)
            for _ in range(3):  # refine until the band is <= 1 % of ε (or 1e-5)
                if eps_error <= max(1e-5, 0.01 * eps):
                    break
                eps_error = max(1e-5, 0.005 * max(eps - 2.0 * eps_error, 0.0))
                eps = min(eps, run(eps_error))
            return eps
        except (RuntimeError, ValueError, FloatingPointError, OverflowError) as exc:
            warnings.warn(
                f"PRV composition failed numerically ({exc}); reporting the RDP bound instead",
                PrivacyAccountingWarning,
                stacklevel=4,
            )
            rdp_leaves = _Leaves(gaussian=dict(gaussian))
            return self._rdp_fallback._approximate_epsilon(rdp_leaves, delta)

    def _approximate_epsilon(self, leaves: _Leaves, delta: float) -> float:
        if leaves.rho == 0.0:
            return self._prv_epsilon(leaves.gaussian, delta)
        rdp_all = self._rdp_fallback._approximate_epsilon(leaves, delta)
        if not leaves.gaussian:
            return rdp_all
        rho_only = _Leaves(rho=leaves.rho)
        candidates = [rdp_all]
        for f in self._DELTA_SPLITS:
            candidates.append(
                self._prv_epsilon(leaves.gaussian, delta * f)
                + self._rdp_fallback._approximate_epsilon(rho_only, delta * (1.0 - f))
            )
        return min(candidates)


def _is_accountant(cls: object) -> str | None:
    if isinstance(cls, type) and issubclass(cls, PrivacyAccountant):
        return None
    return f"`cls` must be a PrivacyAccountant subclass; got {cls!r}"


ACCOUNTANTS: Registry[type[PrivacyAccountant]] = Registry("accountant", check=_is_accountant)
ACCOUNTANTS.register(PRVAccountant.name, PRVAccountant)
ACCOUNTANTS.register(RDPAccountant.name, RDPAccountant)


def register_accountant(name: str, cls: type[PrivacyAccountant], *, force: bool = False) -> None:
    """Register ``cls`` under ``name`` for :func:`make_accountant`.

    Raises
    ------
    InvalidParameterError
        If ``name`` is taken and ``force`` is false (no silent override), or if
        ``cls`` is not a :class:`PrivacyAccountant` subclass.
    """
    ACCOUNTANTS.register(name, cls, force=force)


def available_accountants() -> tuple[str, ...]:
    """Registered accountant names, sorted."""
    return tuple(ACCOUNTANTS.names())


def make_accountant(name: str = "prv") -> PrivacyAccountant:
    """A fresh accountant registered under ``name`` (``"prv"`` or ``"rdp"`` built in)."""
    if name not in ACCOUNTANTS:
        raise InvalidParameterError(
            f"`accountant` must be one of {list(available_accountants())}; got {name!r}"
        )
    return ACCOUNTANTS.get(name)()
