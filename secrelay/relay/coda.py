"""CoDA: on-device learning with cloud-coordinated data augmentation (method 3).

Paper: R. Gu, C. Niu, Y. Yan, F. Wu, S. Tang, R. Jia, C. Lyu, G. Chen, "On-Device
Learning with Cloud-Coordinated Data Augmentation for Extreme Model Personalization
in Recommender Systems", arXiv:2201.10382 (2022).

The method ``method.name = "coda"`` runs the whole pipeline once per device:

1. cloud (:mod:`secrelay.relay.coda_cloud`): train the cloud CTR model M0 on the
   pre-regulation data; build the pool users' vectors (mean of one feature over
   their samples) and a KNN index; keep the pool in a deduplicated sample store;
2. device → cloud: the device's own vector, computed from its local samples, in
   a ``QueryMessage``; cloud → device: the K nearest pool users' samples in
   batches (≤ 12 a day), each a zlib + base64 ``ReplyMessage`` blob;
3. device (:mod:`secrelay.relay.coda_device`): decode the batches into its
   bounded matched-sample table, filter them with the personalized classifier
   (Algorithm 2, threshold σ), and fine-tune M0 on local + kept samples with
   validation-gated mini-batch updates (Algorithm 3); publish the result as M.

Each run also scores, on the same devices, the baselines **Cloud** (M0 without
fine-tuning) and **Local** (plain fine-tuning of M0 on the local samples), the
ablation **Local+gate** (Algorithm 3 without matched samples) and every σ in
``sigma_sweep``, so that one run fills a row of the results table.

Options (``[method.options]``) are documented on :class:`CoDAOptions`.

Differential privacy (``[privacy] dp_sgd = true``; ``docs/coda.md``, *Differential
privacy*): the classifier (Algorithm 2) and every CTR model trained on device data
(each σ, and the Local baseline) train with example-level DP-SGD through Opacus; each
training appends a ledger record (unit ``"example"``, the device). Their sampling rates
and step counts are fixed from public sizes before the round, so
:meth:`CoDAMethod.planned_privacy_records` is exactly what a device with matched rows
spends. Algorithm 3's validation gate is a non-private decision on held-out local
rows, so ``dp_sgd`` requires ``method.options.gate = false``; ``user_level_dp`` and
``secure_aggregation`` are refused (CoDA releases no aggregate).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    DeviceData,
    flat_parameters,
    load_flat_parameters,
    single_thread,
)
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.methods import Method, RunContext, make_train_config, train_cloud_model
from secrelay.metrics import Metrics, evaluate_predictions
from secrelay.relay.coda_cloud import (
    BATCH_TOPIC,
    CloudSampleStore,
    KNNMatcher,
    VectorMode,
    decode_payload,
    default_user_feature,
    field_embedding_table,
    match_reply,
    match_request,
    user_vectors,
)
from secrelay.relay.coda_device import (
    DPSGDSettings,
    ModelStore,
    SampleTable,
    classifier_negatives,
    filter_matched,
    filter_matched_private,
    gated_train,
    private_train,
)
from secrelay.training import TrainConfig, predict, train_epochs

__all__ = [
    "CLASSIFIER_BATCH_SIZE",
    "CoDADevice",
    "CoDAMethod",
    "CoDAOptions",
    "DPUse",
    "plan_dp_uses",
]

# Expected mini-batch of the sample classifier (Algorithm 2).
CLASSIFIER_BATCH_SIZE = 32


@dataclass(frozen=True)
class CoDAOptions:
    """``[method.options]`` of ``method.name = "coda"``.

    Parameters
    ----------
    k:
        Matched pool users per device (paper: 100).
    sigma:
        Classifier threshold σ in [0, 1]: matched samples with p(local) ≥ σ are
        kept (paper: 0.2; 0 keeps every matched sample).
    sigma_sweep:
        Further σ values scored in the same run (``sigma_<σ>/gauc`` ...).
    user_feature:
        Field whose per-user mean is the user vector ("" = the first
        multi-valued item field, else the smallest item field).
    vector_mode:
        ``"onehot"`` (mean one-hot) or ``"embedding"`` (mean cloud-model embedding).
    classifier_fraction:
        Fraction of the matched samples used as the classifier's negatives (1/3).
    classifier_epochs, classifier_lr:
        Adam training of the classifier.
    validation_fraction:
        Latest fraction of the local training rows held out for the gate.
    gate:
        Algorithm 3's validation gate (default on). Off: every σ variant fine-tunes
        M0 on *all* local rows + the kept matched rows, no holdout. Must be off
        under ``privacy.dp_sgd``: the gate's accept/reject decisions compare the
        validation AUC on private held-out rows, which DP-SGD does not cover.
    batch_size, max_batch_size, max_batches_per_day, days:
        Transfer limits (25, 40, 12) and the number of simulated days of fetching.
    local_capacity, matched_capacity, ttl_days:
        On-device table sizes (rows) and row lifetime (days).
    max_devices:
        Score a random subset of this many devices (0 = all), for sweeps.
    baselines:
        Also score Local and Local+gate (off for sweeps that only vary K or σ:
        they do not depend on either).
    ungated:
        Also score, for every σ, plain fine-tuning (no gate) on all local rows +
        the kept matched samples (``sigma_<σ>_nogate``): the augmentation's effect
        without Algorithm 3's gate (only with ``gate = true``).
    """

    k: int = 100
    sigma: float = 0.2
    sigma_sweep: tuple[float, ...] = ()
    user_feature: str = ""
    vector_mode: VectorMode = "onehot"
    classifier_fraction: float = 1 / 3
    classifier_epochs: int = 5
    classifier_lr: float = 0.01
    validation_fraction: float = 0.2
    gate: bool = True
    batch_size: int = 25
    max_batch_size: int = 40
    max_batches_per_day: int = 12
    days: int = 1
    local_capacity: int = 5000
    matched_capacity: int = 2000
    ttl_days: int = 30
    max_devices: int = 0
    baselines: bool = True
    ungated: bool = False

    def __post_init__(self) -> None:
        p: list[str] = []
        object.__setattr__(self, "sigma_sweep", tuple(float(s) for s in self.sigma_sweep))

        def need(cond: bool, key: str, what: str) -> None:
            if not cond:
                p.append(f"method.options.{key} must be {what}; got {getattr(self, key)!r}")

        for key in (
            "k",
            "classifier_epochs",
            "batch_size",
            "max_batch_size",
            "max_batches_per_day",
            "days",
            "local_capacity",
            "matched_capacity",
            "ttl_days",
        ):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, "an int >= 1")
        need(
            isinstance(self.max_devices, int) and self.max_devices >= 0,
            "max_devices",
            "an int >= 0",
        )
        need(isinstance(self.baselines, bool), "baselines", "true or false")
        need(isinstance(self.ungated, bool), "ungated", "true or false")
        need(isinstance(self.gate, bool), "gate", "true or false")
        if self.ungated and self.gate is False:
            p.append(
                "method.options.ungated adds ungated variants next to the gated ones; with "
                "method.options.gate = false every variant is already ungated (set ungated = false)"
            )
        need(0 <= self.sigma <= 1, "sigma", "in [0, 1]")
        need(
            all(0 <= s <= 1 for s in self.sigma_sweep), "sigma_sweep", "a list of values in [0, 1]"
        )
        need(0 < self.classifier_fraction <= 1, "classifier_fraction", "in (0, 1]")
        need(0 < self.validation_fraction < 1, "validation_fraction", "in (0, 1)")
        need(self.classifier_lr > 0, "classifier_lr", "> 0")
        need(self.vector_mode in ("onehot", "embedding"), "vector_mode", "'onehot' or 'embedding'")
        if isinstance(self.batch_size, int) and isinstance(self.max_batch_size, int):
            need(self.max_batch_size >= self.batch_size, "max_batch_size", ">= batch_size")
        if p:
            raise ConfigError("; ".join(p))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> CoDAOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join('method.options.' + u for u in unknown)} for method "
                f"'coda'; valid keys: {', '.join(sorted(known))}"
            )
        kw = dict(options)
        for key in ("sigma", "classifier_fraction", "classifier_lr", "validation_fraction"):
            if isinstance(kw.get(key), int) and not isinstance(kw[key], bool):
                kw[key] = float(kw[key])
        if "sigma_sweep" in kw:
            kw["sigma_sweep"] = tuple(kw["sigma_sweep"])
        try:
            return cls(**kw)
        except TypeError as e:
            raise ConfigError(f"method.options for 'coda': {e}") from None


# --- differential privacy: the public plan of a device's DP-SGD trainings --------------------------


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


class CoDADevice:
    """One device's CoDA state: sample tables, model versions, and its learning.

    Parameters
    ----------
    data:
        The device's own data (train = local samples, test = its later rows).
    initial:
        The downloaded cloud model M0 (flat parameters).
    dp, dp_uses:
        Example-level DP-SGD (``privacy.dp_sgd``): the settings, and the planned
        trainings (:func:`plan_dp_uses`) whose steps per epoch every private
        training uses. ``None`` trains without DP.
    round:
        Written into the ledger records.
    """

    def __init__(
        self,
        data: DeviceData,
        initial: np.ndarray,
        options: CoDAOptions,
        *,
        model_builder: Any,
        train_config: TrainConfig,
        seed: int,
        dp: DPSGDSettings | None = None,
        dp_uses: tuple[DPUse, ...] = (),
        round: int = 1,
    ) -> None:
        if dp is not None and options.gate:
            raise InvalidParameterError(
                "DP-SGD training needs options.gate = false: the validation gate is a "
                "non-private decision on held-out local rows"
            )
        self.dp = dp
        self.dp_steps = {u.mechanism: u.steps_per_epoch for u in dp_uses}
        if dp is not None and not {"coda_classifier", "coda_ctr"} <= set(self.dp_steps):
            raise InvalidParameterError(
                f"`dp_uses` must plan 'coda_classifier' and 'coda_ctr'; got {sorted(self.dp_steps)}"
            )
        self.round = round
        self.privacy_records: list[LedgerRecord] = []
        self.data = data
        self.options = options
        self.schema = data.train.schema
        self.models = ModelStore(initial)
        self.local = SampleTable(capacity=options.local_capacity, ttl_days=options.ttl_days)
        self.matched = SampleTable(capacity=options.matched_capacity, ttl_days=options.ttl_days)
        ids = np.arange(len(data.train))
        self.local.insert(ids, data.train.x, data.train.y, day=0)
        self._build = model_builder
        self.train_config = train_config
        self.seed = seed
        self.payload_bytes = 0
        self.raw_bytes = 0
        self.memory_bytes = 0

    def user_vector(self, feature: str, embedding: np.ndarray | None) -> np.ndarray:
        """The device's own user vector, from its local samples (never sent in the
        clear once the CKKS layer wraps the request)."""
        _, vecs = user_vectors(
            self.data.train, feature, mode=self.options.vector_mode, embedding=embedding
        )
        vec: np.ndarray = vecs[0]
        return vec

    def receive(self, reply: ReplyMessage, *, day: int) -> int:
        """Decode a batch payload into the matched table; returns rows received."""
        if reply.topic != BATCH_TOPIC:
            raise InvalidParameterError(f"expected a {BATCH_TOPIC!r} reply; got {reply.topic!r}")
        batch = decode_payload(reply.blob, n_columns=self.schema.n_columns)
        self.payload_bytes += len(reply.blob)
        n, cols = batch.x.shape
        self.raw_bytes += n * (8 + 4 * cols + 1)  # the same arrays, uncompressed
        self.memory_bytes += n * (8 + 8 * cols + 4)  # int64 ids and features, float32 labels
        self.matched.insert(batch.sample_ids, batch.x, batch.y, day=day)
        return len(batch.sample_ids)

    def _dataset(self, x: np.ndarray, y: np.ndarray) -> CTRDataset:
        n = len(y)
        return CTRDataset(
            self.schema,
            x.reshape(n, self.schema.n_columns),
            y,
            np.full(n, self.data.device_id),
            np.zeros(n, np.int64),
        )

    def _fresh(self) -> torch.nn.Module:
        model: torch.nn.Module = self._build()
        load_flat_parameters(model, self.models.m0)
        return model

    def _fit(
        self, model: torch.nn.Module, train: CTRDataset, mechanism: str, gen: torch.Generator
    ) -> None:
        """Fine-tune on ``train``: plain, or DP-SGD with the planned steps (recorded)."""
        if self.dp is None:
            train_epochs(model, train, self.train_config, generator=gen)
            return
        res = private_train(
            model,
            train,
            self.train_config,
            steps_per_epoch=self.dp_steps[mechanism],
            dp=self.dp,
            round=self.round,
            device_id=str(self.data.device_id),
            mechanism=mechanism,
            generator=gen,
        )
        self.privacy_records.append(res.record)

    def learn(self, sigmas: tuple[float, ...]) -> dict[str, Any]:
        """Algorithms 2 and 3 for every σ; the first σ's model is committed as M.

        Returns the test predictions of every variant and bookkeeping. Under DP-SGD
        the ledger records of every training are in :attr:`privacy_records`.
        """
        o = self.options
        _, lx, ly = self.local.arrays()
        local = self._dataset(lx, ly)
        n = len(local)
        n_val = min(max(round(o.validation_fraction * n), 1), n - 1) if o.gate and n >= 2 else 0
        fit, val = local.subset(np.arange(n - n_val)), local.subset(np.arange(n - n_val, n))
        _, mx, my = self.matched.arrays()
        matched = self._dataset(mx, my) if len(my) else local.subset(np.zeros(0, np.int64))
        test = self.data.test
        out: dict[str, Any] = {"n_matched": len(matched)}
        self.privacy_records = []

        def g(k: int) -> torch.Generator:
            return torch.Generator().manual_seed(self.seed + k)

        with single_thread():
            torch.manual_seed(self.seed)
            # Baselines: Local (plain fine-tuning on every local row) and Local+gate.
            if o.baselines:
                model = self._fresh()
                self._fit(model, local, "coda_local", g(1))
                out["local"] = predict(model, test)
                if o.gate and n_val:
                    model = self._fresh()
                    gated_train(model, fit, val, self.train_config, generator=g(2))
                    out["local_gate"] = predict(model, test)
                elif o.gate:
                    out["local_gate"] = out["local"]
            cfg = TrainConfig(
                epochs=o.classifier_epochs, batch_size=CLASSIFIER_BATCH_SIZE, lr=o.classifier_lr
            )
            if len(matched) and self.dp is not None:
                res = filter_matched_private(
                    local,
                    matched,
                    steps_per_epoch=self.dp_steps["coda_classifier"],
                    dp=self.dp,
                    round=self.round,
                    device_id=str(self.data.device_id),
                    sigma=0.0,
                    train_fraction=o.classifier_fraction,
                    config=cfg,
                    seed=self.seed,
                    generator=g(5),
                )
                scores = res.scores
                self.privacy_records.append(res.record)
            elif len(matched):
                _, scores = filter_matched(
                    local,
                    matched,
                    sigma=0.0,
                    train_fraction=o.classifier_fraction,
                    config=cfg,
                    seed=self.seed,
                )
            else:
                scores = np.zeros(0)
            for i, sigma in enumerate(sigmas):
                keep = scores >= sigma
                kept = matched.subset(np.flatnonzero(keep))
                out[f"kept/{sigma:g}"] = int(keep.sum())
                if o.ungated:
                    plain = CTRDataset.concat([local, kept])
                    model = self._fresh()
                    train_epochs(model, plain, self.train_config, generator=g(4))
                    out[f"sigma/{sigma:g}_nogate"] = predict(model, test)
                if not o.gate:
                    # No gate: fine-tune on every local row + the kept matched rows.
                    buf_model = self._fresh()
                    self._fit(buf_model, CTRDataset.concat([local, kept]), "coda_ctr", g(3))
                    out[f"sigma/{sigma:g}"] = predict(buf_model, test)
                elif n_val == 0:
                    model = self._fresh()
                    train_epochs(model, local, self.train_config, generator=g(1))
                    out[f"sigma/{sigma:g}"] = predict(model, test)
                    continue
                else:
                    train = CTRDataset.concat([fit, kept])
                    buf_model = self._fresh()
                    res_g = gated_train(buf_model, train, val, self.train_config, generator=g(3))
                    out[f"sigma/{sigma:g}"] = predict(buf_model, test)
                    out[f"accepted/{sigma:g}"] = res_g.accepted
                    out[f"rejected/{sigma:g}"] = res_g.rejected
                if i == 0:
                    self.models.buffer()[:] = flat_parameters(buf_model)
                    self.models.commit()
        return out


class CoDAMethod(Method):
    """``method.name = "coda"``: one pass of CoDA over the devices (module docstring)."""

    name = "coda"
    supports_privacy = True

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        return [
            *super().privacy_problems(config),
            *privacy_problems(config, CoDAOptions.from_mapping(config.method.options)),
        ]

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.options = CoDAOptions.from_mapping(ctx.config.method.options)
        self._records: tuple[LedgerRecord, ...] = ()
        self._dp_cache: dict[int, tuple[DPSGDSettings, tuple[DPUse, ...]]] = {}

    def setup(self) -> None:
        cfg = self.ctx.config
        self.options = CoDAOptions.from_mapping(cfg.method.options)
        self.cloud_vec = train_cloud_model(
            self.ctx.model_spec,
            self.ctx.data.cloud,
            make_train_config(cfg.cloud),
            seed=self.ctx.seed,
        )
        self.results: dict[str, np.ndarray] = {}
        self.extra: dict[str, Any] = {}

    def _devices(self) -> list[int]:
        ids = sorted(d for d, dd in self.ctx.data.devices.items() if len(dd.test))
        n = self.options.max_devices
        if n and n < len(ids):
            rng = np.random.default_rng(np.random.SeedSequence([self.ctx.seed, 31]))
            ids = sorted(int(i) for i in rng.choice(ids, size=n, replace=False))
        return ids

    def num_rounds(self) -> int:
        return 1

    def _feature(self) -> str:
        schema = self.ctx.data.full.schema
        f = self.options.user_feature or default_user_feature(schema)
        if f not in schema:
            raise ConfigError(
                f"method.options.user_feature {f!r} is not a field of {list(schema.names)}"
            )
        return f

    # --- differential privacy --------------------------------------------------------
    def _sigmas(self) -> tuple[float, ...]:
        o = self.options
        return (o.sigma, *[s for s in o.sigma_sweep if s != o.sigma])

    def _n_local(self, dev: int) -> int:
        return min(len(self.ctx.data.devices[dev].train), self.options.local_capacity)

    def _dp_plan(self, dev: int) -> tuple[DPSGDSettings, tuple[DPUse, ...]]:
        """The device's DP-SGD settings and planned trainings (public inputs only:
        its local row count and the configuration); memoised."""
        if dev in self._dp_cache:
            return self._dp_cache[dev]
        cfg = self.ctx.config
        p = cfg.privacy
        uses = plan_dp_uses(
            self._n_local(dev),
            self.options,
            make_train_config(cfg.local),
            n_sigmas=len(self._sigmas()),
        )
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
            run_id=cfg.run.name,
            secure_mode=p.secure_noise,
        )
        self._dp_cache[dev] = (settings, uses)
        return settings, uses

    def _planned_for(self, dev: int, round: int) -> list[LedgerRecord]:
        dp, uses = self._dp_plan(dev)
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
                devices=(str(dev),),
                delta=dp.delta,
                noise_multiplier=z,
                sigma=z * c,
                sensitivity=c,
                sample_rate=u.sample_rate,
                steps=u.steps,
            )
            out.extend([rec] * u.count)
        return out

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """Every DP-SGD record the round can spend, from public sizes only: per device
        the classifier, one CTR training per σ and (with ``baselines``) Local. A device
        that receives no matched rows trains no classifier and spends less."""
        if not self.ctx.config.privacy.dp_sgd:
            return ()
        return tuple(r for dev in self._devices() for r in self._planned_for(dev, round))

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        return self._records

    def run_round(self, round: int) -> dict[str, Any]:
        o = self.options
        t0 = time.perf_counter()
        schema = self.ctx.data.full.schema
        feature = self._feature()
        emb = None
        if o.vector_mode == "embedding":
            model = self.ctx.model_spec.build()
            load_flat_parameters(model, self.cloud_vec)
            table = model.embedding.embedding.weight.detach().numpy()
            emb = field_embedding_table(table, schema, feature)
        cloud = self.ctx.data.cloud
        pool_users, pool_vecs = user_vectors(cloud, feature, mode=o.vector_mode, embedding=emb)
        t_index = time.perf_counter()
        matcher = KNNMatcher(pool_users, pool_vecs)
        store = CloudSampleStore(
            cloud,
            batch_size=o.batch_size,
            max_batch_size=o.max_batch_size,
            max_batches_per_day=o.max_batches_per_day,
        )
        index_s = time.perf_counter() - t_index
        sigmas = self._sigmas()
        private = self.ctx.config.privacy.dp_sgd
        self._records = ()
        released: list[LedgerRecord] = []
        train_cfg = make_train_config(self.ctx.config.local)
        preds: dict[str, list[np.ndarray]] = {}
        ys, gs = [], []
        counters: dict[str, float] = {}
        channel = self.ctx.channel
        match_s = 0.0
        for dev in self._devices():
            data = self.ctx.data.devices[dev]
            seed = int(np.random.SeedSequence([self.ctx.seed, dev, 5]).generate_state(1)[0] % 2**31)
            dp, uses = self._dp_plan(dev) if private else (None, ())
            device = CoDADevice(
                data,
                self.cloud_vec,
                o,
                model_builder=self.ctx.model_spec.build,
                train_config=train_cfg,
                seed=seed,
                dp=dp,
                dp_uses=uses,
                round=round,
            )
            req = channel.send(match_request(dev, round, device.user_vector(feature, emb)))
            assert isinstance(req, QueryMessage)
            t_m = time.perf_counter()
            replies = match_reply(req, store, matcher, k=o.k, day=0)
            match_s += time.perf_counter() - t_m
            for day in range(o.days):
                if day > 0:
                    replies = [
                        ReplyMessage(
                            sender=SERVER,
                            receiver=dev,
                            round=round,
                            topic=BATCH_TOPIC,
                            arrays={"batch_id": np.array([b])},
                            blob=blob,
                        )
                        for b, blob in store.fetch(dev, day)
                    ]
                for r in replies:
                    delivered = channel.send(r)
                    assert isinstance(delivered, ReplyMessage)
                    device.receive(delivered, day=day)
                device.matched.expire(day)
            try:
                out = device.learn(sigmas)
            finally:
                # What the device trained is released even if a later step fails.
                released.extend(device.privacy_records)
                self._records = tuple(released)
            if private:
                self._check_spent(dev, round, device.privacy_records)
            for key in ("payload_bytes", "raw_bytes", "memory_bytes"):
                counters[key] = counters.get(key, 0) + getattr(device, key)
            for key, v in out.items():
                if isinstance(v, np.ndarray):
                    preds.setdefault(key, []).append(v)
                else:
                    counters[key] = counters.get(key, 0) + float(v)
            model = self.ctx.model_spec.build()
            load_flat_parameters(model, self.cloud_vec)
            preds.setdefault("cloud", []).append(predict(model, data.test))
            ys.append(data.test.y)
            gs.append(data.test.user)
        y, grp = np.concatenate(ys), np.concatenate(gs)
        self.results = {k: np.concatenate(v) for k, v in preds.items()}
        self.results["__y"], self.results["__g"] = y, grp
        n_dev = len(ys)
        rec: dict[str, Any] = {"round": round, "devices": n_dev, "feature": feature}
        for key, p in self.results.items():
            if key.startswith("__"):
                continue
            m = evaluate_predictions(y, p, grp)
            name = key.replace("sigma/", "sigma_")
            rec.update({f"{name}/auc": m.auc, f"{name}/gauc": m.gauc, f"{name}/logloss": m.logloss})
        main = evaluate_predictions(y, self.results[f"sigma/{o.sigma:g}"], grp)
        rec.update(main.as_dict())
        rec.update({k.replace("/", "_"): v / n_dev for k, v in counters.items()})
        rec.update(
            {f"store/{k}": v for k, v in store.stats().items()}
            | {
                "payload_bytes_total": counters.get("payload_bytes", 0),
                "payload_raw_bytes_total": counters.get("raw_bytes", 0),
                "payload_memory_bytes_total": counters.get("memory_bytes", 0),
                "index_seconds": index_s,
                "match_seconds": match_s,
                "seconds": time.perf_counter() - t0,
            }
        )
        self.extra = rec
        return rec

    def _check_spent(self, dev: int, round: int, spent: list[LedgerRecord]) -> None:
        """Every record a device spent must be one it planned (the dry run's bound)."""
        left = list(self._planned_for(dev, round))
        for r in spent:
            if r not in left:
                raise RuntimeError(
                    f"device {dev} spent a DP-SGD record its plan did not contain: {r}"
                )
            left.remove(r)

    def evaluate(self) -> Metrics:
        o = self.options
        if not self.results:
            model = self.ctx.model_spec.build()
            load_flat_parameters(model, self.cloud_vec)
            tests = [self.ctx.data.devices[d].test for d in self._devices()]
            test = CTRDataset.concat(tests)
            return evaluate_predictions(test.y, predict(model, test), test.user)
        return evaluate_predictions(
            self.results["__y"], self.results[f"sigma/{o.sigma:g}"], self.results["__g"]
        )

    def state_dict(self) -> dict[str, Any]:
        return {"cloud": self.cloud_vec, "results": dict(self.results), "extra": dict(self.extra)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.options = CoDAOptions.from_mapping(self.ctx.config.method.options)
        self.cloud_vec = np.asarray(state["cloud"])
        self.results = dict(state["results"])
        self.extra = dict(state["extra"])
