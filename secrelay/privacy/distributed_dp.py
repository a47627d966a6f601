"""Distributed DP-FedAvg under SecAgg+: :class:`DistributedGaussianSum`.

Every device clips, quantises and adds its share of *distributed discrete Gaussian*
noise in the integer domain **before masking** (Kairouz, Liu & Steinke, ICML 2021,
through :class:`protocols.dp.DistributedDiscreteGaussianPlan`), and SecAgg+ sums the
integers exactly (:class:`~secrelay.federated.secure.SecureSum` with a
:class:`~secrelay.federated.secure.DeviceEncoding`), so the server only ever decodes
a noised sum. Privacy unit: the user (device); each round is one
``DistributedDiscreteGaussianEvent`` of the honest survivors, without amplification
(the server sees who takes part), under *zero-out* adjacency: the guarantee protects
what a participant sends (its update replaced by zeros), not whether it took part.

Randomness. Under ``randomness="secure"`` (default) each device's rounding and noise
share come from the OS CSPRNG and the SecAgg+ keys are not derived from ``seed``
(``SecureSumSettings(deterministic=False)``); ``"reproducible"`` derives all of them
from ``seed``.

The clipping transform, the common base :class:`~secrelay.privacy.user_dp.UserLevelDPSum`
and the central sum live in :mod:`secrelay.privacy.user_dp` (which explains the
sensitivity, the public denominator and the accounting of all three); this module
holds what only the SecAgg+ path needs — the noise plan, the word precision and the
device encoding — and imports that base, never the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from protocols.dp import (
    Adjacency,
    DistributedDiscreteGaussianPlan,
    DpEvent,
    LedgerRecord,
    Randomness,
)
from protocols.errors import InvalidParameterError, ProtocolAbort
from protocols.secagg import SecAggConfig
from secrelay.federated.aggregation import SumResult
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.secure import DeviceEncoding, SecureSum, SecureSumSettings
from secrelay.federated.transcript import Channel
from secrelay.privacy.user_dp import (
    PACKED_NAME,
    UserLevelDPSum,
    _positive,
    pack_contributions,
    unpack_sum,
)

__all__ = ["DistributedGaussianSum", "NoiseShares", "auto_scale"]

NoiseShares = Literal["participants", "threshold"]
"""How many noise shares a round's plan counts on: every participant, or the SecAgg
threshold (see :class:`DistributedGaussianSum`)."""


def auto_scale(*, clipping_norm: float, dimension: int, gamma: float = 8.0) -> float:
    """Integer units per float unit so that ``C·scale = gamma·√d``.

    The conditional-rounding bound inflates the integer sensitivity to about
    ``√((C·s)² + d/4 + (C·s + √d/2))`` (β = e^{−1/2}), i.e. by a factor
    ``√(1 + 1/(4γ²) + 1/(γ√d))``: 0.2 % for γ = 8.
    """
    return gamma * math.sqrt(dimension) / _positive("clipping_norm", clipping_norm)


class _DDGEncoding(DeviceEncoding):
    """Each device: clip, scale, conditionally round, add its discrete Gaussian share."""

    def __init__(self, owner: DistributedGaussianSum, dimension: int) -> None:
        self.owner = owner
        self.dimension = dimension

    def precision_bits(
        self, *, round: int, num_devices: int, shapes: Mapping[str, tuple[int, ...]]
    ) -> int:
        return self.owner.precision_bits(self.owner.plan(num_devices, self.dimension))

    def encode(
        self, contribution: Mapping[str, np.ndarray], *, round: int, device: int, num_devices: int
    ) -> np.ndarray:
        plan = self.owner.plan(num_devices, self.dimension)
        gen = self.owner._generator(round, int(device))
        return plan.encode(np.asarray(contribution[PACKED_NAME]).ravel(), generator=gen)

    def decode(
        self,
        total: np.ndarray,
        *,
        round: int,
        survivors: tuple[int, ...],
        num_devices: int,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, np.ndarray]:
        plan = self.owner.plan(num_devices, self.dimension)
        self.owner.last_integer_sum = np.asarray(total, dtype=np.int64).copy()
        return {PACKED_NAME: plan.decode(total).reshape(shapes[PACKED_NAME])}


class DistributedGaussianSum(UserLevelDPSum):
    """Distributed DP-FedAvg under SecAgg+: each device adds discrete Gaussian noise
    to its quantised update before masking; the server decodes only the noised sum.

    Per round with n devices entering the protocol, the plan
    (:class:`protocols.dp.DistributedDiscreteGaussianPlan`) uses
    ``min_survivors`` = n (``noise_shares="participants"``: if all survive, the total
    noise variance is exactly (z·Δ)²; dropouts leave less noise and are accounted with
    the actual survivors) or the SecAgg threshold t (``"threshold"``: every round that
    completes carries at least (z·Δ)², at the price of more noise). Δ is the
    integer-domain L2 sensitivity after conditional rounding of ``C·scale``.

    Modulus and headroom. A device's integer vector is bounded per coordinate by
    ``Δ + k·σ_dev`` with ``k = headroom_sigmas`` (|rounded coordinate| <= its vector's
    norm <= Δ, plus the noise share's tail); the word precision is
    ``q = ⌈log2(Δ + k·σ_dev + 1)⌉ + 1`` bits, and SecAgg+ sums modulo
    ``2^(q + ⌈log2 n⌉)``, which never wraps. A share beyond the headroom
    (probability <= 2·d·e^{−k²/2} per device, about 10^-27 for k = 12, d = 10^5) is
    refused by :class:`~secrelay.federated.secure.SecureSum` with an error — never
    clipped, which would void the analysis.

    Parameters
    ----------
    settings:
        The :class:`SecureSum` to wrap, or the secure-sum graph settings (neighbours,
        threshold, signing, dropout rate) of a new one (default: keys from the seed
        only under reproducible randomness). Under secure randomness its keys must
        not derive from the seed (``deterministic=False``).
    scale:
        Integer units per float unit; ``None``: :func:`auto_scale` (γ = 8).
    num_colluders:
        Devices assumed to collude with the server; their noise is not counted.
    noise_shares:
        ``"participants"`` or ``"threshold"`` (above).
    headroom_sigmas:
        k above, >= 8.
    others:
        See :class:`UserLevelDPSum`.
    """

    mechanism = "dp_fedavg[distributed_discrete_gaussian]"
    adjacency: Adjacency = "zero_out"

    def __init__(
        self,
        settings: SecureSum | SecureSumSettings | None = None,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float,
        scale: float | None = None,
        num_colluders: int = 0,
        noise_shares: NoiseShares = "participants",
        headroom_sigmas: float = 12.0,
        run_id: str = "run",
        seed: int = 0,
        randomness: Randomness = "secure",
        spec: ReleaseSpec | None = None,
    ) -> None:
        super().__init__(
            noise_multiplier=noise_multiplier,
            clipping_norm=clipping_norm,
            delta=delta,
            run_id=run_id,
            seed=seed,
            randomness=randomness,
            spec=spec,
        )
        # The SecAgg+ sum this wraps: the one given, or one over ``settings``.
        reproducible = self.randomness == "reproducible"
        self.inner = (
            settings
            if isinstance(settings, SecureSum)
            else SecureSum(settings or SecureSumSettings(deterministic=reproducible), seed=seed)
        )
        self.settings = self.inner.settings
        if not reproducible and self.settings.deterministic:
            raise InvalidParameterError(
                "`randomness` = 'secure' but the SecAgg+ settings derive every key from the "
                "seed (`deterministic` = True); pass SecureSumSettings(deterministic=False) "
                "or randomness='reproducible'"
            )
        self.scale = None if scale is None else _positive("scale", scale)
        if (
            isinstance(num_colluders, bool)
            or not isinstance(num_colluders, int)
            or num_colluders < 0
        ):
            raise InvalidParameterError(
                f"`num_colluders` must be an int >= 0; got {num_colluders!r}"
            )
        self.num_colluders = num_colluders
        if noise_shares not in ("participants", "threshold"):
            raise InvalidParameterError(
                f"`noise_shares` must be 'participants' or 'threshold'; got {noise_shares!r}"
            )
        self.noise_shares: NoiseShares = noise_shares
        if not (isinstance(headroom_sigmas, (int, float)) and headroom_sigmas >= 8):
            raise InvalidParameterError(f"`headroom_sigmas` must be >= 8; got {headroom_sigmas!r}")
        self.headroom_sigmas = float(headroom_sigmas)
        self.stages = SecureSum.stages
        self.last_integer_sum: np.ndarray | None = None
        self.last_plan: DistributedDiscreteGaussianPlan | None = None

    def threshold(self, num_devices: int, dimension: int) -> int:
        """The SecAgg+ threshold t of a round with ``num_devices`` devices."""
        s = self.settings
        cfg = SecAggConfig(
            n_clients=max(num_devices, 2),
            vector_length=dimension,
            neighbours=s.neighbours,
            threshold=s.threshold,
            max_dropout_rate=s.max_dropout_rate,
        )
        assert cfg.threshold is not None
        return int(cfg.threshold)

    def plan(self, num_devices: int, dimension: int) -> DistributedDiscreteGaussianPlan:
        """The public noise plan of a round with ``num_devices`` devices."""
        shares = (
            num_devices
            if self.noise_shares == "participants"
            else min(num_devices, self.threshold(num_devices, dimension))
        )
        if shares - self.num_colluders < 1:
            raise InvalidParameterError(
                f"{num_devices} devices with `num_colluders` = {self.num_colluders} leave no "
                "honest noise share; sample more devices or assume fewer colluders"
            )
        scale = self.scale or auto_scale(clipping_norm=self.sensitivity, dimension=dimension)
        return DistributedDiscreteGaussianPlan(
            noise_multiplier=self.noise_multiplier,
            clipping_norm=self.sensitivity,
            scale=scale,
            dimension=dimension,
            min_survivors=shares,
            num_colluders=self.num_colluders,
        )

    def precision_bits(self, plan: DistributedDiscreteGaussianPlan) -> int:
        """Word precision q holding ``Δ + k·σ_dev`` in ``[−2^(q−1), 2^(q−1))``."""
        bound = plan.l2_sensitivity + self.headroom_sigmas * math.sqrt(plan.per_device_variance)
        bits = math.ceil(math.log2(math.floor(bound) + 1)) + 1
        if bits > 32:
            raise InvalidParameterError(
                f"the noisy shares need {bits} > 32 bits per coordinate (Δ = "
                f"{plan.l2_sensitivity:.4g}, σ_dev = {math.sqrt(plan.per_device_variance):.4g});"
                " lower `scale`"
            )
        return max(bits, 2)

    def planned_record(
        self,
        round: int,
        sampled: Sequence[int],
        *,
        dimension: int,
        min_survivors: int,
        dropouts: bool,
    ) -> LedgerRecord | None:
        """The largest-ρ record over the devices that may enter the protocol (n) and
        survive (m): with dropouts, n and m range down to the fewest the round
        accepts (``min_survivors``, the SecAgg threshold)."""
        n_max = len(sampled)
        if n_max < 2:
            return None
        worst: tuple[float, DpEvent, DistributedDiscreteGaussianPlan] | None = None
        n_range = range(max(2, min_survivors), n_max + 1) if dropouts else (n_max,)
        for n in n_range:
            plan = self.plan(n, dimension)
            lowest = max(min_survivors, self.threshold(n, dimension)) if dropouts else n
            for m in range(max(lowest, self.num_colluders + 1), n + 1):
                ev = plan.event(num_survivors=m)
                if worst is None or ev.rho > worst[0]:
                    worst = (ev.rho, ev, plan)
        if worst is None:
            return None
        _, event, plan = worst
        assert isinstance(event, DpEvent)
        return self._record(
            round,
            event,
            sorted(sampled),
            sigma=math.sqrt(plan.per_device_variance * getattr(event, "num_shares", 1))
            / plan.scale,
            sensitivity=self.sensitivity,
            sample_rate=None,
        )

    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
    ) -> SumResult:
        clipped, shapes = pack_contributions(contributions, self.spec, self.clipping_norm)
        if not clipped:
            return SumResult({}, ())
        if len(clipped) < 2:
            # SecAgg+ cannot hide one device's update: nothing is sent, nothing released.
            raise ProtocolAbort(
                "collect",
                f"round {round}: {len(clipped)} device entered secure aggregation, which "
                "needs at least 2; nothing was released",
            )
        dimension = int(next(iter(clipped.values()))[PACKED_NAME].size)
        n = len(clipped)
        plan = self.plan(n, dimension)
        self.last_plan = plan
        result = self.inner.aggregate(
            round,
            clipped,
            channel,
            dropouts=dropouts,
            device_encoding=_DDGEncoding(self, dimension),
        )
        self.last_bytes_per_client = self.inner.last_bytes_per_client
        survivors = tuple(result.survivors)
        m = len(survivors)
        if m - self.num_colluders < 1:
            raise InvalidParameterError(
                f"round {round}: {m} survivors with `num_colluders` = {self.num_colluders} "
                "leave no honest noise share"
            )
        event = plan.event(num_survivors=m)
        record = self._record(
            round,
            event,
            survivors,
            sigma=math.sqrt(plan.total_variance(num_survivors=m)) / plan.scale,
            sensitivity=self.sensitivity,
            sample_rate=None,
        )
        total = np.asarray(result.sums[PACKED_NAME], dtype=np.float64)
        sums = unpack_sum(total, self.spec, self.clipping_norm, shapes, float(m))
        return SumResult(sums, survivors, privacy_records=(record,))
