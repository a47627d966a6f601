"""CoDA under example-level DP-SGD: the public plan of a device's trainings.

The classifier (Algorithm 2) and every CTR model trained on device data (each σ,
and the Local baseline) train with DP-SGD; each training appends a ledger record
(unit ``"example"``, the device). Their sampling rates and step counts are fixed
from public sizes (the device's local row count and the configuration) before any
data moves, so the planned records are exactly what a device with matched rows
spends (``docs/coda.md``, *Differential privacy*). :func:`privacy_problems` lists
the ``[privacy]`` settings CoDA cannot honour.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from protocols.dp import (
    GaussianEvent,
    LedgerRecord,
    PoissonSampledEvent,
    SelfComposedEvent,
    make_accountant,
    smallest_noise_within,
)
from protocols.dp.local_training import GRAD_SAMPLE_MODES
from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.methods.cloud import make_train_config
from secrelay.relay.coda.filtering import CLASSIFIER_BATCH_SIZE, classifier_negatives
from secrelay.relay.coda.options import CoDAOptions
from secrelay.relay.coda.training import DPSGDSettings
from secrelay.training import TrainConfig

__all__ = [
    "DPUse",
    "calibrated_noise_multiplier",
    "check_spent",
    "device_dp_plan",
    "matched_rows_bound",
    "plan_dp_uses",
    "planned_records",
    "privacy_problems",
]


def matched_rows_bound(options: CoDAOptions) -> int:
    """The most matched rows a device can hold, from the configuration alone.

    Every served batch has at most ``batch_size`` rows except the one last batch that
    absorbed a remainder (≤ ``max_batch_size``), a device fetches at most
    ``max_batches_per_day`` batches on each of ``days`` days, and the matched table
    holds at most ``matched_capacity`` rows.
    """
    o = options
    served = o.days * o.max_batches_per_day * o.batch_size + (o.max_batch_size - o.batch_size)
    return min(o.matched_capacity, served)


@dataclass(frozen=True)
class DPUse:
    """One kind of DP-SGD training a device runs in a CoDA round, sized from public
    numbers only (the device's local row count and the configuration).

    Attributes
    ----------
    mechanism:
        ``"coda_classifier"`` (Algorithm 2), ``"coda_ctr"`` (the CTR model, one per
        σ) or ``"coda_local"`` (the Local baseline).
    steps_per_epoch:
        k >= 1: Poisson sampling at q = 1/k, k steps an epoch.
    epochs:
        Passes (>= 1).
    count:
        How many trainings of this shape the device runs (one per σ for ``coda_ctr``).
    """

    mechanism: str
    steps_per_epoch: int
    epochs: int
    count: int = 1

    @property
    def sample_rate(self) -> float:
        return 1.0 / self.steps_per_epoch

    @property
    def steps(self) -> int:
        """Steps of one training, as Opacus takes them (``int(1/q)`` batches an epoch)."""
        return self.epochs * int(1.0 / self.sample_rate)


def plan_dp_uses(
    n_local: int, options: CoDAOptions, train: TrainConfig, *, n_sigmas: int
) -> tuple[DPUse, ...]:
    """The DP-SGD trainings of a device with ``n_local`` local rows, before any data moves.

    The classifier trains on the local rows + ``classifier_negatives(n_matched)``
    matched rows, the CTR model on the local rows + the kept matched rows; both
    counts depend on the match and on the classifier, so the steps per epoch are
    fixed from :func:`matched_rows_bound` instead: ``⌈n/B⌉ + ⌈cap/B⌉`` (at most
    ``n``, so the expected batch ``len(train)/k`` is >= 1). The expected batch is then
    at most B; fewer matched or kept rows make smaller batches, never a different
    privacy cost. The Local baseline has ``⌈n/B⌉`` steps per epoch, as
    :class:`~secrelay.privacy.dpsgd.DPSGDTrainer`.
    """
    if not isinstance(n_local, int) or n_local < 1:
        raise InvalidParameterError(f"`n_local` must be an int >= 1; got {n_local!r}")
    b, cb = train.batch_size, CLASSIFIER_BATCH_SIZE
    cap = matched_rows_bound(options)
    neg_cap = classifier_negatives(cap, options.classifier_fraction)
    uses = []
    if options.baselines:
        uses.append(DPUse("coda_local", math.ceil(n_local / b), train.epochs))
    uses.append(
        DPUse(
            "coda_classifier",
            min(math.ceil(n_local / cb) + math.ceil(neg_cap / cb), n_local),
            options.classifier_epochs,
        )
    )
    uses.append(
        DPUse(
            "coda_ctr",
            min(math.ceil(n_local / b) + math.ceil(cap / b), n_local),
            train.epochs,
            count=n_sigmas,
        )
    )
    return tuple(uses)


def _composed_epsilon(
    uses: tuple[tuple[float, int], ...], z: float, delta: float, accountant: str
) -> float:
    acc = make_accountant(accountant)
    for q, steps in uses:
        acc.compose(
            PoissonSampledEvent(sample_rate=q, event=GaussianEvent(noise_multiplier=z)),
            count=steps,
        )
    return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=1024)
def calibrated_noise_multiplier(
    uses: tuple[tuple[float, int], ...], target_epsilon: float, delta: float, accountant: str
) -> float:
    """Smallest-found z whose composition of ``uses`` ((q, steps) pairs, each a
    Poisson-sampled Gaussian) spends at most ``target_epsilon`` at ``delta``.

    Bisection on the run's accountant (ε decreases in z), stopping within 0.5 % of the
    target from below, as :func:`protocols.dp.calibrate_noise_multiplier` does for a
    single event; memoised (devices with the same plan share one calibration).
    """
    try:
        return smallest_noise_within(
            lambda z: _composed_epsilon(uses, z, delta, accountant), target_epsilon=target_epsilon
        )
    except InvalidParameterError as exc:
        raise ConfigError(
            f"privacy.local_target_epsilon = {target_epsilon:g} is unreachable for CoDA's "
            f"DP-SGD trainings {list(uses)} (q, steps): {exc}; raise the target or train "
            "fewer epochs"
        ) from None


def privacy_problems(config: RunConfig, options: CoDAOptions) -> list[str]:
    """Every ``[privacy]`` setting CoDA cannot honour, each naming the keys to change."""
    p = config.privacy
    problems: list[str] = []
    if p.user_level_dp:
        problems.append(
            "privacy.user_level_dp is not supported by method 'coda': CoDA releases no "
            "aggregate model update for DP-FedAvg to clip and noise, and its one upload, the "
            "user vector v_u (QueryMessage coda/match), is not covered by any DP mechanism "
            "(the privacy contract protects it with CKKS), so a user-level ε would be "
            "meaningless; set privacy.user_level_dp = false"
        )
    if p.secure_aggregation:
        problems.append(
            "privacy.secure_aggregation has nothing to protect in method 'coda': each device "
            "trains alone and nothing is summed across devices; set "
            "privacy.secure_aggregation = false"
        )
    if p.dp_sgd:
        if options.gate:
            problems.append(
                "privacy.dp_sgd with method.options.gate = true: Algorithm 3's gate accepts "
                "each mini-batch step only if the validation AUC on held-out local rows "
                "improves, a data-dependent decision on private rows that DP-SGD does not "
                "cover; set method.options.gate = false (DP CoDA then trains on every local "
                "row + the kept matched rows, no holdout; docs/coda.md)"
            )
        if config.local.epochs < 1:
            problems.append(f"privacy.dp_sgd needs local.epochs >= 1; got {config.local.epochs}")
        if p.grad_sample_mode not in GRAD_SAMPLE_MODES:
            problems.append(
                f"privacy.grad_sample_mode = {p.grad_sample_mode!r} is not available to method "
                f"'coda', which trains through Opacus' PrivacyEngine; choose one of "
                f"{list(GRAD_SAMPLE_MODES)} (ghost clipping is the default)"
            )
    return problems


def device_dp_plan(
    config: RunConfig, options: CoDAOptions, *, n_local: int, n_sigmas: int
) -> tuple[DPSGDSettings, tuple[DPUse, ...]]:
    """A device's DP-SGD settings and planned trainings, from public inputs only:
    its local row count ``n_local`` and the configuration.

    The noise multiplier is ``privacy.local_noise_multiplier``, or else calibrated
    so that every planned training, over ``privacy.local_participations`` rounds,
    spends at most ``privacy.local_target_epsilon``.
    """
    p = config.privacy
    uses = plan_dp_uses(n_local, options, make_train_config(config.local), n_sigmas=n_sigmas)
    if p.local_noise_multiplier is not None:
        z = float(p.local_noise_multiplier)
    else:
        assert p.local_target_epsilon is not None
        rounds = p.local_participations or 1
        shapes: dict[float, int] = {}
        for u in uses:
            shapes[u.sample_rate] = shapes.get(u.sample_rate, 0) + u.steps * u.count * rounds
        z = calibrated_noise_multiplier(
            tuple(sorted(shapes.items())),
            float(p.local_target_epsilon),
            float(p.delta),
            p.accountant,
        )
    settings = DPSGDSettings(
        max_grad_norm=float(p.max_grad_norm),
        noise_multiplier=z,
        delta=float(p.delta),
        grad_sample_mode=p.grad_sample_mode,
        accountant=p.accountant,
        run_id=config.run.name,
        randomness=p.randomness,
    )
    return settings, uses


def planned_records(
    dp: DPSGDSettings, uses: tuple[DPUse, ...], *, device: int, round: int
) -> list[LedgerRecord]:
    """The ledger records of every planned training of ``device`` in ``round``."""
    c, z = dp.max_grad_norm, dp.noise_multiplier
    out = []
    for u in uses:
        rec = LedgerRecord(
            run_id=dp.run_id,
            round=round,
            mechanism=f"{u.mechanism}/dp_sgd[{dp.grad_sample_mode}]",
            event=SelfComposedEvent(
                event=PoissonSampledEvent(
                    sample_rate=u.sample_rate, event=GaussianEvent(noise_multiplier=z)
                ),
                count=u.steps,
            ),
            unit="example",
            devices=(str(device),),
            delta=dp.delta,
            adjacency="add_remove",
            noise_multiplier=z,
            sigma=z * c,
            sensitivity=c,
            sample_rate=u.sample_rate,
            steps=u.steps,
        )
        out.extend([rec] * u.count)
    return out


def check_spent(device: int, planned: list[LedgerRecord], spent: list[LedgerRecord]) -> None:
    """Every record a device spent must be one it planned (the dry run's bound).

    Raises
    ------
    RuntimeError
        Naming the first spent record the plan did not contain.
    """
    left = list(planned)
    for r in spent:
        if r not in left:
            raise RuntimeError(
                f"device {device} spent a DP-SGD record its plan did not contain: {r}"
            )
        left.remove(r)
