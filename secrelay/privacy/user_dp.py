"""User-level DP on the aggregates: DP-FedAvg (McMahan et al., ICLR 2018) as wrappers.

Nothing here forks a strategy. User-level DP is three small pieces around any
FedAvg-family strategy (FedAvg, FedProx, FedAdagrad, FedAdam) whose contributions
are ``delta`` (the update) and ``weight`` (uniform weighting: 1 per device):

* :class:`ClipUpdate` — an :class:`~secrelay.federated.client.UpdateTransform` that
  clips the device's model update Δ_k to L2 norm ``clipping_norm`` C on the device;
* :class:`CentralGaussianSum` — a :class:`~secrelay.federated.aggregation.SumProtocol`
  wrapper: the server adds Gaussian noise N(0, (z·C)² I) to the plaintext sum of the
  clipped updates (central DP: the server is trusted with the individual updates);
* :class:`~secrelay.privacy.distributed_dp.DistributedGaussianSum` — with secure
  aggregation, distributed discrete Gaussian noise added on the devices before
  masking. It lives in :mod:`secrelay.privacy.distributed_dp`, apart from the
  SecAgg-free pieces here; both sums share :class:`UserLevelDPSum` (validation,
  noise seeds, ledger records) and the packing of the released names
  (:func:`pack_contributions`, :func:`unpack_sum`).

Sensitivity. Privacy unit: the user (device) — its whole update. Each wrapper
re-clips every device's ``delta`` jointly to C on the device side (a no-op after
:class:`ClipUpdate`, but it makes the bound hold for any contribution rule), and the
released sum changes by at most C in L2 when one user is added or removed.

The denominator. ``weight`` is never taken from the devices: the wrappers replace
its sum by a public number, so the count of participants is not released through
the model. With central noise and Poisson sampling it is the *expected* number of
participants q·N (McMahan et al.'s fixed-denominator estimator f̃_f); otherwise it
is the number of survivors, which the server knows from the protocol anyway (and
which the accounting below does not hide: no amplification is claimed there).

Accounting (one ledger record per round, unit ``"user"``; every record names the
neighbouring relation its ε is stated under, :data:`protocols.dp.Adjacency`):

==========================  ================================================  ==============  =====================
noise / sampling            event per round                                   adjacency       ``devices``
==========================  ================================================  ==============  =====================
central, Poisson(q)         ``PoissonSampledEvent(q, GaussianEvent(z))``      add/remove,     the whole population
                            (noise alone when nobody was sampled)             sensitivity C
central, fixed-size         ``GaussianEvent(z)`` (no amplification, q = 1),   replace-one,    the survivors
                            noise z·2C                                        sensitivity 2C
distributed (SecAgg)        ``DistributedDiscreteGaussianEvent`` of the       zero-out,       the survivors
                            honest survivors (no amplification)               sensitivity C
==========================  ================================================  ==============  =====================

* Poisson amplification needs the sample to be hidden from the adversary. With
  central DP the trusted server keeps it; the amplified guarantee then holds for
  every user, sampled or not, so the record lists the whole population and a
  per-device query gives the same (correct) ε as the global one. It also needs every
  round to release whatever the sample: a round that sampled nobody releases the
  noise alone (one record; the strategy applies it), and the loop never aborts or
  skips such a round (:attr:`~secrelay.federated.aggregation.SumProtocol.always_releases`)
  — skipping it would tell that nobody, so not the user, was sampled. And the sample
  must be secret from whoever knows the config: under secure randomness it is drawn
  from the OS (:class:`~secrelay.federated.loop.FederatedLoop`).
* Fixed-size sampling (N of the population, without replacement) keeps the number
  of participants fixed, so the neighbouring populations are those where one user's
  data is *replaced* by another's: with the sample hidden, the removed user's slot is
  filled by someone else and the sum moves by x_u − x_v, up to 2C. The round is
  therefore noised and accounted at sensitivity 2C (noise z·2C, event
  ``GaussianEvent(z)``), without amplification; the record lists the survivors, and a
  device's ε composes the rounds it was sampled in (a guarantee given the sample,
  which depends on no data).
* Under secure aggregation the adversary is the server, which sees who takes part;
  the guarantee protects what a participant sends, not whether it took part
  (zero-out: its update replaced by zeros), and amplification does not apply (the
  discrete-Gaussian accountant has no amplification analysis either). Dropouts
  leave fewer noise shares: the round is accounted with the **actual** number of
  honest survivors m − ``num_colluders``.

Randomness. ``randomness="secure"`` (default) draws the noise from the OS CSPRNG
(:class:`protocols.dp.SecureGenerator`); ``"reproducible"`` from the seed, for
reruns — the guarantee then holds only against parties who do not know the seed.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from protocols.dp import (
    Adjacency,
    DpEvent,
    GaussianEvent,
    LedgerRecord,
    PoissonSampledEvent,
    Randomness,
    check_randomness,
    clip_by_l2_norm,
    gaussian_mechanism,
    make_generator,
    noisy_clipped_fraction,
    quantile_clip_update,
    update_noise_multiplier,
)
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError
from secrelay.federated.aggregation import SumProtocol, SumResult, check_contributions
from secrelay.federated.client import UpdateTransform
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.transcript import Channel

__all__ = [
    "NOISED_NAME",
    "PACKED_NAME",
    "WEIGHT_NAME",
    "AdaptiveClipping",
    "CentralGaussianSum",
    "ClipUpdate",
    "UserLevelDPSum",
    "fedavg_spec",
    "pack_contributions",
    "unpack_sum",
]


NOISED_NAME = "delta"
WEIGHT_NAME = "weight"
PACKED_NAME = "dp/packed"
"""The one name a private sum's inner protocol sees: every noised name of the
:class:`~secrelay.federated.release.ReleaseSpec`, clipped, rescaled and concatenated."""


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"`{name}` must be a finite number > 0; got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InvalidParameterError(f"`{name}` must be a finite number > 0; got {value!r}")
    return v


@dataclass(frozen=True)
class ClipUpdate(UpdateTransform):
    """Clip the device's flat model update to L2 norm ``clipping_norm`` (on the device).

    The result satisfies ``‖Δ‖₂ <= clipping_norm`` exactly, also for adversarially
    large inputs (:func:`protocols.dp.clip_by_l2_norm`).
    """

    clipping_norm: float

    def __post_init__(self) -> None:
        _positive("clipping_norm", self.clipping_norm)

    def apply(self, delta: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        return clip_by_l2_norm(delta, clipping_norm=self.clipping_norm)


@dataclass(frozen=True)
class AdaptiveClipping:
    """Quantile-based adaptive clipping (Andrew et al. 2021) for :class:`CentralGaussianSum`.

    The clipping norm starts at the wrapper's ``clipping_norm`` C_0 and moves each round
    towards the ``target_quantile`` γ of the participants' update norms,
    C ← C·exp(−η (b̄ − γ)) with ``learning_rate`` η, from the noisy fraction b̄ of
    updates with norm <= C (count noise ``count_stddev`` σ_b; the paper suggests
    expected participants / 20). The update noise is raised to
    z_Δ = (z^{-2} − (σ_b/s)^{-2}/4)^{-1/2} (s the count's sensitivity: ½ for the centred
    bits under add/remove, 1 under replace-one) so that the round still spends
    ``GaussianEvent(z)`` (:mod:`protocols.dp.adaptive_clip`).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 1.25

    def __post_init__(self) -> None:
        if not (isinstance(self.target_quantile, (int, float)) and 0 < self.target_quantile < 1):
            raise InvalidParameterError(
                f"`target_quantile` must be in (0, 1); got {self.target_quantile!r}"
            )
        _positive("learning_rate", self.learning_rate)
        _positive("count_stddev", self.count_stddev)


def fedavg_spec(clipping_norm: float, dimension: int | None = None) -> ReleaseSpec:
    """DP-FedAvg's release: ``delta`` noised at bound C, ``weight`` a public count;
    ``dimension`` the length of ``delta`` (needed for a noise-alone release)."""
    return ReleaseSpec(
        noised=((NOISED_NAME, float(clipping_norm)),),
        public_counts=(WEIGHT_NAME,),
        shapes=() if dimension is None else ((NOISED_NAME, (int(dimension),)),),
    )


def _describe(spec: ReleaseSpec) -> str:
    return "{" + ", ".join(repr(n) for n in spec.names) + "}"


def pack_contributions(
    contributions: Mapping[int, Mapping[str, np.ndarray]],
    spec: ReleaseSpec,
    clipping_norm: float,
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, tuple[int, ...]]]:
    """Device side: clip every noised name to its bound, rescale it to its share of C
    and concatenate (name :data:`PACKED_NAME`); check public counts and copies; refuse
    any other name. Returns the packed contributions and the shapes of the names.
    """
    shapes = check_contributions(contributions)
    if not contributions:
        return {}, shapes
    bounds = spec.bounds
    known = set(spec.names)
    unknown = sorted(set(shapes) - known)
    missing = sorted(set(bounds) - set(shapes))
    if unknown or missing:
        raise InvalidParameterError(
            f"user-level DP protects contributions {_describe(spec)}; got names "
            f"{sorted(shapes)} — {unknown or missing} would be released without protection"
            if unknown
            else f"user-level DP expects the noised contributions {sorted(bounds)}; "
            f"{missing} are missing from {sorted(shapes)}"
        )
    expected = dict(spec.shapes)
    for name, shape in expected.items():
        if shapes[name] != tuple(shape):
            raise InvalidParameterError(
                f"contribution {name!r} has shape {shapes[name]}, but the release was "
                f"planned for {tuple(shape)}"
            )
    c_norm = float(clipping_norm)
    supports = spec.supports
    out: dict[int, dict[str, np.ndarray]] = {}
    for dev in sorted(contributions):
        c = contributions[dev]
        for name in spec.public_counts:
            if name in c:
                w = np.asarray(c[name], dtype=np.float64)
                if w.size != 1 or float(w.ravel()[0]) != 1.0:
                    raise InvalidParameterError(
                        f"user-level DP needs uniform weighting (weight 1 per device); device "
                        f"{dev} contributes {name} {w.ravel().tolist()} — use weighting = 'uniform'"
                    )
        for name, source in spec.copies:
            if name in c and not np.array_equal(
                np.asarray(c[name], dtype=np.float64), np.asarray(c[source], dtype=np.float64)
            ):
                raise InvalidParameterError(
                    f"user-level DP releases {name!r} as a copy of {source!r}, but device {dev} "
                    f"contributes different values — use weighting = 'uniform'"
                )
        blocks = []
        for name, bound in spec.noised:
            flat = np.asarray(c[name], dtype=np.float64).ravel()
            mask = supports.get(name)
            if mask is not None:
                if mask.size != flat.size:
                    raise InvalidParameterError(
                        f"the support of {name!r} has {mask.size} entries; the contribution "
                        f"has {flat.size}"
                    )
                if np.any(flat[~mask]):
                    raise InvalidParameterError(
                        f"device {dev} changes {name!r} outside its support (e.g. an "
                        "embedding table with local.trainable = 'dense'): those values would "
                        "be released without noise"
                    )
                flat = flat[mask]
            blocks.append(
                clip_by_l2_norm(flat, clipping_norm=float(bound)) * spec.scale(name, c_norm)
            )
        out[dev] = {PACKED_NAME: np.concatenate(blocks)}
    return out, shapes


def unpack_sum(
    total: np.ndarray,
    spec: ReleaseSpec,
    clipping_norm: float,
    shapes: Mapping[str, tuple[int, ...]],
    participants: float,
) -> dict[str, np.ndarray]:
    """Server side: split the noisy packed sum back into the strategy's names (in
    their own units), add the public counts (``participants``) and the copies."""
    flat = np.asarray(total, dtype=np.float64).ravel()
    supports = spec.supports
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, _ in spec.noised:
        shape = tuple(shapes[name])
        size = spec.packed_size(name, shape)
        part = flat[offset : offset + size] / spec.scale(name, clipping_norm)
        mask = supports.get(name)
        if mask is not None:  # exact zeros off the support (no device can change them)
            full = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
            full[mask] = part
            part = full
        out[name] = part.reshape(shape)
        offset += size
    if offset != flat.size:
        raise InvalidParameterError(
            f"the packed sum has {flat.size} values but the names need {offset}"
        )
    for name in spec.public_counts:
        out[name] = np.array([float(participants)])
    for name, source in spec.copies:
        out[name] = out[source].copy()
    return out


class UserLevelDPSum(SumProtocol):
    """Common base of the user-level DP sum wrappers.

    Parameters
    ----------
    noise_multiplier:
        z in (0, inf): the noise on the sum has standard deviation z·C (central)
        or z·Δ in the integer domain (distributed).
    clipping_norm:
        C in (0, inf): the L2 bound of each device's update.
    delta:
        δ in (0, 1) the records are stated at.
    run_id:
        Written into the ledger records.
    seed:
        Root of the per-round noise seeds under ``randomness="reproducible"``
        (simulations, identical replays on resume); ignored under ``"secure"``.
    randomness:
        ``"secure"`` (default): noise from :func:`protocols.dp.make_generator`
        ``(secure=True)``, the OS CSPRNG, as a deployment must; ``"reproducible"``:
        from ``seed`` (the guarantee then holds only against whoever does not know it).
    spec:
        Which names are noised (and their per-device bounds), which are public
        counts or copies (:class:`~secrelay.federated.release.ReleaseSpec`, given by
        the strategy); default DP-FedAvg's (``delta`` at bound C, ``weight`` public).
        The released sum has L2 sensitivity C·√(Σ w²) over the noised names' shares.
    """

    mechanism: str = "dp_fedavg"
    adjacency: Adjacency = "add_remove"
    """The neighbouring relation of this sum's records (see the module doc)."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float,
        run_id: str = "run",
        seed: int = 0,
        randomness: Randomness = "secure",
        spec: ReleaseSpec | None = None,
    ) -> None:
        self.noise_multiplier = _positive("noise_multiplier", noise_multiplier)
        self.clipping_norm = _positive("clipping_norm", clipping_norm)
        if not (isinstance(delta, (int, float)) and 0 < float(delta) < 1):
            raise InvalidParameterError(f"`delta` must be in (0, 1); got {delta!r}")
        self.delta = float(delta)
        if not isinstance(run_id, str) or not run_id:
            raise InvalidParameterError(f"`run_id` must be a non-empty string; got {run_id!r}")
        self.run_id = run_id
        self.seed = int(seed)
        self.randomness: Randomness = check_randomness(randomness)
        self.spec = spec if spec is not None else fedavg_spec(self.clipping_norm)
        # L2 sensitivity of the released packed sum under :attr:`adjacency`; a
        # replace-one subclass doubles it.
        self.sensitivity = self.spec.sensitivity(self.clipping_norm)

    @property
    def dimension(self) -> int | None:
        """Length of the released (packed) vector, when the spec gives the shapes."""
        return self.spec.dimension

    def noise_std(self) -> dict[str, float]:
        """Per-coordinate noise standard deviation of each released name (central
        Gaussian; the distributed noise is within 0.2 % of it when all survive)."""
        factor = self.sensitivity / self.spec.sensitivity(self.clipping_norm)
        return {k: v * factor for k, v in self.spec.noise_std(self.noise_multiplier).items()}

    def _generator(self, round: int, *purpose: int) -> RandomGenerator:
        if self.randomness == "secure":
            return make_generator(secure=True)
        return np.random.default_rng(np.random.SeedSequence([self.seed, round, 17, *purpose]))

    def _record(
        self,
        round: int,
        event: DpEvent,
        devices: Sequence[int | str],
        *,
        sigma: float,
        sensitivity: float,
        sample_rate: float | None,
    ) -> LedgerRecord:
        return LedgerRecord(
            run_id=self.run_id,
            round=round,
            mechanism=self.mechanism,
            event=event,
            unit="user",
            devices=tuple(str(d) for d in devices),
            delta=self.delta,
            adjacency=self.adjacency,
            noise_multiplier=self.noise_multiplier,
            sigma=sigma,
            sensitivity=sensitivity,
            sample_rate=sample_rate,
            steps=1,
        )

    @abc.abstractmethod
    def planned_record(
        self,
        round: int,
        sampled: Sequence[int],
        *,
        dimension: int,
        min_survivors: int,
        dropouts: bool,
    ) -> LedgerRecord | None:
        """The costliest record this round can spend (a dry run for budget checks).

        ``sampled`` are the devices sampled for ``round``; ``dimension`` the length
        of the update; ``min_survivors`` the fewest survivors with which the round
        still completes; ``dropouts`` whether devices may drop out. ``None`` when
        the round cannot release anything.
        """


class CentralGaussianSum(UserLevelDPSum):
    """Central DP-FedAvg: the server noises the sum of clipped updates.

    Parameters
    ----------
    inner:
        The sum protocol that delivers Σ clip(Δ_k) (plaintext: a trusted server).
    sampling:
        ``"poisson"`` (add/remove adjacency, amplified by ``sample_rate``; every round
        releases, noise alone if nobody took part) or ``"fixed"`` (replace-one
        adjacency: sensitivity and noise 2C, q = 1).
    sample_rate:
        Poisson rate q in (0, 1] (``"poisson"`` only).
    population:
        Ids of every device that can be sampled (N = its size); the records of a
        Poisson-sampled run cover all of them.
    others:
        See :class:`UserLevelDPSum`.

    Examples
    --------
    >>> from secrelay.federated.aggregation import PlaintextSum
    >>> from secrelay.federated.transcript import Channel
    >>> s = CentralGaussianSum(PlaintextSum(), noise_multiplier=1.0, clipping_norm=0.5,
    ...     delta=1e-5, sampling="poisson", sample_rate=0.5, population=(0, 1, 2, 3),
    ...     spec=fedavg_spec(0.5, dimension=3))
    >>> res = s.aggregate(1, {0: {"delta": np.ones(3), "weight": np.ones(1)},
    ...                       2: {"delta": np.zeros(3), "weight": np.ones(1)}}, Channel())
    >>> res.sums["weight"], res.privacy_records[0].devices
    (array([2.]), ('0', '1', '2', '3'))
    >>> empty = s.aggregate(2, {}, Channel())  # nobody sampled: noise alone, recorded
    >>> empty.noise_only, empty.sums["delta"].shape, len(empty.privacy_records)
    (True, (3,), 1)
    """

    mechanism = "dp_fedavg[central_gaussian]"

    def __init__(
        self,
        inner: SumProtocol,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float,
        sampling: Literal["poisson", "fixed"],
        population: Sequence[int],
        sample_rate: float = 1.0,
        run_id: str = "run",
        seed: int = 0,
        randomness: Randomness = "secure",
        spec: ReleaseSpec | None = None,
        adaptive: AdaptiveClipping | None = None,
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
        if adaptive is not None and not isinstance(adaptive, AdaptiveClipping):
            raise InvalidParameterError(f"`adaptive` must be an AdaptiveClipping; got {adaptive!r}")
        if adaptive is not None and [n for n, _ in self.spec.noised] != [NOISED_NAME]:
            raise InvalidParameterError(
                "adaptive clipping tracks the norm of one noised update 'delta'; the release "
                f"spec noises {[n for n, _ in self.spec.noised]}"
            )
        if sampling not in ("poisson", "fixed"):
            raise InvalidParameterError(
                f"`sampling` must be 'poisson' or 'fixed'; got {sampling!r}"
            )
        if not (isinstance(sample_rate, (int, float)) and 0 < float(sample_rate) <= 1):
            raise InvalidParameterError(f"`sample_rate` must be in (0, 1]; got {sample_rate!r}")
        if not population:
            raise InvalidParameterError("`population` must list at least one device")
        self.inner = inner
        self.sampling = sampling
        self.sample_rate = float(sample_rate)
        self.population = tuple(sorted(int(d) for d in population))
        self.stages = tuple(inner.stages)
        self.always_releases = sampling == "poisson"
        if sampling == "fixed":
            # Replace-one: another device fills a removed device's slot (module doc).
            self.adjacency = "replace_one"
            self.sensitivity = 2.0 * self.spec.sensitivity(self.clipping_norm)
        self.adaptive = adaptive
        self.current_clip = self.clipping_norm
        self.clip_history: list[float] = []
        self.update_noise_multiplier = self.noise_multiplier
        if adaptive is not None:
            # The count's sensitivity: ½ for centred bits (add/remove), 1 (replace-one).
            s = 0.5 if sampling == "poisson" else 1.0
            self.update_noise_multiplier = update_noise_multiplier(
                noise_multiplier=self.noise_multiplier, count_stddev=adaptive.count_stddev / (2 * s)
            )

    @property
    def expected_participants(self) -> float:
        """The public denominator q·N of Poisson rounds."""
        return self.sample_rate * len(self.population)

    def event(self) -> DpEvent:
        """The privacy event of one round."""
        g = GaussianEvent(noise_multiplier=self.noise_multiplier)
        if self.sampling == "poisson" and self.sample_rate < 1.0:
            return PoissonSampledEvent(sample_rate=self.sample_rate, event=g)
        return g

    def _covered(self, survivors: Sequence[int]) -> Sequence[int]:
        return self.population if self.sampling == "poisson" else survivors

    def planned_record(
        self,
        round: int,
        sampled: Sequence[int],
        *,
        dimension: int,
        min_survivors: int,
        dropouts: bool,
    ) -> LedgerRecord | None:
        if not sampled and self.sampling != "poisson":
            return None  # a fixed-size round with nobody in it releases nothing
        return self._record(
            round,
            self.event(),
            self._covered(sorted(sampled)),
            sigma=self.noise_multiplier * self.sensitivity,
            sensitivity=self.sensitivity,
            sample_rate=self.sample_rate if self.sampling == "poisson" else None,
        )

    def aggregate(
        self,
        round: int,
        contributions: Mapping[int, Mapping[str, np.ndarray]],
        channel: Channel,
        *,
        dropouts: Mapping[int, str] | None = None,
    ) -> SumResult:
        clip = self.current_clip
        norms: dict[int, float] = {}
        if self.adaptive is not None:
            # Device side: clip to the current C_t and rescale to C_0's units, so the
            # packed sum keeps sensitivity C_0 (unscaled after the noise).
            contributions, norms = self._clip_adaptively(contributions, clip)
        packed, shapes = pack_contributions(contributions, self.spec, self.clipping_norm)
        result = self.inner.aggregate(round, packed, channel, dropouts=dropouts)
        survivors = tuple(result.survivors)
        if survivors:
            total = np.asarray(result.sums[PACKED_NAME], dtype=np.float64)
        elif self.sampling == "poisson":
            # Nobody took part: release the noise alone, as any other round would.
            shapes = self._empty_shapes(shapes)
            total = np.zeros(self._packed_size(shapes), dtype=np.float64)
        else:
            return SumResult({}, survivors)
        noisy, event = gaussian_mechanism(
            total,
            noise_multiplier=self.update_noise_multiplier,
            clipping_norm=self.sensitivity,
            generator=self._generator(round),
        )
        assert event == GaussianEvent(noise_multiplier=self.update_noise_multiplier)
        denominator = (
            self.expected_participants if self.sampling == "poisson" else float(len(survivors))
        )
        record = self._record(
            round,
            self.event(),
            self._covered(survivors),
            sigma=self.noise_multiplier * self.sensitivity,
            sensitivity=self.sensitivity,
            sample_rate=self.sample_rate if self.sampling == "poisson" else None,
        )
        sums = unpack_sum(noisy, self.spec, self.clipping_norm, shapes, denominator)
        if self.adaptive is not None:
            sums[NOISED_NAME] = sums[NOISED_NAME] * (clip / self.clipping_norm)
            self._move_clip(round, [norms[d] for d in survivors if d in norms], denominator)
        return SumResult(sums, survivors, privacy_records=(record,), noise_only=not survivors)

    def state_dict(self) -> dict[str, Any]:
        """The adaptive clip C_t (nothing else changes between rounds)."""
        return {"current_clip": float(self.current_clip)} if self.adaptive is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.adaptive is None:
            super().load_state_dict(state)
            return
        if state:
            self.current_clip = float(state["current_clip"])

    def _clip_adaptively(
        self, contributions: Mapping[int, Mapping[str, np.ndarray]], clip: float
    ) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, float]]:
        out: dict[int, dict[str, np.ndarray]] = {}
        norms: dict[int, float] = {}
        for dev, c in contributions.items():
            if NOISED_NAME not in c:
                out[dev] = dict(c)
                continue
            delta = np.asarray(c[NOISED_NAME], dtype=np.float64)
            norms[dev] = float(np.linalg.norm(delta.ravel()))
            clipped = clip_by_l2_norm(delta.ravel(), clipping_norm=clip).reshape(delta.shape)
            out[dev] = {**c, NOISED_NAME: clipped * (self.clipping_norm / clip)}
        return out, norms

    def _move_clip(self, round: int, norms: Sequence[float], participants: float) -> None:
        """The noisy clipped fraction of this round's survivors moves C (Andrew et al.)."""
        assert self.adaptive is not None
        frac = noisy_clipped_fraction(
            np.asarray(norms, dtype=np.float64),
            clipping_norm=self.current_clip,
            count_stddev=self.adaptive.count_stddev,
            participants=max(participants, 1.0),
            generator=self._generator(round, 1),
            centred=self.sampling == "poisson",
        )
        self.current_clip = quantile_clip_update(
            self.current_clip,
            clipped_fraction=frac,
            target_quantile=self.adaptive.target_quantile,
            learning_rate=self.adaptive.learning_rate,
        )
        self.clip_history.append(self.current_clip)

    def _empty_shapes(self, seen: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Shapes of the noised names for a round nobody survived: those the
        contributions had (everyone dropped out), else the spec's."""
        if all(name in seen for name, _ in self.spec.noised):
            return dict(seen)
        if not self.spec.shapes:
            raise InvalidParameterError(
                "a Poisson round that sampled nobody releases noise alone, whose shape the "
                "release spec must give: pass a `spec` with `shapes` (every built-in "
                "strategy's release_spec() gives them)"
            )
        return {name: tuple(shape) for name, shape in self.spec.shapes}

    def _packed_size(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        return sum(self.spec.packed_size(name, tuple(shapes[name])) for name, _ in self.spec.noised)
