"""Privacy as a plan: checked before anything runs, composed when a loop is built.

A :class:`PrivacyPlan` is made from a run's config (:meth:`PrivacyPlan.from_config`)
and carries only what the privacy layers need: the ``[privacy]`` section, the
federated sampling they amplify with, the run id and the seed of reproducible
randomness (``privacy.randomness = "reproducible"``; under the default ``"secure"``
noise, samples and SecAgg keys come from OS entropy, never from the seed).

- **Check first.** :meth:`PrivacyPlan.problems` returns every cross-section problem
  of the plan; the runner adds the method's own
  (:meth:`secrelay.methods.Method.privacy_problems`) and reports them all at once,
  before any data is loaded or model trained — as Opacus' ``ModuleValidator`` does.
- **Compose at build time.** :meth:`PrivacyPlan.build_loop` builds a
  :class:`~secrelay.federated.loop.FederatedLoop` whose program already trains with
  :class:`~secrelay.privacy.dpsgd.DPSGDTrainer` (``dp_sgd``) and clips its update
  (:class:`~secrelay.privacy.user_dp.ClipUpdate`, ``user_level_dp``), and whose sum
  protocol is wrapped in a user-level DP sum built from the strategy's
  :class:`~secrelay.federated.release.ReleaseSpec` — the way Flower wraps a strategy
  with DP. Nothing is patched after the loop exists; the strategy's aggregation code
  is never touched (it is asked ``release_spec`` and told ``set_release_noise``).
- **Dry run.** :meth:`PrivacyPlan.planned_records` is what a round *could* spend,
  computed before it runs (DP-SGD records depend only on each sampled device's data
  size and public hyper-parameters; the user-level record is the costliest the round
  can complete with), so a budget can refuse the round before any device trains.

User-level DP is allowed for any strategy whose ``release_spec`` covers its sums.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from protocols.dp import (
    GaussianEvent,
    LedgerRecord,
    Randomness,
    calibrate_noise_multiplier,
    make_accountant,
    smallest_noise_within,
)
from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import PrivacyConfig, RunConfig
from secrelay.federated.aggregation import PlaintextSum, SumProtocol
from secrelay.federated.client import (
    ClientProgram,
    DeviceData,
    LocalTrainer,
    ModelSpec,
    PersonalizedProgram,
    PlainTrainer,
)
from secrelay.federated.loop import FederatedLoop, RoundConfig, sample_devices
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.secure import SecureSum, SecureSumSettings
from secrelay.federated.strategies import Strategy
from secrelay.privacy.correlated_dp import (
    CorrelatedNoiseSum,
    make_correlated_noise,
    planned_sensitivity_squared,
)
from secrelay.privacy.distributed_dp import DistributedGaussianSum
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.privacy.user_dp import (
    AdaptiveClipping,
    CentralGaussianSum,
    ClipUpdate,
    UserLevelDPSum,
)
from secrelay.training import TrainConfig, trainable_mask

__all__ = ["PrivacyPlan", "max_participations", "release_support"]


def max_participations(
    device_ids: Sequence[int], config: RoundConfig, *, seed: int, rounds: int
) -> int:
    """The most rounds any device is sampled in over rounds ``1..rounds`` of the seeded
    (reproducible) schedule.

    Sampling is data-independent (it depends on the seed and the device ids only),
    so this number is public and may be used to calibrate per-device noise. Under
    secure randomness there is no schedule before the rounds run; the plan then
    bounds participations by ``rounds`` (:meth:`PrivacyPlan.participations`).
    """
    counts: Counter[int] = Counter()
    for t in range(1, rounds + 1):
        counts.update(sample_devices(device_ids, config, seed=seed, round=t))
    return max(counts.values(), default=1) or 1


def _trains_locally(program: object) -> bool:
    """Whether ``program`` is a dataclass with a ``trainer`` and update ``transforms``
    (:class:`LocalTrainingProgram`, MetaUA's program): what DP-SGD and clipping replace."""
    return (
        dataclasses.is_dataclass(program)
        and isinstance(getattr(program, "trainer", None), LocalTrainer)
        and isinstance(getattr(program, "transforms", None), tuple)
    )


@dataclass(frozen=True)
class PrivacyPlan:
    """What a run's privacy layers do, made from its config.

    Parameters
    ----------
    privacy:
        The ``[privacy]`` section.
    run_id:
        Names the run in ledger records.
    seed:
        Seed of the noise, device samples and SecAgg+ keys under
        ``privacy.randomness = "reproducible"``; unused for them under ``"secure"``.
    sampling, sample_rate, clients_per_round, dropout_rate, min_survivors:
        The federated sampling (``[federated]``) that noise calibration and
        amplification rely on.
    """

    privacy: PrivacyConfig
    run_id: str = "run"
    seed: int = 0
    sampling: Literal["fixed", "poisson"] = "fixed"
    sample_rate: float = 0.1
    clients_per_round: int = 25
    dropout_rate: float = 0.0
    min_survivors: int = 1

    @classmethod
    def from_config(cls, config: RunConfig) -> PrivacyPlan:
        fed = config.federated
        return cls(
            privacy=config.privacy,
            run_id=config.run.name,
            seed=config.run.seed,
            sampling=fed.sampling,
            sample_rate=fed.sample_rate,
            clients_per_round=fed.clients_per_round,
            dropout_rate=fed.dropout_rate,
            min_survivors=fed.min_survivors,
        )

    # --- the plan ---------------------------------------------------------------
    @property
    def differential_privacy(self) -> bool:
        return self.privacy.differential_privacy

    @property
    def randomness(self) -> Randomness:
        """``privacy.randomness``: ``"secure"`` or ``"reproducible"``."""
        return self.privacy.randomness

    @property
    def central_poisson(self) -> bool:
        """Central user-level DP under Poisson sampling: amplified, so every round
        must release (:attr:`SumProtocol.always_releases`)."""
        p = self.privacy
        return p.user_level_dp and not p.secure_aggregation and self.sampling == "poisson"

    def problems(self) -> list[str]:
        """Every problem of the plan itself (the method adds its own), each naming keys."""
        problems: list[str] = []
        if self.central_poisson and self.min_survivors > 1:
            problems.append(
                f"federated.min_survivors = {self.min_survivors} would skip a round in which "
                "fewer devices were sampled, which depends on who was sampled and voids the "
                "amplification by Poisson sampling that privacy.user_level_dp (central noise) "
                "is accounted with; every such round releases (the noise alone if nobody "
                "took part): set federated.min_survivors = 1"
            )
        p = self.privacy
        if (
            p.user_mechanism != "gaussian"
            and p.max_participations == 0
            and p.randomness == "secure"
        ):
            problems.append(
                f"privacy.user_mechanism = {p.user_mechanism!r} under secure randomness needs "
                "privacy.max_participations > 0 (the sample is not known before the run, so "
                "the noise is calibrated to the enforced participation limit)"
            )
        return problems

    def participations(
        self, devices: Iterable[int], config: RoundConfig, *, seed: int, rounds: int
    ) -> int:
        """Rounds of local training ``privacy.local_target_epsilon`` is calibrated over:
        ``privacy.local_participations``, or (0) the most rounds any device can be
        sampled in — from the seeded schedule under reproducible randomness, and
        ``rounds`` under secure randomness, whose samples are not known before they
        are drawn (a bound that always holds)."""
        p = self.privacy
        if p.local_participations:
            return p.local_participations
        if self.randomness == "secure":
            return max(1, rounds)
        return max_participations(list(devices), config, seed=seed, rounds=rounds)

    def secure_settings(self) -> SecureSumSettings:
        """The SecAgg+ settings of ``[privacy]``; keys from OS entropy unless
        ``privacy.randomness = "reproducible"``; the malicious-server protocol unless
        ``privacy.secagg_active_security = false``."""
        p = self.privacy
        return SecureSumSettings(
            default_bound=p.secagg_default_bound,
            precision_bits=p.secagg_precision_bits,
            neighbours=p.secagg_neighbours or None,
            sign_advertisements=p.secagg_sign_advertisements,
            max_dropout_rate=max(0.1, self.dropout_rate),
            deterministic=p.randomness == "reproducible",
            active_security=p.secagg_active_security,
            vote_slack=p.secagg_vote_slack,
        )

    def sum_protocol(self) -> SumProtocol:
        """Plaintext sums, or SecAgg+ when ``privacy.secure_aggregation`` is on (no DP:
        :meth:`build_loop` wraps it)."""
        if not self.privacy.secure_aggregation:
            return PlaintextSum()
        return SecureSum(self.secure_settings(), seed=self.seed)

    def dpsgd_trainer(self, train: TrainConfig, *, participations: int = 1) -> DPSGDTrainer:
        """The example-level DP-SGD trainer ``[privacy]`` asks for, over the local
        training ``train``; ``participations`` trainings per device share
        ``privacy.local_target_epsilon`` (when calibrating)."""
        p = self.privacy
        return DPSGDTrainer(
            config=train,
            max_grad_norm=p.max_grad_norm,
            target_delta=p.delta,
            noise_multiplier=p.local_noise_multiplier,
            target_epsilon=p.local_target_epsilon,
            participations=participations,
            grad_sample_mode=p.grad_sample_mode,
            accountant=p.accountant,
            run_id=self.run_id,
            randomness=p.randomness,
        )

    # --- user-level noise ---------------------------------------------------------
    def _distributed_sum(
        self,
        z: float,
        spec: ReleaseSpec | None,
        base: SecureSum | None = None,
    ) -> DistributedGaussianSum:
        p = self.privacy
        return DistributedGaussianSum(
            base if base is not None else self.secure_settings(),
            noise_multiplier=z,
            clipping_norm=float(p.clipping_norm or 1.0),
            delta=p.delta,
            scale=p.dp_scale,
            num_colluders=p.num_colluders,
            noise_shares=p.noise_shares,
            run_id=self.run_id,
            seed=self.seed,
            randomness=p.randomness,
            spec=spec,
        )

    def user_noise_multiplier(
        self, *, population: int, dimension: int, rounds: int, spec: ReleaseSpec | None = None
    ) -> float:
        """The user-level noise multiplier z: ``privacy.noise_multiplier``, or the
        smallest z found whose planned ``rounds`` rounds spend at most
        ``privacy.target_epsilon``.

        The planned rounds are accounted as the run will record them (see
        :mod:`secrelay.privacy.user_dp`): central Poisson rounds with amplification at
        ``sample_rate``; fixed-size rounds as full Gaussians; distributed rounds as
        discrete-Gaussian events with the expected number of participants, all
        surviving.
        """
        p = self.privacy
        if p.noise_multiplier is not None:
            return float(p.noise_multiplier)
        assert p.target_epsilon is not None
        target, delta = float(p.target_epsilon), float(p.delta)
        if not p.secure_aggregation:
            q = self.sample_rate if self.sampling == "poisson" else 1.0
            return calibrate_noise_multiplier(
                target_epsilon=target,
                target_delta=delta,
                sample_rate=q,
                steps=rounds,
                accountant=p.accountant,
            )
        expected = (
            self.sample_rate * population
            if self.sampling == "poisson"
            else float(min(self.clients_per_round, population))
        )
        n = max(2, round(expected))

        def eps(z: float) -> float:
            event = self._distributed_sum(z, spec).plan(n, dimension).event(num_survivors=n)
            acc = make_accountant(p.accountant).compose(event, count=rounds)
            return acc.get_epsilon(delta=delta)

        try:
            return smallest_noise_within(eps, target_epsilon=target)
        except InvalidParameterError as exc:
            raise ConfigError(
                f"privacy.target_epsilon = {target} is unreachable with distributed noise "
                f"over {rounds} rounds: {exc}"
            ) from None

    # --- composition ----------------------------------------------------------------
    def private_program(self, program: ClientProgram, *, participations: int) -> ClientProgram:
        """``program`` with DP-SGD as its trainer and/or update clipping appended."""
        p = self.privacy
        if not (p.dp_sgd or p.user_level_dp):
            return program
        inner = program.inner if isinstance(program, PersonalizedProgram) else program
        trainer = inner.trainer  # type: ignore[attr-defined]
        if p.dp_sgd:
            trainer = self.dpsgd_trainer(trainer.config, participations=participations)
        transforms = inner.transforms  # type: ignore[attr-defined]
        if p.user_level_dp and not p.adaptive_clip:  # adaptive: the sum clips to C_t
            assert p.clipping_norm is not None
            transforms = (*transforms, ClipUpdate(float(p.clipping_norm)))
        private = dataclasses.replace(inner, trainer=trainer, transforms=transforms)  # type: ignore[type-var]
        if isinstance(program, PersonalizedProgram):
            return dataclasses.replace(program, inner=private)  # type: ignore[arg-type]
        return private

    def private_sum(
        self,
        base: SumProtocol,
        strategy: Strategy,
        *,
        spec: ReleaseSpec,
        population: Sequence[int],
        rounds: int,
        schedule: RoundConfig | None = None,
        schedule_seed: int | None = None,
    ) -> UserLevelDPSum:
        """``base`` wrapped in the user-level DP sum of ``spec``; tells ``strategy``
        the noise of each released name. ``schedule`` is the loop's sampling (the
        public schedule of reproducible runs, for DP-FTRL / banded MF)."""
        p = self.privacy
        assert p.clipping_norm is not None
        if p.user_mechanism != "gaussian":
            correlated = self._correlated_sum(
                base, spec, population, rounds, schedule, schedule_seed
            )
            strategy.set_release_noise(correlated.noise_std())
            return correlated
        dimension = spec.dimension or int(next(iter(strategy.models.values())).size)
        z = self.user_noise_multiplier(
            population=len(population), dimension=dimension, rounds=rounds, spec=spec
        )
        wrapper: UserLevelDPSum
        if isinstance(base, SecureSum):
            wrapper = self._distributed_sum(z, spec, base)
        elif isinstance(base, PlaintextSum):
            try:
                wrapper = CentralGaussianSum(
                    base,
                    noise_multiplier=z,
                    clipping_norm=float(p.clipping_norm),
                    delta=p.delta,
                    sampling=self.sampling,
                    sample_rate=self.sample_rate,
                    population=[int(d) for d in population],
                    run_id=self.run_id,
                    seed=self.seed,
                    randomness=p.randomness,
                    spec=spec,
                    adaptive=self._adaptive(len(population)),
                )
            except InvalidParameterError as exc:
                if not p.adaptive_clip:
                    raise
                raise ConfigError(
                    f"privacy.adaptive_clip with noise multiplier {z:.4g}: {exc} (set "
                    "privacy.clip_count_stddev; default: expected participants / 20)"
                ) from None
        else:
            raise ConfigError(
                f"privacy.user_level_dp wraps PlaintextSum or SecureSum; got {type(base).__name__}"
            )
        strategy.set_release_noise(wrapper.noise_std())
        return wrapper

    def _expected_participants(self, population: int) -> float:
        if self.sampling == "poisson":
            return self.sample_rate * population
        return float(min(self.clients_per_round, population))

    def _adaptive(self, population: int) -> AdaptiveClipping | None:
        """``[privacy] adaptive_clip``: σ_b defaults to expected participants / 20."""
        p = self.privacy
        if not p.adaptive_clip:
            return None
        stddev = p.clip_count_stddev or self._expected_participants(population) / 20.0
        return AdaptiveClipping(
            target_quantile=p.target_quantile, learning_rate=p.clip_lr, count_stddev=stddev
        )

    def _correlated_sum(
        self,
        base: SumProtocol,
        spec: ReleaseSpec,
        population: Sequence[int],
        rounds: int,
        schedule: RoundConfig | None,
        schedule_seed: int | None,
    ) -> CorrelatedNoiseSum:
        """DP-FTRL / banded MF (``privacy.user_mechanism``): server noise after the
        (plaintext or secure) sum, z calibrated to the whole run's Gaussian."""
        p = self.privacy
        assert p.clipping_norm is not None
        noise = make_correlated_noise(
            p.user_mechanism,
            bands=p.bands,
            efficient=p.tree_efficient,
            restart_every=p.tree_restart_every,
        )
        z = p.noise_multiplier
        if z is None:
            assert p.target_epsilon is not None
            public: dict[int, list[int]] | None = None
            if p.max_participations == 0 and p.randomness == "reproducible":
                cfg = schedule or RoundConfig(
                    clients_per_round=self.clients_per_round,
                    sampling=self.sampling,
                    sample_rate=self.sample_rate,
                )
                public = {}
                for t in range(1, rounds + 1):
                    seed = self.seed if schedule_seed is None else schedule_seed
                    for d in sample_devices(list(population), cfg, seed=seed, round=t):
                        public.setdefault(d, []).append(t)
            try:
                s2 = planned_sensitivity_squared(
                    noise,
                    rounds=rounds,
                    max_participations=p.max_participations,
                    min_separation=p.min_separation,
                    schedule=public,
                )
            except InvalidParameterError as exc:
                raise ConfigError(str(exc)) from None
            delta, target = float(p.delta), float(p.target_epsilon)

            def eps(z: float) -> float:
                event = GaussianEvent(noise_multiplier=z / s2**0.5)
                return make_accountant(p.accountant).compose(event).get_epsilon(delta=delta)

            z = smallest_noise_within(eps, target_epsilon=target)
        return CorrelatedNoiseSum(
            base,
            mechanism=noise,
            noise_multiplier=float(z),
            clipping_norm=float(p.clipping_norm),
            delta=p.delta,
            participants=self._expected_participants(len(population)),
            population=[int(d) for d in population],
            max_participations=p.max_participations,
            min_separation=p.min_separation,
            run_id=self.run_id,
            seed=self.seed,
            randomness=p.randomness,
            spec=spec,
        )

    def loop_problems(self, strategy: Strategy, program: ClientProgram) -> list[str]:
        """What stops this plan from applying to a loop of ``strategy`` and ``program``."""
        p = self.privacy
        problems: list[str] = []
        if not (p.dp_sgd or p.user_level_dp):
            return problems
        inner = program.inner if isinstance(program, PersonalizedProgram) else program
        if not _trains_locally(inner):
            problems.append(
                "privacy.dp_sgd / privacy.user_level_dp need a device program with a local "
                f"trainer and update transforms (LocalTrainingProgram); got {type(inner).__name__}"
            )
        elif p.dp_sgd and not isinstance(inner.trainer, PlainTrainer):  # type: ignore[attr-defined]
            problems.append(
                "privacy.dp_sgd replaces the plain local trainer; this method trains with "
                f"{type(inner.trainer).__name__}"  # type: ignore[attr-defined]
            )
        elif p.dp_sgd and inner.trainer.config.trainable != "all":  # type: ignore[attr-defined]
            problems.append(
                f"local.trainable = {inner.trainer.config.trainable!r} is not supported with "  # type: ignore[attr-defined]
                "privacy.dp_sgd (DP-SGD trains every parameter); set local.trainable = 'all'"
            )
        if p.user_level_dp:
            problems.extend(self.strategy_problems(strategy))
        return problems

    def strategy_problems(self, strategy: Strategy) -> list[str]:
        """Why ``strategy`` (initialised) has no user-level DP release, if it has none."""
        if not self.privacy.user_level_dp:
            return []
        if strategy.personalized:
            return [
                f"privacy.user_level_dp protects released aggregates; strategy "
                f"{strategy.name!r} releases none"
            ]
        weighting = getattr(strategy, "weighting", "uniform")
        if weighting != "uniform":
            return [
                "privacy.user_level_dp needs uniform weighting (weight 1 per device; with "
                "method.name = 'federated' set strategy.params.weighting = 'uniform'); "
                f"strategy {strategy.name!r} uses {weighting!r}"
            ]
        assert self.privacy.clipping_norm is not None
        spec = strategy.release_spec(float(self.privacy.clipping_norm))
        if spec is None:
            return [
                f"privacy.user_level_dp: strategy {strategy.name!r} has no user-level DP "
                "release (its release_spec() does not cover its sums)"
            ]
        if self.central_poisson and not spec.shapes:
            return [
                f"privacy.user_level_dp with federated.sampling = 'poisson': strategy "
                f"{strategy.name!r}'s release_spec() gives no shapes, which the noise-alone "
                "release of a round that sampled nobody needs (ReleaseSpec.shapes)"
            ]
        return []

    def build_loop(
        self,
        strategy: Strategy,
        program: ClientProgram,
        devices: Mapping[int, DeviceData],
        model_spec: ModelSpec,
        *,
        config: RoundConfig,
        seed: int,
        rounds: int,
        sum_protocol: SumProtocol | None = None,
        **loop_kwargs: Any,
    ) -> FederatedLoop:
        """A :class:`FederatedLoop` with this plan's mechanisms composed in.

        ``program`` trains with a :class:`PlainTrainer`; ``strategy`` is initialised;
        ``sum_protocol`` defaults to :meth:`sum_protocol`; ``rounds`` is the planned
        number of rounds (noise calibration). Other keywords go to the loop.

        Raises
        ------
        ConfigError
            Every reason the loop's parts cannot be made private as planned.
        """
        p = self.privacy
        base = sum_protocol if sum_protocol is not None else self.sum_protocol()
        problems = self.loop_problems(strategy, program)
        if problems:
            raise ConfigError("; ".join(dict.fromkeys(problems)))
        participations = 1
        if p.dp_sgd and p.local_target_epsilon is not None:
            participations = self.participations(devices, config, seed=seed, rounds=rounds)
        program = self.private_program(program, participations=participations)
        if p.user_level_dp:
            assert p.clipping_norm is not None
            spec = strategy.release_spec(float(p.clipping_norm))
            assert spec is not None
            spec = release_support(spec, _train_config(program), model_spec)
            base = self.private_sum(
                base,
                strategy,
                spec=spec,
                population=sorted(devices),
                rounds=rounds,
                schedule=config,
                schedule_seed=seed,
            )
        return FederatedLoop(
            strategy,
            program,
            devices,
            model_spec,
            config=config,
            seed=seed,
            sum_protocol=base,
            randomness=p.randomness,
            **loop_kwargs,
        )

    # --- dry run ----------------------------------------------------------------
    @staticmethod
    def planned_records(loop: FederatedLoop, round: int) -> tuple[LedgerRecord, ...]:
        """The ledger records round ``round`` of ``loop`` could spend, before it runs.

        Every sampled device's DP-SGD record (a device that drops out spends less), and
        the costliest user-level record the round can complete with. Under secure
        randomness this is where the round's sample is drawn; the round reuses it.
        """
        sampled = loop.sample(round)
        out: list[LedgerRecord] = []
        program = loop.program
        inner = program.inner if isinstance(program, PersonalizedProgram) else program
        trainer = getattr(inner, "trainer", None)
        if isinstance(trainer, DPSGDTrainer):
            for dev in sampled:
                if loop.devices[dev].num_train:
                    out.append(trainer.planned_record(loop.devices[dev], round=round))
        proto = loop.sum_protocol
        if isinstance(proto, UserLevelDPSum) and not loop.strategy.personalized:
            dimension = proto.dimension or int(next(iter(loop.strategy.models.values())).size)
            rec = proto.planned_record(
                round,
                sampled,
                dimension=dimension,
                min_survivors=loop.config.min_survivors,
                dropouts=loop.config.dropout_rate > 0,
            )
            if rec is not None:
                out.append(rec)
        return tuple(out)


def release_support(
    spec: ReleaseSpec, train: TrainConfig | None, model_spec: ModelSpec
) -> ReleaseSpec:
    """``spec`` restricted to the coordinates devices training with ``train`` can
    change (``[local] trainable``): devices never change the frozen ones, so the
    release puts no noise there. Unchanged when everything trains. The in-process
    loop and the Flower app (device and server side) all build the spec here."""
    if train is None or train.trainable == "all":
        return spec
    mask = trainable_mask(model_spec.build(), train.trainable, train.trainable_rows)
    return spec.with_model_support(mask)


def _train_config(program: ClientProgram) -> TrainConfig | None:
    """The device program's local training config (what its trainer may change)."""
    inner = program.inner if isinstance(program, PersonalizedProgram) else program
    config = getattr(getattr(inner, "trainer", None), "config", None)
    return config if isinstance(config, TrainConfig) else None
