"""DP-FTRL (tree aggregation) and banded matrix factorization as user-level DP sums.

:class:`CorrelatedNoiseSum` wraps a sum protocol like
:class:`~secrelay.privacy.user_dp.CentralGaussianSum` does, with noise that is
correlated across rounds (:mod:`protocols.dp.correlated`): round t releases the
clipped sum x_t plus the *increment* of the mechanism's noisy prefix sum,
x_t + σ·(noise of prefix t − noise of prefix t−1), σ = z·C.

How it combines with FedAvg's server step. A FedAvg-family strategy adds the released
mean to its model, w_t = w_{t−1} + η·(released sum)/n, so after t rounds
w_t = w_0 + (η/n)·(noisy prefix sum of the clipped updates): exactly DP-FTRL's
(Kairouz et al. 2021) model "initial + lr · noisy prefix sum" (updates are model
deltas, the negative of gradients). With server momentum β (``[strategy.params]
server_momentum``), the heavy-ball step on the increments equals DP-FTRLM's momentum
on the prefix sums (v_t = β v_{t−1} + S̃_t, w_t = w_0 + η v_t): both give
w_t = w_0 + η Σ_r g_r (1 − β^{t−r+1})/(1 − β). Adaptive server optimizers (FedAdam)
see the noisy increments and are post-processing too, but no longer FTRL. ``n`` is a
public number: the fixed cohort size (fixed sampling) or q·N (Poisson).

Trust. The noise is added by the server after the sum (central DP): the server is
trusted to add it and to keep its noise private. Under secure aggregation the server
sees only the secure sum of the clipped updates, which protects individual updates
from it, but the DP guarantee of the released models is still central — it holds
against whoever sees the models or the released sums (devices, analysts, the public),
not against a server that skips its noise. Distributed noise shares for the tree
(each device adding its share of every node's noise) are not implemented.

Privacy unit and adjacency. The user (device), zero-out: a participant's whole
update replaced by zeros while who takes part stays public — the relation
dp_accounting states tree aggregation under ("replace special"); no amplification
is claimed, so the guarantee does not depend on hiding the sample. A device's
participation pattern p (the releases it contributed to) gives squared sensitivity
‖C·p‖²·C² (tree: Σ over completed nodes of c²). Each record is the round's Gaussian
increment (:func:`protocols.dp.gaussian_increment`) of the worst pattern so far
over every device; composing rounds 1..t gives the whole stream's Gaussian, so the
ledger and ``secrelay audit`` give the right ε with any registered accountant. The
record lists the whole population (the worst-case increment bounds every device).

Participation limits. With ``max_participations`` k > 0 a device is counted in at
most k releases, any two at least ``min_separation`` b apart; a sampled device that
would break this is left out of the round's sum (a rule on the public schedule, not
on data), so the noise calibrated to that bound is never exceeded. With k = 0 no
limit is enforced and the records follow the actual schedule (then z must be
calibrated on the public, reproducible schedule, see :mod:`secrelay.privacy.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocols.dp import (
    BandedMatrixNoise,
    CorrelatedNoise,
    DpEvent,
    LedgerRecord,
    Randomness,
    TreeAggregationNoise,
    gaussian_increment,
    stream_sensitivity_squared,
)
from protocols.errors import ConfigError, InvalidParameterError
from secrelay.federated.aggregation import SumProtocol, SumResult
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.transcript import Channel
from secrelay.privacy.user_dp import PACKED_NAME, UserLevelDPSum, pack_contributions, unpack_sum

__all__ = ["CorrelatedNoiseSum", "mechanism_name"]


def mechanism_name(noise: CorrelatedNoise) -> str:
    """The ledger's mechanism name: ``dp_ftrl[tree]``, ``dp_ftrl[efficient_tree]``
    (``…,restart=R]`` with restarts) or ``banded_mf[bands=b]``."""
    if isinstance(noise, TreeAggregationNoise):
        kind = "efficient_tree" if noise.efficient else "tree"
        restart = "" if noise.restart_every is None else f",restart={noise.restart_every}"
        return f"dp_ftrl[{kind}{restart}]"
    if isinstance(noise, BandedMatrixNoise):
        return f"banded_mf[bands={noise.bands}]"
    return f"correlated[{noise.name}]"


class CorrelatedNoiseSum(UserLevelDPSum):
    """User-level DP sum with DP-FTRL tree noise or banded-MF noise (module doc).

    Parameters
    ----------
    inner:
        Delivers Σ clip(Δ_k) (:class:`~secrelay.federated.aggregation.PlaintextSum`,
        or :class:`~secrelay.federated.secure.SecureSum`: the server still adds the noise).
    mechanism:
        A fresh :class:`protocols.dp.CorrelatedNoise` (tree or banded MF).
    participants:
        The public denominator n of the released mean (> 0).
    population:
        Ids of every device; the records cover all of them.
    max_participations, min_separation:
        The enforced participation limits (k = 0: none).
    others:
        See :class:`~secrelay.privacy.user_dp.UserLevelDPSum`.

    Examples
    --------
    >>> from protocols.dp import TreeAggregationNoise
    >>> from secrelay.federated.aggregation import PlaintextSum
    >>> from secrelay.privacy.user_dp import fedavg_spec
    >>> s = CorrelatedNoiseSum(PlaintextSum(), mechanism=TreeAggregationNoise(),
    ...     noise_multiplier=4.0, clipping_norm=1.0, delta=1e-5, participants=2,
    ...     population=(0, 1, 2), randomness="reproducible", spec=fedavg_spec(1.0, 2))
    >>> r = s.aggregate(1, {0: {"delta": np.ones(2), "weight": np.ones(1)}}, Channel())
    >>> r.privacy_records[0].event, r.privacy_records[0].adjacency
    (GaussianEvent(noise_multiplier=4.0), 'zero_out')
    >>> r = s.aggregate(2, {0: {"delta": np.ones(2), "weight": np.ones(1)}}, Channel())
    >>> r.privacy_records[0].event  # round 2 completes the node [1, 2]: S 1 -> 6
    GaussianEvent(noise_multiplier=1.7888543819998317)
    """

    adjacency = "zero_out"

    def __init__(
        self,
        inner: SumProtocol,
        *,
        mechanism: CorrelatedNoise,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float,
        participants: float,
        population: Sequence[int],
        max_participations: int = 0,
        min_separation: int = 1,
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
        if not isinstance(mechanism, CorrelatedNoise) or mechanism.round != 0:
            raise InvalidParameterError(
                f"`mechanism` must be a fresh protocols.dp.CorrelatedNoise; got {mechanism!r}"
            )
        if not (isinstance(participants, (int, float)) and float(participants) > 0):
            raise InvalidParameterError(f"`participants` must be > 0; got {participants!r}")
        if isinstance(max_participations, bool) or int(max_participations) < 0:
            raise InvalidParameterError(
                f"`max_participations` must be >= 0 (0: no limit); got {max_participations!r}"
            )
        if isinstance(min_separation, bool) or int(min_separation) < 1:
            raise InvalidParameterError(f"`min_separation` must be >= 1; got {min_separation!r}")
        if not population:
            raise InvalidParameterError("`population` must list at least one device")
        self.inner = inner
        self.noise = mechanism
        self.mechanism = mechanism_name(mechanism)
        self.participants = float(participants)
        self.population = tuple(sorted(int(d) for d in population))
        self.max_participations = int(max_participations)
        self.min_separation = int(min_separation)
        self.stages = tuple(inner.stages)
        # Releases each device contributed to (1-based release index), and S so far.
        self.history: dict[int, list[int]] = {}
        self.spent_squared = 0.0

    def _check_fresh(self, round: int) -> None:
        """A run resumed without this sum's state would restart the noise stream with
        no participation history and under-count: refuse it."""
        if self.noise.round == 0 and round != 1:
            raise ConfigError(
                f"{self.mechanism}: the first release is round {round}, not 1, and no noise "
                "state was restored (a checkpoint from before DP-FTRL / banded-MF state was "
                "saved, or a loop built without it); rerun it from the start"
            )

    # --- checkpointing ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The noise stream (tree nodes / recent rows), each device's releases and S."""
        return {
            "mechanism": self.mechanism,
            "noise": self.noise.state_dict(),
            "history": {int(d): list(r) for d, r in self.history.items()},
            "spent_squared": float(self.spent_squared),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return  # nothing released yet (or a fresh loop): stays fresh
        if state.get("mechanism") != self.mechanism:
            raise InvalidParameterError(
                f"the checkpoint's correlated-noise state is for {state.get('mechanism')!r}; "
                f"this run uses {self.mechanism!r}"
            )
        self.noise.load_state_dict(state["noise"])
        self.history = {int(d): [int(r) for r in rs] for d, rs in state["history"].items()}
        self.spent_squared = float(state["spent_squared"])

    # --- participation -----------------------------------------------------------
    def allowed(self, device: int, step: int) -> bool:
        """Whether ``device`` may contribute to release ``step`` under the limits."""
        past = self.history.get(int(device), [])
        if self.max_participations and len(past) >= self.max_participations:
            return False
        return not past or step - past[-1] >= self.min_separation

    def _event_after(self, devices: Sequence[int], step: int) -> tuple[DpEvent, float]:
        hist = {d: list(r) for d, r in self.history.items()}
        for d in devices:
            hist.setdefault(int(d), []).append(step)
        after = stream_sensitivity_squared(self.noise, hist, upto=step)
        after = max(after, self.spent_squared)
        event = gaussian_increment(
            noise_multiplier=self.noise_multiplier, before=self.spent_squared, after=after
        )
        return event, after

    def _round_record(self, round: int, event: DpEvent) -> LedgerRecord:
        return self._record(
            round,
            event,
            self.population,
            sigma=self.noise_multiplier * self.sensitivity,
            sensitivity=self.sensitivity,
            sample_rate=None,
        )

    def planned_record(
        self,
        round: int,
        sampled: Sequence[int],
        *,
        dimension: int,
        min_survivors: int,
        dropouts: bool,
    ) -> LedgerRecord | None:
        self._check_fresh(round)
        step = self.noise.round + 1
        counted = [d for d in sampled if self.allowed(d, step)]
        event, _ = self._event_after(counted, step)
        return self._round_record(round, event)

    # --- the release ------------------------------------------------------------
    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
    ) -> SumResult:
        self._check_fresh(round)
        step = self.noise.round + 1
        counted = {d: c for d, c in contributions.items() if self.allowed(d, step)}
        packed, shapes = pack_contributions(counted, self.spec, self.clipping_norm)
        result = self.inner.aggregate(round, packed, channel, dropouts=dropouts)
        survivors = tuple(result.survivors)
        if survivors:
            total = np.asarray(result.sums[PACKED_NAME], dtype=np.float64)
        else:
            if not self.spec.shapes and not all(n in shapes for n, _ in self.spec.noised):
                raise InvalidParameterError(
                    "a DP-FTRL round nobody survived releases the noise alone, whose shape "
                    "the release spec must give (ReleaseSpec.shapes)"
                )
            if not all(n in shapes for n, _ in self.spec.noised):
                shapes = {n: tuple(s) for n, s in self.spec.shapes}
            size = sum(int(np.prod(shapes[n], dtype=np.int64)) for n, _ in self.spec.noised)
            total = np.zeros(size, dtype=np.float64)
        noise = self.noise.next_noise(self._generator(round), total.shape)
        noisy = total + (self.noise_multiplier * self.sensitivity) * noise
        event, after = self._event_after(survivors, step)
        for d in survivors:
            self.history.setdefault(int(d), []).append(step)
        self.spent_squared = after
        sums = unpack_sum(noisy, self.spec, self.clipping_norm, shapes, self.participants)
        return SumResult(
            sums,
            survivors,
            privacy_records=(self._round_record(round, event),),
            noise_only=not survivors,
        )


def make_correlated_noise(
    mechanism: str, *, bands: int = 1, efficient: bool = True, restart_every: int = 0
) -> CorrelatedNoise:
    """The noise of ``[privacy] user_mechanism`` ``"dp_ftrl"`` or ``"banded_mf"``."""
    if mechanism == "dp_ftrl":
        return TreeAggregationNoise(efficient=efficient, restart_every=restart_every or None)
    if mechanism == "banded_mf":
        return BandedMatrixNoise(bands=bands)
    raise InvalidParameterError(f"`mechanism` must be 'dp_ftrl' or 'banded_mf'; got {mechanism!r}")


def planned_sensitivity_squared(
    noise: CorrelatedNoise,
    *,
    rounds: int,
    max_participations: int,
    min_separation: int,
    schedule: Mapping[int, Sequence[int]] | None = None,
) -> float:
    """S (units of C²) that the run's noise is calibrated to: the bound for
    ``max_participations`` k > 0 rounds ``min_separation`` apart, else the worst
    device of the public (reproducible) ``schedule`` (device → rounds it is sampled in).

    Raises
    ------
    InvalidParameterError
        If k = 0 and there is no public schedule (secure sampling).
    """
    if max_participations > 0:
        return noise.sensitivity_bound(
            steps=max(1, rounds),
            max_participations=max_participations,
            min_separation=min_separation,
        )
    if schedule is None:
        raise InvalidParameterError(
            "correlated noise without privacy.max_participations needs the public, "
            "reproducible sampling schedule to bound each device's participations; set "
            "privacy.max_participations (and min_separation) under secure randomness"
        )
    return max(1.0, stream_sensitivity_squared(noise, schedule, upto=max(1, rounds)))
