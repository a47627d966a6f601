"""Empirical ε audits: turn a membership test on canaries into a lower bound on ε and
set it next to the accountant's upper bound.

Two designs, both sound at the stated confidence:

* **Many runs** (Jagielski et al. 2020; Nasr et al. 2021) —
  :func:`audit_gaussian_sum` audits the central Gaussian mechanism DP-FedAvg
  releases with (:func:`protocols.dp.gaussian_mechanism`): in each of ``trials``
  independent releases a canary contribution of norm C is included or not (a fair
  coin), the adversary knows every other contribution (white box, the worst case
  the guarantee covers) and thresholds the release's projection on the canary. The
  threshold is chosen on half the trials and the bound
  (:func:`attacks.stats.epsilon_lower_bound`) computed on the other half.
* **One run** (Steinke, Nasr & Jagielski, NeurIPS 2023) — :class:`CanaryAudit`
  inserts ``m`` canaries into a real ``secrelay`` run, each with probability 1/2:
  crafted *examples* (rows whose item is a fresh item value) on one device for
  example-level DP-SGD, or crafted *devices* (each holding rows of its own fresh
  item) for user-level DP-FedAvg. It scores each canary by the movement of its
  item's embedding row in what the adversary sees (the device's upload, or the
  released models), guesses the top ``k`` IN and the bottom ``k`` OUT and bounds ε
  with :func:`attacks.stats.one_run_epsilon_lower_bound`; ``k`` is picked from a
  small grid with a Bonferroni correction over it, so the bound stays valid.

Know the ceiling: a one-run audit with ``m`` canaries cannot certify more than
:func:`attacks.stats.one_run_epsilon_ceiling` even with every guess right (≈ 5.8 at
95 % confidence and δ = 1e-5 for 1,000 canaries, ≈ 7.8 for 10,000), and a many-run
audit no more than about log(trials/2) (a CP bound on zero false positives out of
trials/4 negatives). :class:`AuditResult` states the ceiling and the regime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attacks.stats import (
    epsilon_lower_bound,
    one_run_epsilon_ceiling,
    one_run_epsilon_lower_bound,
)
from attacks.truth import field_values
from attacks.views import ModelLayout, ServerView
from protocols.dp import GaussianEvent, PrivacyLedger, gaussian_mechanism, make_accountant
from secrelay import RunConfig, RunResult, simulate
from secrelay.data import CTRDataset, Field, Schema
from secrelay.methods import prepare_data

__all__ = [
    "AuditResult",
    "CanaryAudit",
    "CanaryData",
    "audit_gaussian_sum",
    "insert_canaries",
    "one_run_guesses",
    "simulate_in_memory",
]

Regime = Literal["vacuous", "ceiling-limited", "sensitive", "violation"]


@dataclass(frozen=True)
class AuditResult:
    """An empirical lower bound on ε next to the accountant's upper bound.

    Attributes
    ----------
    epsilon_lower:
        ε the audit certifies at ``confidence`` (0 = nothing certified).
    epsilon_upper:
        The accountant's ε for the same mechanism, unit and δ.
    ceiling:
        The most this audit design could certify (every guess right).
    regime:
        ``"violation"`` (lower > upper: the implementation or accounting is wrong),
        ``"vacuous"`` (nothing certified), ``"ceiling-limited"`` (the ceiling is
        below the upper bound: even a perfect attack could not reach the claim, so
        the audit cannot say the claim is tight) or ``"sensitive"`` (the audit
        could have reached the claim).
    unit, design:
        ``"example"`` / ``"user"``; ``"many-runs"`` / ``"one-run"``.
    counts:
        The raw counts behind the bound (trials or canaries, guesses, correct, ...).
    """

    epsilon_lower: float
    epsilon_upper: float
    ceiling: float
    delta: float
    confidence: float
    unit: str
    design: str
    counts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def regime(self) -> Regime:
        if self.epsilon_lower > self.epsilon_upper:
            return "violation"
        if self.epsilon_lower <= 0:
            return "vacuous"
        if self.ceiling < self.epsilon_upper:
            return "ceiling-limited"
        return "sensitive"

    def as_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "epsilon_lower": clean(self.epsilon_lower),
            "epsilon_upper": clean(self.epsilon_upper),
            "ceiling": clean(self.ceiling),
            "delta": self.delta,
            "confidence": self.confidence,
            "unit": self.unit,
            "design": self.design,
            "regime": self.regime,
            **{k: v for k, v in self.counts.items()},
        }


# --- many runs: the central Gaussian sum -------------------------------------------------

Mechanism = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def audit_gaussian_sum(
    *,
    noise_multiplier: float,
    clipping_norm: float = 1.0,
    trials: int = 20_000,
    dimension: int = 16,
    delta: float = 1e-5,
    confidence: float = 0.95,
    accountant: str = "prv",
    seed: int = 0,
    mechanism: Mechanism | None = None,
) -> AuditResult:
    """Many-run audit of one release of the central Gaussian sum (user level).

    Parameters
    ----------
    noise_multiplier, clipping_norm:
        z and C of the release (σ = z·C; the canary has norm C, the sensitivity).
    trials:
        Independent releases; half choose the threshold, half give the bound.
    dimension:
        Length of the released vector (the white-box test projects on the canary, so
        the dimension does not change the bound; it exercises the real mechanism).
    mechanism:
        ``(sums, generator) -> releases``, one release per row of ``sums``; default
        :func:`protocols.dp.gaussian_mechanism` with (z, C). Tests pass a broken one.
    seed:
        Seed of the coins and of the noise (the audit is a simulation).
    """
    if trials < 4:
        raise ValueError(f"`trials` must be >= 4; got {trials}")
    rng = np.random.default_rng(seed)
    others = rng.normal(size=(1, dimension))
    others *= 0.5 * clipping_norm / np.linalg.norm(others)  # another device's clipped update
    canary = np.zeros(dimension)
    canary[0] = clipping_norm  # norm C: the whole sensitivity
    included = rng.random(trials) < 0.5
    totals = np.repeat(others, trials, axis=0) + np.outer(included, canary)
    if mechanism is None:

        def mechanism(sums: np.ndarray, gen: np.random.Generator) -> np.ndarray:
            out, _ = gaussian_mechanism(
                sums, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, generator=gen
            )
            return out

    released = mechanism(totals, np.random.default_rng([seed, 1]))
    score = (released - others) @ (canary / clipping_norm)
    half = trials // 2
    thr = _best_threshold(score[:half], included[:half], delta=delta, confidence=confidence)
    s, y = score[half:], included[half:]
    guess = s > thr
    lower = epsilon_lower_bound(
        true_positives=int((guess & y).sum()),
        false_negatives=int((~guess & y).sum()),
        false_positives=int((guess & ~y).sum()),
        true_negatives=int((~guess & ~y).sum()),
        delta=delta,
        confidence=confidence,
    )
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ceiling = epsilon_lower_bound(
        true_positives=n_pos,
        false_negatives=0,
        false_positives=0,
        true_negatives=n_neg,
        delta=delta,
        confidence=confidence,
    )
    upper = (
        make_accountant(accountant)
        .compose(GaussianEvent(noise_multiplier=noise_multiplier))
        .get_epsilon(delta=delta)
    )
    return AuditResult(
        lower,
        float(upper),
        ceiling,
        delta,
        confidence,
        "user",
        "many-runs",
        {
            "trials": int(trials),
            "threshold_trials": int(half),
            "threshold": float(thr),
            "tpr": float((guess & y).sum() / max(n_pos, 1)),
            "fpr": float((guess & ~y).sum() / max(n_neg, 1)),
            "noise_multiplier": float(noise_multiplier),
        },
    )


def _best_threshold(
    score: np.ndarray, label: np.ndarray, *, delta: float, confidence: float
) -> float:
    """The threshold that maximises the bound on the selection half."""
    cands = np.quantile(score, np.linspace(0.5, 0.9995, 200))
    best, best_thr = -1.0, float(cands[0])
    for thr in cands:
        g = score > thr
        eps = epsilon_lower_bound(
            true_positives=int((g & label).sum()),
            false_negatives=int((~g & label).sum()),
            false_positives=int((g & ~label).sum()),
            true_negatives=int((~g & ~label).sum()),
            delta=delta,
            confidence=confidence,
        )
        if eps > best:
            best, best_thr = eps, float(thr)
    return best_thr


# --- one run: canaries in a real run ------------------------------------------------------


def simulate_in_memory(config: RunConfig, data: CTRDataset, run_dir: str | Path) -> RunResult:
    """Run ``config`` on an in-memory data set (through :func:`secrelay.simulate`)."""
    return simulate(
        config.method.name,
        strategy=config.strategy.name,
        strategy_params=config.strategy.params,
        method_options=config.method.options,
        data=data,
        model=config.model.name,
        model_options=config.model.options,
        seed=config.run.seed,
        config=config,
        run_dir=run_dir,
        progress=False,
    )


def one_run_guesses(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.5),
) -> tuple[float, dict[str, Any]]:
    """The best one-run bound over guessing the top/bottom ``k`` canaries.

    For each ``k = fraction·m`` the ``k`` highest scores are guessed IN and the ``k``
    lowest OUT (``fraction`` 0.5 guesses every canary); the bound of each ``k`` is
    computed at confidence ``1 − (1 − confidence)/len(fractions)`` (Bonferroni), so the
    maximum over ``k`` holds at ``confidence``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(included, dtype=bool)
    m = s.size
    order = np.argsort(s, kind="stable")
    level = 1.0 - (1.0 - confidence) / len(fractions)
    best: tuple[float, dict[str, Any]] = (0.0, {"guesses": 0, "correct": 0, "k": 0})
    for f in fractions:
        k = max(1, round(f * m))
        if 2 * k > m:
            k = m // 2
        top, bottom = order[m - k :], order[:k]
        correct = int(y[top].sum() + (~y[bottom]).sum())
        eps = one_run_epsilon_lower_bound(
            canaries=m, guesses=2 * k, correct=correct, delta=delta, confidence=level
        )
        if eps > best[0] or best[1]["guesses"] == 0:
            best = (eps, {"guesses": 2 * k, "correct": correct, "k": k, "confidence_per_k": level})
    return best


@dataclass(frozen=True)
class CanaryData:
    """A data set with canaries inserted, and what the auditor keeps to itself."""

    data: CTRDataset
    canary_items: np.ndarray  # item codes of the m canaries
    included: np.ndarray  # bool (m,): which canaries are in the data
    owners: np.ndarray  # device of each canary (its own device for user-level)


def insert_canaries(
    base: CTRDataset,
    *,
    canaries: int,
    unit: Literal["example", "user"],
    device: int | None = None,
    rows_per_canary: int = 1,
    canary_time: float = 0.5,
    seed: int = 0,
) -> CanaryData:
    """Extend the item vocabulary by ``canaries`` fresh items and insert each canary
    with probability 1/2.

    ``unit="example"``: canary *i* is one row of ``device`` (default: the user with
    the most rows) whose item is fresh item *i*, its other features copied from one of
    that device's rows and a random label. ``unit="user"``: canary *i* is a new device
    holding ``rows_per_canary`` such rows (features from random rows of the data).
    Timestamps: example canaries interleave with the owner's rows (between its 30 %
    and 50 % time quantiles), so the per-device 80/20 time split keeps them in its
    train rows while they number at most ~1.5× its own rows; device canaries sit at
    ``canary_time`` of the data's time span, so a temporal regulation split with α
    below that fraction keeps them on the devices. :class:`CanaryAudit` checks both.
    """
    schema = base.schema
    item = schema.item_id_field
    if not item:
        raise ValueError("the data set has no item_id_field to make canary items of")
    rng = np.random.default_rng(seed)
    old_vocab = schema[item].vocab_size
    fields = tuple(
        Field(
            f.name, f.role, f.vocab_size + canaries if f.name == item else f.vocab_size, f.max_len
        )
        for f in schema.fields
    )
    new_schema = Schema(
        fields,
        user_id_field=schema.user_id_field,
        label=schema.label,
        timestamp=schema.timestamp,
        item_id_field=schema.item_id_field,
    )
    col = schema.column_slice(item).start
    codes = np.arange(old_vocab, old_vocab + canaries)
    included = rng.random(canaries) < 0.5
    t0, t1 = int(base.timestamp.min()), int(base.timestamp.max())
    when = int(t0 + canary_time * (t1 - t0))
    xs, ys, users = [], [], []
    times: list[int] = []
    if unit == "example":
        users_rows = base.by_user()
        owner = device if device is not None else max(users_rows, key=lambda u: len(users_rows[u]))
        own = users_rows[owner]
        owners = np.full(canaries, owner)
        # interleave with the owner's own rows (between its 30 % and 50 % time quantiles)
        lo, hi = np.quantile(base.timestamp[own], [0.3, 0.5])
        for i in np.flatnonzero(included):
            times.append(int(rng.integers(int(lo), int(hi) + 1)))
            x = base.x[own[rng.integers(own.size)]].copy()
            x[col] = codes[i]
            xs.append(x)
            ys.append(float(rng.integers(2)))
            users.append(owner)
    else:
        first = int(base.user.max()) + 1
        owners = np.arange(first, first + canaries)
        uid_col = schema.column_slice(schema.user_id_field).start
        uid_vocab = schema[schema.user_id_field].vocab_size
        for i in np.flatnonzero(included):
            for _ in range(rows_per_canary):
                times.append(when)
                x = base.x[rng.integers(len(base))].copy()
                x[col] = codes[i]
                x[uid_col] = int(rng.integers(1, uid_vocab))
                xs.append(x)
                ys.append(float(rng.integers(2)))
                users.append(int(owners[i]))
    if xs:
        extra = CTRDataset(
            new_schema,
            np.stack(xs),
            np.asarray(ys),
            np.asarray(users),
            np.asarray(times, dtype=np.int64),
        )
        data = CTRDataset.concat(
            [CTRDataset(new_schema, base.x, base.y, base.user, base.timestamp), extra]
        )
    else:
        data = CTRDataset(new_schema, base.x, base.y, base.user, base.timestamp)
    return CanaryData(data, codes, included, owners)


class CanaryAudit:
    """One-run audit of a real ``secrelay`` run (module doc).

    Parameters
    ----------
    config:
        The run to audit (its ``[privacy]`` is what is audited); ``[data]`` is
        replaced by ``base`` with canaries, ``[run] record_transcript`` is turned on.
    base:
        The data set to insert canaries into.
    unit:
        ``"example"`` (DP-SGD; the adversary is the server reading the device's
        upload) or ``"user"`` (DP-FedAvg; the adversary sees the released models).
    canaries:
        m.
    """

    def __init__(
        self,
        config: RunConfig,
        base: CTRDataset,
        *,
        unit: Literal["example", "user"],
        canaries: int = 500,
        rows_per_canary: int = 2,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.base = base
        self.unit: Literal["example", "user"] = unit
        self.canaries = int(canaries)
        self.rows_per_canary = int(rows_per_canary)
        self.confidence = float(confidence)
        self.seed = int(seed)

    def run(self, run_dir: str | Path) -> AuditResult:
        """Train once with the canaries, score them, bound ε."""
        cd = insert_canaries(
            self.base,
            canaries=self.canaries,
            unit=self.unit,
            rows_per_canary=self.rows_per_canary,
            canary_time=0.1,
            seed=self.seed,
        )
        cfg = self.config.replace(
            run={"record_transcript": True, "progress": False},
            split={"mode": "temporal", "alpha": min(self.config.split.alpha, 0.05)},
        )
        if self.unit == "example":
            self._check_in_train(cfg, cd)
        rd = Path(simulate_in_memory(cfg, cd.data, run_dir).run_dir)
        layout = ModelLayout.from_config(cfg, cd.data.schema)
        view = ServerView.from_run(rd, cd.data.schema)
        item = cd.data.schema.item_id_field or ""
        delta = cfg.privacy.delta
        if self.unit == "example":
            owner = int(cd.owners[0])
            rounds = [t for (t, d) in sorted(view.uploads) if d == owner]
            if not rounds:
                raise ValueError(f"the canary device {owner} never uploaded; sample it every round")
            total = sum(
                (np.asarray(view.device_update(t, owner)) for t in rounds),
                start=np.zeros(layout.num_parameters),
            )
            norms = layout.row_norms(total, item)[cd.canary_items]
            device: str | None = str(owner)
        else:
            release = view.release_view()
            first, last = min(release.rounds), max(release.rounds)
            moved = np.asarray(release.models[last]["global"], dtype=np.float64) - np.asarray(
                release.models[first]["global"], dtype=np.float64
            )
            norms = layout.row_norms(moved, item)[cd.canary_items]
            device = None
        lower, counts = one_run_guesses(norms, cd.included, delta=delta, confidence=self.confidence)
        upper = self._upper(rd, delta, device)
        # every canary guessed right, at the Bonferroni-corrected level of the guesses
        ceiling = one_run_epsilon_ceiling(
            canaries=self.canaries, delta=delta, confidence=counts["confidence_per_k"]
        )
        return AuditResult(
            lower,
            upper,
            ceiling,
            delta,
            self.confidence,
            self.unit,
            "one-run",
            {"canaries": self.canaries, "included": int(cd.included.sum()), **counts},
        )

    @staticmethod
    def _check_in_train(cfg: RunConfig, cd: CanaryData) -> None:
        owner = int(cd.owners[0])
        dev = prepare_data(cfg, cd.data).devices.get(owner)  # temporal split: cloud first
        held = field_values(dev.train, cd.data.schema.item_id_field or "") if dev else set()
        missing = sorted(set(cd.canary_items[cd.included].tolist()) - held)
        if missing:
            raise ValueError(
                f"{len(missing)} included canaries fell outside device {owner}'s train rows; "
                "use fewer canaries or a device with more rows"
            )

    def _upper(self, run_dir: Path, delta: float, device: str | None) -> float:
        path = run_dir / "privacy_ledger.jsonl"
        if not path.is_file():
            return math.inf
        ledger = PrivacyLedger.load(path)
        accountant = self.config.privacy.accountant
        records = [r for r in ledger.records if r.unit == self.unit]
        if not records:
            return math.inf
        return float(
            ledger.epsilon(delta=delta, device=device, unit=self.unit, accountant=accountant)
        )
