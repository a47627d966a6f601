"""LCFT: on-device fine-tuning with label correction (method ``"lcft"``).

Ding et al., "On-Device Model Fine-Tuning with Label Correction in Recommender
Systems" (arXiv:2211.01163, 2022). A device whose local CTR w_i (share of
positives in its fine-tuning data) differs from the global CTR w_g (share of
positives in the cloud data the initial model was trained on) relabels its
samples — positives get label α_i, negatives β_i — so that its *equivalent CTR*
equals the global one::

    w_i·α_i + (1 − w_i)·β_i = w_g                                          (1)

and then fine-tunes the cloud model on its own data with those soft labels. The
fine-tuned model stays on the device (a personalised method); each device is
evaluated with its own model.

Corrections (``method.options.corrections``; the first is the headline)
-----------------------------------------------------------------------
``none``
    Fine-tuning without correction (the paper's *Local* baseline): (1, 0).
``soft1``
    Keep labels inside [0, 1] and change only one class: if w_i > w_g then
    (α, β) = (w_g/w_i, 0) (positives are down-weighted), else
    (1, (w_g − w_i)/(1 − w_i)) (negatives are lifted).
``soft2``
    The other solution of (1) that changes only one class — the opposite class:
    if w_i > w_g then (1, (w_g − w_i)/(1 − w_i)) with β < 0 (negatives pushed
    *below* 0), else (w_g/w_i, 0) with α > 1 (positives pushed *above* 1).
    These labels lie outside [0, 1]; :func:`secrelay.training.soft_bce_with_logits`
    uses the linear-in-target form ``softplus(z) − t·z``, which for t > 1 equals
    t·BCE(z, 1) − (t − 1)·BCE(z, 0) (and symmetrically for t < 0): a positive
    that also *rewards* a high logit beyond the BCE pull. The per-sample loss is
    still convex in z but unbounded below, so fine-tuning relies on the device's
    label mix (whose equivalent CTR is w_g ∈ (0, 1), so the loss of a shared
    bias is bounded) and on the small number of local steps.
    Degenerate devices: with w_i = 1 (no negatives) β is irrelevant and (1)
    forces α = w_g; with w_i = 0 (no positives) α is irrelevant and β = w_g. In
    both cases soft2 coincides with soft1, which never divides by zero.
``hard``
    The cloud grid-searches (α, β) per local-CTR interval offline
    (:func:`search_correction_table`) and publishes the whole interval table in a
    :class:`~secrelay.federated.messages.ReplyMessage`; each device looks its pair
    up locally, so its w_i never leaves it (DESIGN.md, "LCFT correction").

Only the paper's abstract was retrievable while this was written; the
equation (1), the two one-sided soft solutions and the offline interval search
follow DESIGN.md, and which one-sided solution is called "1" and which "2" is our
derivation (docs/lcft.md).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from protocols.dp import (
    DpEvent,
    GaussianEvent,
    LedgerRecord,
    NoOpEvent,
    RandomGenerator,
    RandomizedResponseEvent,
    SelfComposedEvent,
    calibrate_noise_multiplier,
    gaussian_report,
    make_generator,
    randomized_response,
    randomized_response_estimate,
)
from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from secrelay.checkpoint import atomic_write_text
from secrelay.config import RunConfig
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    ClientProgram,
    DeviceData,
    DeviceOutput,
    DeviceTask,
    ModelSpec,
    load_flat_parameters,
    single_thread,
)
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.federated.strategies import StandaloneStrategy
from secrelay.methods import Method, make_train_config, train_cloud_model
from secrelay.metrics import Metrics, auc, evaluate_predictions, gauc
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.relay.relayrec_options import _from_mapping
from secrelay.training import TrainConfig, predict, train_epochs

__all__ = [
    "CORRECTIONS",
    "QUERY_LDP",
    "QUERY_TOPIC",
    "CTRQuery",
    "CorrectionTable",
    "LCFTMethod",
    "LCFTOptions",
    "LCFTProgram",
    "answer_query",
    "corrected_labels",
    "correction_pair",
    "equivalent_ctr",
    "improvement_by_drift",
    "query_request",
    "rr_bits_for",
    "rr_report_variance",
    "search_correction_table",
    "soft_correction_1",
    "soft_correction_2",
]

Correction = Literal["none", "soft1", "soft2", "hard"]
CORRECTIONS: tuple[str, ...] = ("none", "soft1", "soft2", "hard")
CorrectionPath = Literal["table", "query"]
TABLE_TOPIC = "lcft/correction_table"


def _check_ctr(name: str, w: float) -> float:
    if not (isinstance(w, (int, float, np.floating)) and 0.0 <= float(w) <= 1.0):
        raise InvalidParameterError(f"`{name}` must be a CTR in [0, 1]; got {w!r}")
    return float(w)


def soft_correction_1(local_ctr: float, global_ctr: float) -> tuple[float, float]:
    """(α, β) of soft correction 1: labels stay in [0, 1].

    Examples
    --------
    >>> soft_correction_1(0.8, 0.4)
    (0.5, 0.0)
    >>> soft_correction_1(0.25, 0.5)
    (1.0, 0.3333333333333333)
    """
    w_i, w_g = _check_ctr("local_ctr", local_ctr), _check_ctr("global_ctr", global_ctr)
    if w_i > w_g:
        return w_g / w_i, 0.0
    if w_i < w_g:
        return 1.0, (w_g - w_i) / (1.0 - w_i)
    return 1.0, 0.0


def soft_correction_2(local_ctr: float, global_ctr: float) -> tuple[float, float]:
    """(α, β) of soft correction 2: the opposite class is changed, labels leave [0, 1].

    Falls back to :func:`soft_correction_1` for w_i ∈ {0, 1}, where the class it
    would change is absent (see the module docstring).

    Examples
    --------
    >>> soft_correction_2(0.75, 0.5)
    (1.0, -1.0)
    >>> soft_correction_2(0.25, 0.5)
    (2.0, 0.0)
    >>> soft_correction_2(1.0, 0.4)
    (0.4, 0.0)
    """
    w_i, w_g = _check_ctr("local_ctr", local_ctr), _check_ctr("global_ctr", global_ctr)
    if w_i in (0.0, 1.0):
        return soft_correction_1(w_i, w_g)
    if w_i > w_g:
        return 1.0, (w_g - w_i) / (1.0 - w_i)
    if w_i < w_g:
        return w_g / w_i, 0.0
    return 1.0, 0.0


def equivalent_ctr(local_ctr: float, alpha: float, beta: float) -> float:
    """w_i·α + (1 − w_i)·β: the mean corrected label of the device."""
    return float(local_ctr) * alpha + (1.0 - float(local_ctr)) * beta


def corrected_labels(y: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """α for positives and β for negatives (float32)."""
    y = np.asarray(y, dtype=np.float32)
    return (alpha * y + beta * (1.0 - y)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class CorrectionTable:
    """The hard correction's published table: (α, β) per local-CTR interval.

    Interval i is ``[edges[i], edges[i+1])``, the last one closed at 1.
    """

    edges: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=np.float64)
        a = np.asarray(self.alpha, dtype=np.float64)
        b = np.asarray(self.beta, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or e[0] != 0.0 or e[-1] != 1.0 or np.any(np.diff(e) <= 0):
            raise InvalidParameterError(
                f"`edges` must increase strictly from 0 to 1; got {e.tolist()}"
            )
        if a.shape != (e.size - 1,) or b.shape != (e.size - 1,):
            raise InvalidParameterError(
                f"`alpha` and `beta` need one entry per interval ({e.size - 1}); "
                f"got {a.shape} and {b.shape}"
            )
        object.__setattr__(self, "edges", e)
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "beta", b)

    def interval(self, local_ctr: float) -> int:
        w = _check_ctr("local_ctr", local_ctr)
        return int(min(np.searchsorted(self.edges, w, side="right") - 1, self.alpha.size - 1))

    def lookup(self, local_ctr: float) -> tuple[float, float]:
        """The (α, β) of the interval holding ``local_ctr`` (on the device)."""
        i = self.interval(local_ctr)
        return float(self.alpha[i]), float(self.beta[i])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"edges": self.edges, "alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CorrectionTable:
        return cls(arrays["edges"], arrays["alpha"], arrays["beta"])


def correction_pair(
    correction: str, local_ctr: float, global_ctr: float, table: CorrectionTable | None = None
) -> tuple[float, float]:
    """(α, β) of ``correction`` for a device with local CTR ``local_ctr``."""
    if correction == "none":
        return 1.0, 0.0
    if correction == "soft1":
        return soft_correction_1(local_ctr, global_ctr)
    if correction == "soft2":
        return soft_correction_2(local_ctr, global_ctr)
    if correction == "hard":
        if table is None:
            raise InvalidParameterError("the hard correction needs the published CorrectionTable")
        return table.lookup(local_ctr)
    raise InvalidParameterError(f"`correction` must be one of {CORRECTIONS}; got {correction!r}")


# --- the query path of the hard correction ---------------------------------------

QUERY_TOPIC = "lcft/correction_query"
QueryLDP = Literal["off", "gaussian", "randomized_response"]
QUERY_LDP: tuple[str, ...] = ("off", "gaussian", "randomized_response")


def _check_epsilon(epsilon: object) -> float:
    if not (
        isinstance(epsilon, (int, float, np.floating))
        and not isinstance(epsilon, bool)
        and math.isfinite(float(epsilon))
        and float(epsilon) > 0
    ):
        raise InvalidParameterError(f"`epsilon` must be a finite number > 0; got {epsilon!r}")
    return float(epsilon)


def _check_bits(bits: object) -> int:
    if not (isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and bits >= 1):
        raise InvalidParameterError(f"`bits` must be an integer >= 1; got {bits!r}")
    return int(bits)


# The payload key of each report kind (one per mechanism, so a report of the wrong
# kind is rejected rather than misread).
_REPORT_KEY = {"off": "local_ctr", "gaussian": "noisy_ctr", "randomized_response": "bits"}


def rr_report_variance(epsilon: float, bits: int) -> float:
    """Worst-case variance of the server's estimate of w_i from ``bits`` RR bits.

    Each bit is b ~ Bernoulli(w_i) flipped with probability f = 1/(1 + e^{ε/k});
    the mean of the unbiased per-bit estimates (y − f)/(1 − 2f) has variance
    P(1 − P)/(k (1 − 2f)²) ≤ 1/(4k tanh²(ε/2k)), with P = f + (1 − 2f)·w_i.

    Examples
    --------
    >>> round(rr_report_variance(1.0, 1), 3)
    1.171
    >>> rr_report_variance(4.0, 2) < rr_report_variance(4.0, 1)
    True
    """
    eps, k = _check_epsilon(epsilon), _check_bits(bits)
    return 1.0 / (4.0 * k * math.tanh(eps / (2.0 * k)) ** 2)


def rr_bits_for(epsilon: float) -> int:
    """The number of RR bits k that minimises :func:`rr_report_variance` at a total ε.

    Splitting ε over k bits trades the Bernoulli rounding noise (which falls as
    1/k) against the RR noise (which grows as k/ε² once ε/k is small); the best k
    is ≈ ε/2.18, so k = 1 for ε ≲ 3.

    Examples
    --------
    >>> [rr_bits_for(e) for e in (0.5, 1.0, 4.0, 8.0)]
    [1, 1, 2, 4]
    """
    eps = _check_epsilon(epsilon)
    candidates = range(1, max(1, math.ceil(eps)) + 1)
    return min(candidates, key=lambda k: rr_report_variance(eps, k))


@dataclass(frozen=True)
class CTRQuery:
    """How a device reports its local CTR w_i ∈ [0, 1] on the query path, and how
    the server reads the report. Every parameter is public (it follows from the
    config alone), so the privacy cost is known before any device reports.

    Mechanisms (``privacy.query_ldp``; the privacy unit is the reporting device)
    ---------------------------------------------------------------------------
    ``off``
        w_i in the clear: the server learns it exactly. No ledger record.
    ``gaussian``
        w_i + N(0, z²) (:func:`protocols.dp.gaussian_report`, sensitivity 1 on
        [0, 1]) with z the smallest noise multiplier whose single Gaussian release
        is (ε, δ)-DP under ``accountant``
        (:func:`protocols.dp.calibrate_noise_multiplier`, sample rate 1, one step).
        The server clips the report into [0, 1] (post-processing).
    ``randomized_response``
        ``bits`` = k independent reports of :func:`protocols.dp.randomized_response`
        at ε/k each (each one a fresh Bernoulli(w_i) bit, then binary RR); they
        compose to a pure ε-LDP release. The server averages
        :func:`protocols.dp.randomized_response_estimate` over the k bits and clips
        the estimate into [0, 1].

    Parameters
    ----------
    mechanism:
        One of :data:`QUERY_LDP`.
    epsilon:
        Target ε of one device's report (``None`` exactly when ``mechanism`` is ``off``).
    delta:
        δ of the Gaussian report (recorded as 0 for randomized response).
    noise_multiplier:
        z of the Gaussian report (``None`` otherwise).
    bits:
        k, the RR bits per report (1 otherwise).
    bit_epsilon:
        ε of one RR bit, ≤ ε/k (``None`` otherwise).
    """

    mechanism: QueryLDP = "off"
    epsilon: float | None = None
    delta: float = 0.0
    noise_multiplier: float | None = None
    bits: int = 1
    bit_epsilon: float | None = None

    @classmethod
    def plan(
        cls,
        mechanism: str,
        *,
        epsilon: float | None,
        delta: float,
        accountant: str = "prv",
        bits: int = 0,
    ) -> CTRQuery:
        """Calibrate the report to ``epsilon`` (``bits`` = 0: :func:`rr_bits_for`)."""
        if mechanism not in QUERY_LDP:
            raise InvalidParameterError(
                f"`mechanism` must be one of {QUERY_LDP}; got {mechanism!r}"
            )
        if mechanism == "off":
            return cls()
        eps = _check_epsilon(epsilon)
        if mechanism == "gaussian":
            z = calibrate_noise_multiplier(
                target_epsilon=eps,
                target_delta=delta,
                sample_rate=1.0,
                steps=1,
                accountant=accountant,
            )
            return cls("gaussian", eps, float(delta), z)
        k = rr_bits_for(eps) if bits == 0 else _check_bits(bits)
        # ε/k, lowered by a few ulps if rounding would make k bits spend more than ε.
        per_bit = eps / k
        while k * RandomizedResponseEvent.from_epsilon(per_bit).epsilon > eps:
            per_bit = float(np.nextafter(per_bit, 0.0))
        return cls("randomized_response", eps, 0.0, None, k, per_bit)

    @property
    def private(self) -> bool:
        return self.mechanism != "off"

    @property
    def event(self) -> DpEvent:
        """The privacy event of one device's report."""
        if self.mechanism == "gaussian":
            assert self.noise_multiplier is not None
            return GaussianEvent(noise_multiplier=self.noise_multiplier)
        if self.mechanism == "randomized_response":
            assert self.bit_epsilon is not None
            bit = RandomizedResponseEvent.from_epsilon(self.bit_epsilon)
            return bit if self.bits == 1 else SelfComposedEvent(event=bit, count=self.bits)
        return NoOpEvent()

    def report(self, local_ctr: float, *, generator: RandomGenerator) -> dict[str, np.ndarray]:
        """Device side: the payload of the query (the only thing that leaves the device)."""
        w = np.array([_check_ctr("local_ctr", local_ctr)])
        if self.mechanism == "gaussian":
            assert self.noise_multiplier is not None
            noisy, _ = gaussian_report(
                w, noise_multiplier=self.noise_multiplier, generator=generator
            )
            return {"noisy_ctr": noisy}
        if self.mechanism == "randomized_response":
            assert self.bit_epsilon is not None
            bits, _ = randomized_response(
                np.repeat(w, self.bits), epsilon=self.bit_epsilon, generator=generator
            )
            return {"bits": bits}
        return {"local_ctr": w}

    def estimate(self, arrays: Mapping[str, np.ndarray]) -> float:
        """Server side: the report's estimate of w_i, clipped into [0, 1].

        Raises
        ------
        MessageError
            If the payload is not a report of this mechanism.
        """
        key = _REPORT_KEY[self.mechanism]
        size = self.bits if self.mechanism == "randomized_response" else 1
        value = arrays.get(key)
        if set(arrays) != {key} or value is None or np.shape(value) != (size,):
            raise MessageError(
                f"an LCFT {self.mechanism!r} query must carry exactly `{key}` of shape "
                f"({size},); got {{{', '.join(f'{k!r}: {np.shape(v)}' for k, v in arrays.items())}}}"
            )
        x = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise MessageError(f"an LCFT query's `{key}` must be finite; got {x.tolist()}")
        if self.mechanism == "randomized_response":
            assert self.bit_epsilon is not None
            if not np.all((x == 0.0) | (x == 1.0)):
                raise MessageError(f"an LCFT query's `bits` must be 0 or 1; got {x.tolist()}")
            est = float(randomized_response_estimate(x, epsilon=self.bit_epsilon).mean())
        else:
            est = float(x[0])
        if self.mechanism == "off" and not 0.0 <= est <= 1.0:
            raise MessageError(f"an LCFT query's `local_ctr` must be in [0, 1]; got {est!r}")
        return min(max(est, 0.0), 1.0)  # post-processing: clip into [0, 1]

    def record(self, *, run_id: str, round: int, devices: Sequence[int]) -> LedgerRecord | None:
        """One ledger record covering every reporting device (``None`` without LDP).

        Each device's data enter only its own report, so one record listing all of
        them, with the per-report event, is the exact user-level cost: a
        per-device query of the ledger gives ε, and so does the global one (a
        record per device would make the global composition count N reports).
        """
        if not self.private or not devices:
            return None
        gaussian = self.mechanism == "gaussian"
        return LedgerRecord(
            run_id=run_id,
            round=round,
            mechanism=f"lcft_query[{self.mechanism}]",
            event=self.event,
            unit="user",
            devices=tuple(str(d) for d in devices),
            delta=self.delta if gaussian else 0.0,
            noise_multiplier=self.noise_multiplier,
            sigma=self.noise_multiplier if gaussian else None,
            sensitivity=1.0,
            sample_rate=1.0,
            steps=self.bits,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "bits": self.bits,
            "bit_epsilon": self.bit_epsilon,
        }


def query_request(
    device: int, round: int, local_ctr: float, query: CTRQuery, *, generator: RandomGenerator
) -> QueryMessage:
    """Device side: the query carrying the device's (privatized) local CTR."""
    return QueryMessage(
        sender=device,
        receiver=SERVER,
        round=round,
        topic=QUERY_TOPIC,
        arrays=query.report(local_ctr, generator=generator),
    )


def answer_query(request: QueryMessage, table: CorrectionTable, query: CTRQuery) -> ReplyMessage:
    """Server side: clip the report into [0, 1], look its interval up, answer (α, β).

    Raises
    ------
    MessageError
        For a message that is not an LCFT query of ``query``'s mechanism.
    """
    if not isinstance(request, QueryMessage) or request.topic != QUERY_TOPIC:
        raise MessageError(
            f"expected a QueryMessage on topic {QUERY_TOPIC!r}; got "
            f"{type(request).__name__} on {getattr(request, 'topic', None)!r}"
        )
    a, b = table.lookup(query.estimate(request.arrays))
    return ReplyMessage(
        sender=SERVER,
        receiver=request.sender,
        round=request.round,
        topic=QUERY_TOPIC,
        arrays={"alpha": np.array([a]), "beta": np.array([b])},
    )


def _fine_tune(
    spec: ModelSpec,
    start: np.ndarray,
    train: CTRDataset,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
) -> torch.nn.Module:
    torch.manual_seed(seed)  # dropout inside the model, as LocalTrainingProgram does
    model = spec.build()
    load_flat_parameters(model, start)
    train_epochs(model, train, config, generator=torch.Generator().manual_seed(seed), labels=labels)
    return model


def search_correction_table(
    spec: ModelSpec,
    cloud: CTRDataset,
    base_train: TrainConfig,
    finetune: TrainConfig,
    *,
    edges: Sequence[float],
    alphas: Sequence[float],
    betas: Sequence[float],
    min_rows: int = 10,
    max_users: int = 40,
    seed: int = 0,
) -> tuple[CorrectionTable, dict[str, Any]]:
    """The hard correction's offline grid search on the cloud data.

    The cloud simulates devices with its own users: each cloud user with at least
    ``min_rows`` rows is split in time 80/20; a search model is trained on every
    cloud row except those held-out 20 % parts; for each local-CTR interval (by
    the user's CTR on its 80 % part) and each (α, β) on the grid, the search model
    is fine-tuned per user (at most ``max_users`` users per interval, drawn with
    ``seed``) on corrected labels and scored on the held-out rows; the pair with
    the best gAUC wins; ties go to the earliest pair in grid order
    (``alphas`` outer, ``betas`` inner), so with few held-out rows per user —
    where gAUC takes few values and ties are common — the table leans towards
    the grid's first pair. Intervals without a searchable user get (1, 0), i.e.
    no correction.

    Returns
    -------
    (CorrectionTable, dict)
        The table and per-interval statistics (users searched, best gAUC).
    """
    e = np.asarray(edges, dtype=np.float64)
    train_rows: dict[int, np.ndarray] = {}
    test_rows: dict[int, np.ndarray] = {}
    for u, idx in cloud.by_user().items():  # rows in time order
        if len(idx) >= min_rows:
            k = min(max(int(np.floor(0.8 * len(idx) + 1e-9)), 1), len(idx) - 1)
            train_rows[u], test_rows[u] = idx[:k], idx[k:]
    if not train_rows:
        n = e.size - 1
        return CorrectionTable(e, np.ones(n), np.zeros(n)), {"intervals": [{"users": 0}] * n}
    held = np.zeros(len(cloud), dtype=bool)
    held[np.concatenate(list(test_rows.values()))] = True
    base_vec = train_cloud_model(spec, cloud.subset(np.flatnonzero(~held)), base_train, seed=seed)
    train_by = {u: cloud.subset(r) for u, r in train_rows.items()}
    test_by = {u: cloud.subset(r) for u, r in test_rows.items()}
    users = sorted(train_by)
    ctr = {u: train_by[u].ctr for u in users}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    n_int = e.size - 1
    best_a, best_b = np.ones(n_int), np.zeros(n_int)
    stats: list[dict[str, Any]] = []
    probe = CorrectionTable(e, np.ones(n_int), np.zeros(n_int))
    for i in range(n_int):
        members = [u for u in users if probe.interval(ctr[u]) == i]
        if len(members) > max_users:
            members = sorted(rng.choice(members, size=max_users, replace=False).tolist())
        if not members:
            stats.append({"users": 0})
            continue
        y_all = np.concatenate([test_by[u].y for u in members])
        g_all = np.concatenate([test_by[u].user for u in members])
        best = (-np.inf, 1.0, 0.0)
        for a in alphas:
            for b in betas:
                preds = []
                for u in members:
                    labels = corrected_labels(train_by[u].y, a, b)
                    m = _fine_tune(spec, base_vec, train_by[u], labels, finetune, seed=seed + u)
                    preds.append(predict(m, test_by[u]))
                score = gauc(y_all, np.concatenate(preds), g_all).value
                if np.isfinite(score) and score > best[0]:
                    best = (score, float(a), float(b))
        if np.isfinite(best[0]):
            best_a[i], best_b[i] = best[1], best[2]
        stats.append(
            {"users": len(members), "best_gauc": best[0] if np.isfinite(best[0]) else None}
        )
    return CorrectionTable(e, best_a, best_b), {"intervals": stats}


@dataclass(frozen=True)
class LCFTProgram(ClientProgram):
    """What a device does: fine-tune the downloaded cloud model on its train data
    with each listed correction's labels and keep the results.

    The device's local CTR, its (α, β) and its predictions stay in its private
    state; nothing is uploaded. On the query path (``correction_path = "query"``)
    the hard correction's (α, β) is the server's answer to the device's query,
    which :class:`LCFTMethod` stored in the device's private state
    (``"query/hard"``) before the round; the device holds no table.
    """

    model: ModelSpec
    train: TrainConfig
    global_ctr: float
    corrections: tuple[str, ...]
    table: CorrectionTable | None = None
    correction_path: CorrectionPath = "table"
    dp_trainer: DPSGDTrainer | None = None

    def _pair(self, correction: str, local_ctr: float, task: DeviceTask) -> tuple[float, float]:
        if correction == "hard" and self.correction_path == "query":
            if "query/hard" not in task.private:
                raise InvalidParameterError(
                    f"device {task.device_id}: the hard correction on the query path needs the "
                    "server's answer (`query/hard` in the device's state); none was received"
                )
            a, b = task.private["query/hard"]
            return float(a), float(b)
        return correction_pair(correction, local_ctr, self.global_ctr, self.table)

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        start = np.asarray(task.models["global"], dtype=np.float32)
        w_i = data.train.ctr
        private: dict[str, Any] = {"local_ctr": w_i}
        with single_thread():
            cloud_model = self.model.build()
            load_flat_parameters(cloud_model, start)
            private["predictions/cloud"] = predict(cloud_model, data.test)
            records: list[LedgerRecord] = []
            for c in self.corrections:
                a, b = self._pair(c, w_i, task)
                labels = corrected_labels(data.train.y, a, b)
                if self.dp_trainer is None:
                    model = _fine_tune(
                        self.model, start, data.train, labels, self.train, seed=task.seed
                    )
                else:  # example-level DP-SGD; its record is spent for every correction
                    torch.manual_seed(task.seed)
                    model = self.model.build()
                    load_flat_parameters(model, start)
                    out = self.dp_trainer.train_round(
                        model,
                        data,
                        generator=torch.Generator().manual_seed(task.seed),
                        reference=None,
                        task=task,
                        labels=labels,
                    )
                    records.extend(out.privacy_records)
                private[f"predictions/{c}"] = predict(model, data.test)
                private[f"pair/{c}"] = (a, b)
        private["predictions"] = private[f"predictions/{self.corrections[0]}"]
        return DeviceOutput(
            {},
            private=private,
            stats={"loss": float("nan"), "steps": 0.0},
            privacy_records=tuple(records),
        )


@dataclass(frozen=True)
class LCFTOptions:
    """LCFT's ``[method.options]``.

    Parameters
    ----------
    corrections:
        Corrections fine-tuned side by side on every device (subset of
        ``none``, ``soft1``, ``soft2``, ``hard``); the first is the run's headline
        metric, every one is reported as ``<correction>/gauc`` etc.
    hard_edges:
        Local-CTR interval edges of the hard correction (0 … 1, increasing).
    hard_alphas, hard_betas:
        The (α, β) grid searched per interval.
    hard_min_rows, hard_max_users:
        Cloud users searched: at least this many rows; at most this many per interval.
    drift_edges:
        |w_i − w_g| buckets of the improvement analysis (paper Figure 2).
    correction_path:
        How a device gets its hard-correction pair: ``"table"`` (download the whole
        interval table and look up locally; the server learns nothing) or
        ``"query"`` (send w_i in a :class:`~secrelay.federated.messages.QueryMessage`,
        the server answers (α, β); protected by ``privacy.query_ldp``). Needs
        ``"hard"`` in ``corrections``.
    query_rr_bits:
        Randomized-response bits per query with ``privacy.query_ldp =
        "randomized_response"`` (ε is split evenly over them); 0 = the k that
        minimises the estimate's variance (:func:`rr_bits_for`).
    """

    corrections: tuple[str, ...] = ("soft1",)
    hard_edges: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    hard_alphas: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    hard_betas: tuple[float, ...] = (-0.2, 0.0, 0.2)
    hard_min_rows: int = 10
    hard_max_users: int = 40
    drift_edges: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 1.0)
    correction_path: CorrectionPath = "table"
    query_rr_bits: int = 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> LCFTOptions:
        out: LCFTOptions = _from_mapping(cls, options, _check_lcft)
        return out


def _check_lcft(o: Mapping[str, Any]) -> list[str]:
    problems = []
    cs = o.get("corrections", ("soft1",))
    bad = [c for c in cs if c not in CORRECTIONS]
    if not cs or bad:
        problems.append(
            f"method.options.corrections must be a non-empty list of {list(CORRECTIONS)}; got {list(cs)!r}"
        )
    if len(set(cs)) != len(cs):
        problems.append(f"method.options.corrections has duplicates: {list(cs)!r}")
    for name in ("hard_edges", "drift_edges"):
        if name in o:
            e = np.asarray(o[name], dtype=np.float64)
            if e.size < 2 or e[0] != 0 or e[-1] != 1 or np.any(np.diff(e) <= 0):
                problems.append(
                    f"method.options.{name} must increase strictly from 0 to 1; got {list(o[name])!r}"
                )
    for name in ("hard_alphas", "hard_betas"):
        if name in o and len(o[name]) == 0:
            problems.append(f"method.options.{name} must not be empty")
    for name in ("hard_min_rows", "hard_max_users"):
        if name in o and o[name] < (2 if name == "hard_min_rows" else 1):
            problems.append(f"method.options.{name} is too small; got {o[name]!r}")
    if o.get("correction_path", "table") == "query" and "hard" not in cs:
        problems.append(
            "method.options.correction_path = 'query' serves the hard correction, but "
            f"method.options.corrections = {list(cs)!r} has no 'hard' (the soft corrections "
            "need only the downloaded w_g); add 'hard' or set correction_path = 'table'"
        )
    if o.get("query_rr_bits", 0) < 0:
        problems.append(
            f"method.options.query_rr_bits must be >= 0 (0 = automatic); got {o['query_rr_bits']!r}"
        )
    return problems


def _privacy_problems(options: LCFTOptions, privacy: Any) -> list[str]:
    """LCFT's checks of ``[privacy]`` (every problem, each naming its keys)."""
    problems = []
    if privacy.user_level_dp:
        problems.append(
            "method.name 'lcft' does not apply privacy.user_level_dp: nothing is aggregated "
            "(privacy.query_ldp protects LCFT's only upload, the local-CTR query); turn it off"
        )
    if privacy.dp_sgd:
        raw = [
            c
            for c in options.corrections
            if c in ("soft1", "soft2")
            or (c == "hard" and (options.correction_path != "query" or privacy.query_ldp == "off"))
        ]
        if raw:
            problems.append(
                f"privacy.dp_sgd cannot make LCFT's corrections {raw} example-level private: "
                "their (α, β) come from the device's raw local CTR, so one example changes every "
                "label. Use corrections = ['none'], or 'hard' with correction_path = 'query' and "
                "privacy.query_ldp on (the pair is then a function of a DP report)"
            )
    if privacy.query_ldp != "off":
        if "hard" not in options.corrections:
            problems.append(
                f"privacy.query_ldp = {privacy.query_ldp!r} protects the hard correction's "
                f"local-CTR query, but method.options.corrections = {list(options.corrections)!r} "
                "has no 'hard' and the soft corrections send nothing (they need only the "
                "downloaded w_g); set privacy.query_ldp = 'off'"
            )
        elif options.correction_path != "query":
            problems.append(
                f"privacy.query_ldp = {privacy.query_ldp!r} protects a local-CTR query, but "
                "method.options.correction_path = 'table' sends nothing up (the device downloads "
                "the whole table, so the server learns nothing already); set "
                "method.options.correction_path = 'query' or privacy.query_ldp = 'off'"
            )
    if options.query_rr_bits and privacy.query_ldp != "randomized_response":
        problems.append(
            f"method.options.query_rr_bits = {options.query_rr_bits} applies to "
            "privacy.query_ldp = 'randomized_response' only; got privacy.query_ldp = "
            f"{privacy.query_ldp!r}"
        )
    return problems


def improvement_by_drift(
    devices: Mapping[int, DeviceData],
    local_ctr: Mapping[int, float],
    predictions: Mapping[str, Mapping[int, np.ndarray]],
    global_ctr: float,
    edges: Sequence[float],
) -> list[dict[str, Any]]:
    """Per |w_i − w_g| bucket: devices, and each correction's user-AUC gain over the
    cloud model (test-size weighted mean of AUC_u(fine-tuned) − AUC_u(cloud))
    (the paper's Figure 2)."""
    e = np.asarray(edges, dtype=np.float64)
    out = []
    for lo, hi in itertools.pairwise(e):
        row: dict[str, Any] = {"lo": float(lo), "hi": float(hi), "devices": 0}
        gains: dict[str, list[tuple[float, int]]] = {c: [] for c in predictions if c != "cloud"}
        for d, dd in devices.items():
            if d not in local_ctr or len(dd.test) == 0:
                continue
            drift = abs(local_ctr[d] - global_ctr)
            if not (lo <= drift < hi or (hi == e[-1] and drift == hi)):
                continue
            y = dd.test.y
            if y.min() == y.max():
                continue
            row["devices"] += 1
            base = auc(y, predictions["cloud"][d])
            for c in gains:
                gains[c].append((auc(y, predictions[c][d]) - base, len(y)))
        for c, g in gains.items():
            if g:
                v = np.array([x for x, _ in g])
                w = np.array([n for _, n in g], dtype=np.float64)
                row[f"{c}/auc_gain"] = float((v * w).sum() / w.sum())
        out.append(row)
    return out


class LCFTMethod(Method):
    """LCFT driven by the runner: the cloud trains the model (round 0), every device
    fine-tunes it once with corrected labels (round 1).

    On the query path every device first sends its (LDP-noised, with
    ``privacy.query_ldp``) local CTR and receives its hard-correction pair; that
    release is round 1's only privacy cost, one user-level ledger record covering
    every device (:meth:`CTRQuery.record`), known before the round from the config
    and the device ids alone.
    """

    name = "lcft"
    supports_privacy = True  # privacy.query_ldp and dp_sgd; user_level_dp is refused
    makes_queries = True

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        options = LCFTOptions.from_mapping(config.method.options)
        return [*super().privacy_problems(config), *_privacy_problems(options, config.privacy)]

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.options = LCFTOptions.from_mapping(ctx.config.method.options)
        privacy = ctx.config.privacy
        self.query: CTRQuery | None = None
        if self.options.correction_path == "query":
            self.query = CTRQuery.plan(
                privacy.query_ldp,
                epsilon=privacy.query_ldp_epsilon,
                delta=privacy.delta,
                accountant=privacy.accountant,
                bits=self.options.query_rr_bits,
            )
        self.table: CorrectionTable | None = None
        self.search_stats: dict[str, Any] = {}
        self.query_stats: dict[str, float] = {}
        self._privacy_records: tuple[LedgerRecord, ...] = ()
        self.dp_trainer: DPSGDTrainer | None = None

    def setup(self) -> None:
        cfg, seed = self.ctx.config, self.ctx.seed
        cloud = self.ctx.data.cloud
        self.global_ctr = cloud.ctr
        self.cloud_vec = train_cloud_model(
            self.ctx.model_spec, cloud, make_train_config(cfg.cloud), seed=seed
        )
        if self.query is not None and self.query.private:
            self.ctx.log(f"lcft query LDP: {self.query.describe()}")
        if "hard" in self.options.corrections:
            with single_thread():
                self.table, self.search_stats = search_correction_table(
                    self.ctx.model_spec,
                    cloud,
                    make_train_config(cfg.cloud),
                    make_train_config(cfg.local),
                    edges=self.options.hard_edges,
                    alphas=self.options.hard_alphas,
                    betas=self.options.hard_betas,
                    min_rows=self.options.hard_min_rows,
                    max_users=self.options.hard_max_users,
                    seed=seed,
                )
            self.ctx.log(
                "lcft hard correction table: "
                + ", ".join(
                    f"[{lo:.2f},{hi:.2f}) -> ({a:g}, {b:g})"
                    for lo, hi, a, b in zip(
                        self.table.edges[:-1],
                        self.table.edges[1:],
                        self.table.alpha,
                        self.table.beta,
                    )
                )
            )
        self._publish()
        self._build_loop()

    def _publish(self) -> None:
        """The one-way download every device receives at set-up: w_g and (for the
        hard correction on the table path) the whole interval table."""
        arrays = {"global_ctr": np.array([self.global_ctr])}
        if self.table is not None and self.options.correction_path == "table":
            arrays.update(self.table.arrays())
        for dev in sorted(self.ctx.data.devices):
            self.ctx.channel.send(
                ReplyMessage(sender=SERVER, receiver=dev, round=0, topic=TABLE_TOPIC, arrays=arrays)
            )

    def _build_loop(self) -> None:
        strategy = StandaloneStrategy()
        strategy.initialize({"global": self.cloud_vec})
        train = make_train_config(self.ctx.config.local)
        self.dp_trainer = (
            self.ctx.privacy.dpsgd_trainer(train, participations=len(self.options.corrections))
            if self.ctx.config.privacy.dp_sgd
            else None
        )
        program = LCFTProgram(
            self.ctx.model_spec,
            train,
            self.global_ctr,
            tuple(self.options.corrections),
            self.table if self.options.correction_path == "table" else None,
            self.options.correction_path,
            self.dp_trainer,
        )
        self.loop = FederatedLoop(
            strategy,
            program,
            self.ctx.data.devices,
            self.ctx.model_spec,
            config=RoundConfig(clients_per_round=len(self.ctx.data.devices), sampling="fixed"),
            seed=self.ctx.seed,
            channel=self.ctx.channel,
            executor=self.ctx.executor,
        )

    def num_rounds(self) -> int:
        return 1

    def _predictions(self, name: str) -> dict[int, np.ndarray]:
        return {
            d: np.asarray(s[f"predictions/{name}"])
            for d, s in self.loop.store.state.items()
            if f"predictions/{name}" in s
        }

    def _metrics_of(self, preds: Mapping[int, np.ndarray]) -> Metrics:
        devs = [d for d in sorted(preds) if len(self.ctx.data.devices[d].test)]
        tests = [self.ctx.data.devices[d].test for d in devs]
        return evaluate_predictions(
            np.concatenate([t.y for t in tests]),
            np.concatenate([preds[d] for d in devs]),
            np.concatenate([t.user for t in tests]),
        )

    def _query_generator(self, round: int, device: int) -> RandomGenerator:
        if self.ctx.config.privacy.secure_noise:
            return make_generator(secure=True)
        return np.random.default_rng(np.random.SeedSequence([self.ctx.seed, round, device, 29]))

    def _query_phase(self, round: int) -> tuple[LedgerRecord, ...]:
        """Every device queries its hard-correction pair through the channel; the
        answer goes into the device's private state for the round's program."""
        assert self.query is not None and self.table is not None
        devices = sorted(self.ctx.data.devices)
        errors, interval_hits, pair_hits = [], 0, 0
        for dev in devices:
            w_i = self.ctx.data.devices[dev].train.ctr  # on the device
            q = self.ctx.channel.send(
                query_request(
                    dev, round, w_i, self.query, generator=self._query_generator(round, dev)
                )
            )
            assert isinstance(q, QueryMessage)
            r = self.ctx.channel.send(answer_query(q, self.table, self.query))  # server side
            assert isinstance(r, ReplyMessage)
            pair = (float(r.arrays["alpha"][0]), float(r.arrays["beta"][0]))
            self.loop.store.update(dev, {"query/hard": pair})  # the device keeps its answer
            # Simulation bookkeeping (neither party sees both w_i and the estimate).
            est = self.query.estimate(q.arrays)
            errors.append(abs(est - w_i))
            interval_hits += self.table.interval(est) == self.table.interval(w_i)
            pair_hits += pair == self.table.lookup(w_i)
        n = max(len(devices), 1)
        self.query_stats = {
            "abs_error": float(np.mean(errors)) if errors else float("nan"),
            "interval_match": interval_hits / n,
            "pair_match": pair_hits / n,
        }
        rec = self.query.record(run_id=self.ctx.config.run.name, round=round, devices=devices)
        return () if rec is None else (rec,)

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """Round 1's releases, from the config, the device ids and data sizes alone:
        the query record, and each device's DP-SGD record once per correction."""
        if round != 1:
            return ()
        out: list[LedgerRecord] = []
        if self.query is not None:
            rec = self.query.record(
                run_id=self.ctx.config.run.name, round=round, devices=sorted(self.ctx.data.devices)
            )
            if rec is not None:
                out.append(rec)
        if self.dp_trainer is not None:
            for _, dd in sorted(self.ctx.data.devices.items()):
                if dd.num_train:
                    rec = self.dp_trainer.planned_record(dd, round=round)
                    out.extend([rec] * len(self.options.corrections))
        return tuple(out)

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        return self._privacy_records

    def run_round(self, round: int) -> dict[str, Any]:
        self._privacy_records = ()
        if self.query is not None:
            self._privacy_records = self._query_phase(round)
        try:
            record = self.loop.run_round(round, evaluate=True)
        except ProtocolAbort as exc:  # the queries were released all the same
            exc.add_privacy_records(self._privacy_records)
            raise
        self._privacy_records += tuple(record.privacy_records)
        rec = record.as_dict()
        for k, v in self.query_stats.items():
            rec[f"query/{k}"] = v
        local_ctr = {d: float(s["local_ctr"]) for d, s in self.loop.store.state.items()}
        preds = {c: self._predictions(c) for c in ("cloud", *self.options.corrections)}
        for c, p in preds.items():
            for k, v in self._metrics_of(p).as_dict().items():
                rec[f"{c}/{k}"] = v
        buckets = improvement_by_drift(
            self.ctx.data.devices, local_ctr, preds, self.global_ctr, self.options.drift_edges
        )
        report = {
            "global_ctr": self.global_ctr,
            "corrections": list(self.options.corrections),
            "table": None
            if self.table is None
            else {k: v.tolist() for k, v in self.table.arrays().items()},
            "search": self.search_stats,
            "correction_path": self.options.correction_path,
            "query": None
            if self.query is None
            else {**self.query.describe(), "stats": self.query_stats},
            "drift_buckets": buckets,
        }
        atomic_write_text(
            self.ctx.run_dir / "lcft_report.json", json.dumps(report, indent=2, default=float)
        )
        return rec

    def evaluate(self) -> Metrics:
        if self.loop.personal_predictions:
            return self.loop.evaluate()
        model = self.ctx.model_spec.build()
        load_flat_parameters(model, self.cloud_vec)
        return evaluate_predictions(
            self.ctx.data.device_test.y,
            predict(model, self.ctx.data.device_test),
            self.ctx.data.device_test.user,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "loop": self.loop.state_dict(),
            "cloud": self.cloud_vec,
            "global_ctr": self.global_ctr,
            "table": None if self.table is None else self.table.arrays(),
            "search": json.loads(json.dumps(self.search_stats, default=float)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cloud_vec = np.asarray(state["cloud"], dtype=np.float32)
        self.global_ctr = float(state["global_ctr"])
        self.table = None if state["table"] is None else CorrectionTable.from_arrays(state["table"])
        self.search_stats = dict(state.get("search", {}))
        self._build_loop()
        self.loop.load_state_dict(state["loop"])

    def close(self) -> None:
        if hasattr(self, "loop"):
            self.loop.close()
