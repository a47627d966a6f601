"""Put differential privacy around any :class:`~secrelay.federated.loop.FederatedLoop`.

:func:`privatize_loop` is the one call a method makes after building its loop
(``federated``, ``relayrec`` and ``metaua`` do, through
:class:`~secrelay.experiment.LoopPrivacy`): it replaces the device trainer by
:class:`~secrelay.privacy.dpsgd.DPSGDTrainer` (``privacy.dp_sgd``), appends
:class:`~secrelay.privacy.user_dp.ClipUpdate` to the device's update transforms and
wraps the sum protocol in a user-level DP sum (``privacy.user_level_dp``: central
Gaussian noise on plaintext sums, distributed discrete Gaussian noise under secure
aggregation) built from the strategy's
:class:`~secrelay.federated.release.ReleaseSpec` — which names are noised and with
what bound. Strategies are only asked (``release_spec``) and told the noise
(``set_release_noise``); their aggregation code is not touched.

:func:`plan_round_records` is the dry run of a round: the ledger records the round
*could* spend, computed before it runs (DP-SGD's records depend only on each sampled
device's data size and public hyper-parameters; the user-level record is the
costliest the round can complete with), so a budget can refuse the round before any
device trains.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from protocols.dp import (
    LedgerRecord,
    calibrate_noise_multiplier,
    make_accountant,
    smallest_noise_within,
)
from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.federated.aggregation import PlaintextSum
from secrelay.federated.client import (
    ClientProgram,
    LocalTrainer,
    PersonalizedProgram,
    PlainTrainer,
)
from secrelay.federated.loop import FederatedLoop
from secrelay.federated.release import ReleaseSpec
from secrelay.federated.secure import SecureSum
from secrelay.privacy.dpsgd import DPSGDTrainer, dpsgd_trainer_from
from secrelay.privacy.user_dp import (
    CentralGaussianSum,
    ClipUpdate,
    DistributedGaussianSum,
    UserLevelDPSum,
)

__all__ = [
    "QUERY_LDP_METHODS",
    "USER_DP_STRATEGIES",
    "calibrate_user_noise",
    "max_participations",
    "plan_round_records",
    "privacy_problems",
    "privatize_loop",
]

# Methods whose devices send small queries that privacy.query_ldp protects.
QUERY_LDP_METHODS = ("lcft",)

# Strategies whose contributions are exactly ``delta`` and ``weight`` (FedAvg family).
USER_DP_STRATEGIES = ("fedavg", "fedprox", "fedadagrad", "fedadam")


def privacy_problems(config: RunConfig) -> list[str]:
    """Cross-section checks of ``[privacy]`` against the rest of the config.

    Returns every problem (empty when the configuration is consistent), each naming
    the keys involved.
    """
    p = config.privacy
    problems: list[str] = []
    if p.dp_sgd and p.secure_noise:
        import importlib.util

        if importlib.util.find_spec("torchcsprng") is None:
            problems.append(
                "privacy.secure_noise with privacy.dp_sgd needs Opacus' secure mode, whose "
                "CSPRNG backend `torchcsprng` is not installed"
            )
    if p.query_ldp != "off" and config.method.name not in QUERY_LDP_METHODS:
        problems.append(
            f"privacy.query_ldp protects the device queries of the methods {list(QUERY_LDP_METHODS)}"
            f"; method.name {config.method.name!r} makes none (set privacy.query_ldp = 'off')"
        )
    if p.user_level_dp and config.method.name == "federated":
        name = config.strategy.name
        if name not in USER_DP_STRATEGIES:
            problems.append(
                f"privacy.user_level_dp supports the strategies {list(USER_DP_STRATEGIES)} "
                f"(contributions `delta` and `weight`); got strategy.name = {name!r}"
            )
        weighting = config.strategy.params.get("weighting", "samples")
        if weighting != "uniform":
            problems.append(
                "privacy.user_level_dp needs strategy.params.weighting = 'uniform' (each "
                f"device's weight 1, so the sensitivity is privacy.clipping_norm); got {weighting!r}"
            )
    return problems


def max_participations(loop: FederatedLoop, rounds: int) -> int:
    """The most rounds any device is sampled in over rounds ``1..rounds``.

    Sampling is data-independent (it depends on the seed and the device ids only),
    so this number is public and may be used to calibrate per-device noise.
    """
    counts: Counter[int] = Counter()
    for t in range(1, rounds + 1):
        counts.update(loop.sample(t))
    return max(counts.values(), default=1) or 1


def _expected_participants(config: RunConfig, population: int) -> float:
    fed = config.federated
    if fed.sampling == "poisson":
        return fed.sample_rate * population
    return float(min(fed.clients_per_round, population))


def calibrate_user_noise(
    config: RunConfig,
    *,
    population: int,
    dimension: int,
    rounds: int,
    spec: ReleaseSpec | None = None,
) -> float:
    """The user-level noise multiplier z: ``privacy.noise_multiplier``, or the smallest
    z found whose planned ``rounds`` rounds spend at most ``privacy.target_epsilon``.

    The planned rounds are accounted as the run will record them (see
    :mod:`secrelay.privacy.user_dp`): central Poisson rounds with amplification at
    ``federated.sample_rate``; fixed-size rounds as full Gaussians; distributed rounds
    as discrete-Gaussian events with the expected number of participants, all
    surviving.
    """
    p = config.privacy
    if p.noise_multiplier is not None:
        return float(p.noise_multiplier)
    assert p.target_epsilon is not None
    target, delta = float(p.target_epsilon), float(p.delta)
    if not p.secure_aggregation:
        q = config.federated.sample_rate if config.federated.sampling == "poisson" else 1.0
        return calibrate_noise_multiplier(
            target_epsilon=target,
            target_delta=delta,
            sample_rate=q,
            steps=rounds,
            accountant=p.accountant,
        )
    n = max(2, round(_expected_participants(config, population)))
    settings = _secure_settings(config)

    def eps(z: float) -> float:
        s = DistributedGaussianSum(
            settings,
            noise_multiplier=z,
            clipping_norm=float(p.clipping_norm or 1.0),
            delta=delta,
            scale=p.dp_scale,
            num_colluders=p.num_colluders,
            noise_shares=p.noise_shares,
            spec=spec,
        )
        event = s.plan(n, dimension).event(num_survivors=n)
        acc = make_accountant(p.accountant).compose(event, count=rounds)
        return acc.get_epsilon(delta=delta)

    try:
        return smallest_noise_within(eps, target_epsilon=target)
    except InvalidParameterError as exc:
        raise ConfigError(
            f"privacy.target_epsilon = {target} is unreachable with distributed noise over "
            f"{rounds} rounds: {exc}"
        ) from None


def _secure_settings(config: RunConfig) -> Any:
    from secrelay.experiment import make_sum_protocol

    proto = make_sum_protocol(config.replace(privacy={"secure_aggregation": True}))
    assert isinstance(proto, SecureSum)
    return proto.settings


def _private_program(program: Any, config: RunConfig, participations: int) -> Any:
    p = config.privacy
    trainer = program.trainer
    if p.dp_sgd:
        if not isinstance(trainer, PlainTrainer):
            raise ConfigError(
                f"privacy.dp_sgd replaces the plain local trainer; this method trains with "
                f"{type(trainer).__name__}"
            )
        trainer = dpsgd_trainer_from(config, trainer.config, participations=participations)
    transforms = program.transforms
    if p.user_level_dp:
        assert p.clipping_norm is not None
        transforms = (*transforms, ClipUpdate(float(p.clipping_norm)))
    return dataclasses.replace(program, trainer=trainer, transforms=transforms)


def privatize_loop(loop: FederatedLoop, config: RunConfig, *, rounds: int) -> FederatedLoop:
    """Apply ``config.privacy``'s DP mechanisms to ``loop`` (in place; returned).

    Parameters
    ----------
    loop:
        A loop whose program has a ``trainer`` and update ``transforms`` (a
        :class:`LocalTrainingProgram`, MetaUA's program, or a
        :class:`PersonalizedProgram` around one) with a :class:`PlainTrainer`, whose
        strategy states a ``release_spec`` (for user-level DP), and whose sum
        protocol is :class:`PlaintextSum` or :class:`SecureSum`.
    config:
        The run configuration.
    rounds:
        Planned number of rounds (calibration to ``target_epsilon`` and
        ``local_target_epsilon``).

    Raises
    ------
    ConfigError
        If the loop's parts cannot be made private as configured.
    """
    p = config.privacy
    problems = privacy_problems(config)
    program: ClientProgram = loop.program
    spec: ReleaseSpec | None = None
    if p.dp_sgd or p.user_level_dp:
        inner = program.inner if isinstance(program, PersonalizedProgram) else program
        if not _trains_locally(inner):
            problems.append(
                f"privacy.dp_sgd / privacy.user_level_dp need a device program with a local "
                f"trainer and update transforms (LocalTrainingProgram); got {type(inner).__name__}"
            )
        if p.user_level_dp and loop.strategy.personalized:
            problems.append(
                f"privacy.user_level_dp protects released aggregates; strategy "
                f"{loop.strategy.name!r} releases none"
            )
        elif p.user_level_dp:
            if getattr(loop.strategy, "weighting", "uniform") != "uniform":
                problems.append(
                    "privacy.user_level_dp needs uniform weighting (weight 1 per device; with "
                    "method.name = 'federated' set strategy.params.weighting = 'uniform'); "
                    f"strategy {loop.strategy.name!r} uses "
                    f"{getattr(loop.strategy, 'weighting', None)!r}"
                )
            else:
                assert p.clipping_norm is not None
                spec = loop.strategy.release_spec(float(p.clipping_norm))
                if spec is None:
                    problems.append(
                        f"privacy.user_level_dp: strategy {loop.strategy.name!r} has no user-level "
                        "DP release (its sums are not clipped, bounded contributions)"
                    )
        if problems:
            raise ConfigError("; ".join(dict.fromkeys(problems)))
        participations = 1
        if p.dp_sgd and p.local_target_epsilon is not None:
            participations = p.local_participations or max_participations(loop, rounds)
        private = _private_program(inner, config, participations)
        loop.program = (
            dataclasses.replace(program, inner=private)
            if isinstance(program, PersonalizedProgram)
            else private
        )
    elif problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    if p.user_level_dp:
        assert p.clipping_norm is not None and spec is not None
        dimension = spec.dimension or int(next(iter(loop.strategy.models.values())).size)
        z = calibrate_user_noise(
            config, population=len(loop.devices), dimension=dimension, rounds=rounds, spec=spec
        )
        base = loop.sum_protocol
        wrapper: UserLevelDPSum
        if isinstance(base, SecureSum):
            wrapper = DistributedGaussianSum(
                base.settings,
                noise_multiplier=z,
                clipping_norm=float(p.clipping_norm),
                delta=p.delta,
                scale=p.dp_scale,
                num_colluders=p.num_colluders,
                noise_shares=p.noise_shares,
                run_id=config.run.name,
                seed=config.run.seed,
                secure_noise=p.secure_noise,
                spec=spec,
            )
        elif isinstance(base, PlaintextSum):
            wrapper = CentralGaussianSum(
                base,
                noise_multiplier=z,
                clipping_norm=float(p.clipping_norm),
                delta=p.delta,
                sampling=loop.config.sampling,
                sample_rate=loop.config.sample_rate,
                population=[int(d) for d in loop.device_ids],
                run_id=config.run.name,
                seed=config.run.seed,
                secure_noise=p.secure_noise,
                spec=spec,
            )
        else:
            raise ConfigError(
                f"privacy.user_level_dp wraps PlaintextSum or SecureSum; got {type(base).__name__}"
            )
        loop.sum_protocol = wrapper
        loop.strategy.set_release_noise(wrapper.noise_std())
    return loop


def _trains_locally(program: object) -> bool:
    """Whether ``program`` is a dataclass with a ``trainer`` and update ``transforms``
    (:class:`LocalTrainingProgram`, MetaUA's program): what DP-SGD and clipping replace."""
    return (
        dataclasses.is_dataclass(program)
        and isinstance(getattr(program, "trainer", None), LocalTrainer)
        and isinstance(getattr(program, "transforms", None), tuple)
    )


def plan_round_records(loop: FederatedLoop, round: int) -> tuple[LedgerRecord, ...]:
    """The ledger records round ``round`` of ``loop`` could spend, before it runs.

    Every sampled device's DP-SGD record (a device that drops out spends less), and
    the costliest user-level record the round can complete with.
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
