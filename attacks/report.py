"""The utility–privacy trade-off report: train every protection setting of a grid, run
every applicable attack on what each setting lets the adversary see, and write
``report.json``, ``report.md`` and PNG plots.

``attack(config, out)`` is the Python entry point (``secrelay-attack CONFIG --out DIR``
and ``python -m attacks CONFIG --out DIR`` on the command line). For each setting of
``[attack]`` (:mod:`attacks.config`):

1. the base config with the setting's overrides runs through :func:`secrelay.run`
   into ``DIR/runs/<setting>`` with the transcript recorded;
2. the attacks read only their view — :class:`~attacks.views.ServerView` (the
   transcript), the released models, the cloud data the server owns — and are scored
   against the experimenter's ground truth (:mod:`attacks.truth`);
3. each (setting, attack) becomes one :class:`Entry`: the headline metric with its
   confidence interval, the setting's gAUC / AUC, and the details.

Which attacks apply where:

============ =========================================================================
attack       runs on
============ =========================================================================
items        plaintext uploads (per device); under SecAgg the per-round sums (union)
difference   the released per-round sums + participant lists (every setting)
membership   device models rebuilt from plaintext uploads (loss, reference, LiRA) and
             the final global model (loss, reference-to-cloud-model, LiRA approx.)
attributes   plaintext updates (attribute rows; item rows → classifier), RelayRec's
             plaintext p_u; otherwise the majority baseline (no per-device signal)
audit        DP settings: many-run audit of the user-level Gaussian release at the
             run's noise multiplier; one-run canary audit of example-level DP-SGD on
             a reduced copy of the run (20 devices, 1 round)
cluster      RelayRec runs: cluster choice and preference category
inversion    federated ``dnn`` runs: DLG on a planted one-step FedSGD round per batch
             size, trained with the setting's protection (plain / clipped / DP-SGD /
             secure sum)
lcft         LCFT runs: the server's estimate of each device's local CTR from its
             query (plain, LDP) or none (table download); a simulated ε sweep
coda         CoDA runs: attributes and items from the served neighbourhood (batch
             fetches); re-identification of pool users from (privatized) samples
============ =========================================================================
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attacks.attributes import AttributeInferenceAttack
from attacks.audit import AuditResult, CanaryAudit, audit_gaussian_sum
from attacks.clusters import ClusterInferenceAttack
from attacks.coda import NeighbourhoodAttack, ReidentificationAttack, reidentification_sweep
from attacks.config import AttackConfig, Setting, load_attack_config
from attacks.inversion import GradientInversionAttack, inversion_run
from attacks.items import AggregateMode, InteractedItemAttack, ItemInferenceResult
from attacks.lcft import LocalCTRAttack, ldp_sweep
from attacks.membership import (
    LiRAAttack,
    LossThresholdAttack,
    MembershipResult,
    ReferenceAttack,
    membership_game,
)
from attacks.plots import pareto_frontier, plot_roc, plot_tradeoff
from attacks.stats import Estimate, roc_summary
from attacks.training import Recipe, train_from
from attacks.truth import (
    final_models,
    item_sets,
    load_truth,
    preference_categories,
    private_keys,
    user_attribute,
)
from attacks.views import ModelLayout, ServerView
from protocols.dp import PrivacyLedger
from secrelay import RunConfig, run
from secrelay.data import CTRDataset
from secrelay.methods import PreparedData

__all__ = ["Entry", "SettingRun", "TradeoffReport", "attack", "run_attacks"]


@dataclass(frozen=True)
class Entry:
    """One (setting, attack) cell of the report.

    ``value`` is the headline leakage metric (``metric`` names it) with its interval;
    ``applicable`` is false (and ``note`` says why) when the view gives the attack
    nothing to work on.
    """

    setting: str
    attack: str
    metric: str
    value: Estimate
    gauc: float | None
    auc: float | None
    details: Mapping[str, Any] = field(default_factory=dict)
    applicable: bool = True
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "attack": self.attack,
            "metric": self.metric,
            **self.value.as_dict(),
            "gauc": self.gauc,
            "auc": self.auc,
            "applicable": self.applicable,
            "note": self.note,
            "details": _jsonable(self.details),
        }


@dataclass(frozen=True)
class SettingRun:
    """A trained setting: its overrides, accuracy, privacy spend and run directory."""

    name: str
    overrides: Mapping[str, Any]
    run_dir: Path
    metrics: Mapping[str, Any]
    epsilon: Mapping[str, float | None]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "overrides": _jsonable(self.overrides),
            "run_dir": str(self.run_dir),
            "gauc": self.metrics.get("gauc"),
            "auc": self.metrics.get("auc"),
            "logloss": self.metrics.get("logloss"),
            "rounds": self.metrics.get("round"),
            "epsilon": dict(self.epsilon),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class TradeoffReport:
    """What :func:`attack` wrote: settings, entries and the output paths."""

    settings: tuple[SettingRun, ...]
    entries: tuple[Entry, ...]
    out: Path
    notes: tuple[str, ...] = ()

    def entry(self, setting: str, attack: str) -> Entry:
        for e in self.entries:
            if e.setting == setting and e.attack == attack:
                return e
        raise KeyError(f"no entry for ({setting!r}, {attack!r})")


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Estimate):
        return x.as_dict()
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


# --- the attack context of one setting -----------------------------------------------------


@dataclass
class _Context:
    setting: str
    config: RunConfig
    run_dir: Path
    truth: PreparedData
    view: ServerView
    gauc: float | None
    auc: float | None
    options: AttackConfig
    log: Callable[[str], None]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def entry(self, attack: str, metric: str, value: Estimate, **kw: Any) -> Entry:
        return Entry(self.setting, attack, metric, value, self.gauc, self.auc, **kw)

    def not_applicable(self, attack: str, metric: str, note: str) -> Entry:
        return Entry(
            self.setting,
            attack,
            metric,
            Estimate.missing(),
            self.gauc,
            self.auc,
            applicable=False,
            note=note,
        )


def _items_details(r: ItemInferenceResult) -> dict[str, Any]:
    return r.as_dict()


def _attack_items(ctx: _Context) -> list[Entry]:
    a = InteractedItemAttack(seed=ctx.options.seed)
    truth = item_sets(ctx.truth)
    if ctx.view.uploads:
        r = a.run_plain(ctx.view, truth)
    else:
        r = a.run_aggregate(ctx.view, ctx.view.release_view(), truth, mode="union")
    return [
        ctx.entry(
            "items",
            "item-set F1",
            r.f1,
            details={**_items_details(r), "acceptance": "recall >= 0.95 at precision >= 0.95"},
        )
    ]


MODES: tuple[AggregateMode, ...] = ("union", "intersection", "difference")


def _attack_difference(ctx: _Context) -> list[Entry]:
    a = InteractedItemAttack(seed=ctx.options.seed)
    truth = item_sets(ctx.truth)
    prior = _item_prior(ctx.truth.cloud)
    release = ctx.view.release_view()
    results = {
        mode: a.run_aggregate(ctx.view, release, truth, mode=mode, prior=prior) for mode in MODES
    }
    multi = {k: v for k, v in results.items() if k != "union"}
    best = max(multi.values(), key=lambda r: -1.0 if not math.isfinite(r.f1.value) else r.f1.value)
    rounds = [d.rounds for d in best.devices]
    return [
        ctx.entry(
            "difference",
            "item-set F1 (multi-round)",
            best.f1,
            details={
                "best_mode": best.mode,
                "prior": prior,
                "rounds_per_device": {
                    "mean": float(np.mean(rounds)) if rounds else None,
                    "max": int(max(rounds)) if rounds else None,
                    "devices_with_2_or_more": int(sum(r >= 2 for r in rounds)),
                },
                **{m: _items_details(r) for m, r in results.items()},
            },
        )
    ]


def _item_prior(cloud: CTRDataset) -> float:
    f = cloud.schema.item_id_field or ""
    vocab = cloud.schema[f].vocab_size - 1
    per = [len(np.unique(ds.column(f))) for ds in cloud.split_by_user().values()]
    return float(np.clip(np.mean(per) / max(vocab, 1), 1e-4, 0.5)) if per else 0.05


def _attack_membership(ctx: _Context) -> list[Entry]:
    o = ctx.options
    layout = ctx.view.layout
    recipe = Recipe.from_section(ctx.config.local)
    results: list[MembershipResult] = []
    # --- device models from plaintext uploads ---
    first: dict[int, int] = {}
    for t, d in sorted(ctx.view.uploads):
        first.setdefault(d, t)
    eligible = [
        d
        for d in sorted(first)
        if d in ctx.truth.devices
        and len(ctx.truth.devices[d].train) >= 8
        and len(ctx.truth.devices[d].test) >= 2
    ]
    rng = np.random.default_rng(o.seed)
    chosen = (
        sorted(rng.choice(eligible, min(o.devices, len(eligible)), replace=False).tolist())
        if eligible
        else []
    )
    per_attack: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for d in chosen:
        t = first[d]
        target = ctx.view.device_model(t, d)
        key = ctx.view.device_key(t, d)
        if target is None or key is None:
            continue
        start = np.asarray(ctx.view.downloads[t][key], dtype=np.float64)
        dev = ctx.truth.devices[d]
        rows, labels = membership_game(dev.train, dev.test, seed=o.seed)
        attacks: list[Any] = [
            LossThresholdAttack(),
            ReferenceAttack(start),
            LiRAAttack(
                LiRAAttack.local_trainer(layout, start, recipe),
                n_shadows=o.shadows,
                seed=o.seed + d,
            ),
        ]
        for atk in attacks:
            s = atk.scores(layout, target, rows)
            per_attack.setdefault(atk.name, ([], []))
            per_attack[atk.name][0].append(s)
            per_attack[atk.name][1].append(labels)
    for name, (ss, ls) in per_attack.items():
        scores, labels = np.concatenate(ss), np.concatenate(ls)
        if labels.any() and not labels.all():
            summ = roc_summary(scores, labels, seed=o.seed)
            results.append(MembershipResult(name, "device models", summ, scores, labels))
    # --- the final global model ---
    finals = final_models(ctx.run_dir)
    release = ctx.view.release_view()
    target_g = finals.get("global")
    if target_g is None and "global" in {k for m in release.models.values() for k in m}:
        target_g = release.last_model("global")[1]
    if target_g is not None and release.rounds:
        participated = {d for devs in ctx.view.participants.values() for d in devs}
        members = [
            ctx.truth.devices[d].train for d in sorted(participated) if d in ctx.truth.devices
        ]
        others = [
            dev.train
            for d, dev in sorted(ctx.truth.devices.items())
            if d not in participated and len(dev.train)
        ]
        if members and others:
            rows, labels = membership_game(
                CTRDataset.concat(members),
                CTRDataset.concat(others),
                max_each=o.membership_rows,
                seed=o.seed,
            )
            reference = np.asarray(release.models[min(release.rounds)]["global"], dtype=np.float64)
            one_pass = Recipe(1, recipe.batch_size, recipe.lr, recipe.optimizer)

            def shadow(data: CTRDataset, seed: int) -> np.ndarray:
                return train_from(layout, reference, data, one_pass, seed=seed)

            for atk in (
                LossThresholdAttack(),
                ReferenceAttack(reference),
                LiRAAttack(shadow, n_shadows=o.shadows, seed=o.seed),
            ):
                results.append(
                    atk.run(layout, target_g, rows, labels, target_name="global model", seed=o.seed)
                )
    if not results:
        return [
            ctx.not_applicable(
                "membership", "AUC", "no released model with members and non-members"
            )
        ]
    for tname in dict.fromkeys(r.target for r in results):
        strongest = max(
            (r for r in results if r.target == tname), key=lambda r: r.summary.auc.value
        )
        ctx.curves[f"{tname}|{ctx.setting} ({strongest.attack})"] = (
            strongest.summary.fpr,
            strongest.summary.tpr,
        )
    best = max(results, key=lambda r: r.summary.auc.value)
    return [
        ctx.entry(
            "membership",
            "AUC (strongest attack)",
            best.summary.auc,
            details={
                "strongest": f"{best.attack} / {best.target}",
                "tpr_at_0.1%_fpr": best.summary.tpr_at_fpr[0.001].as_dict(),
                "tpr_at_1%_fpr": best.summary.tpr_at_fpr[0.01].as_dict(),
                "attacks": [r.as_dict() for r in results],
                "devices": len(chosen),
                "shadows": o.shadows,
            },
        )
    ]


def _attack_attributes(ctx: _Context) -> list[Entry]:
    out = []
    schema = ctx.truth.full.schema
    dev_rows = {d: dev.train for d, dev in ctx.truth.devices.items() if len(dev.train)}
    for attr in ctx.options.attributes:
        name = f"attribute:{attr}"
        if attr not in schema:
            out.append(ctx.not_applicable(name, "accuracy", f"the data has no field {attr!r}"))
            continue
        atk = AttributeInferenceAttack(attr, ctx.truth.cloud, seed=ctx.options.seed)
        truth = user_attribute(dev_rows, attr)
        results = []
        if ctx.view.uploads:
            results.append(atk.from_rows(ctx.view, truth))
            results.append(atk.from_items(ctx.view, truth))
        pu = _preference_vectors(ctx)
        if pu is not None:
            results.append(atk.from_vectors(pu[0], pu[1], truth))
        if not results:
            results.append(atk.no_signal(truth, route="none (secure sums: no per-device signal)"))
        best = max(
            results, key=lambda r: r.accuracy.value if math.isfinite(r.accuracy.value) else -1
        )
        out.append(
            ctx.entry(
                name,
                "accuracy",
                best.accuracy,
                details={
                    "best_route": best.route,
                    "baseline": best.baseline.as_dict(),
                    "advantage": best.advantage,
                    "routes": [r.as_dict() for r in results],
                },
            )
        )
    return out


def _preference_vectors(
    ctx: _Context,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]] | None:
    """The devices' plaintext p_u and the cloud users' p_u (the server computes those
    with its own item space), when the run sent p_u in the clear."""
    from secrelay.relay.relayrec import ITEM_SPACE_TOPIC, SELECT_TOPIC, ItemSpace

    vectors = {
        q.sender: np.asarray(q.arrays["p_u"])
        for q in ctx.view.queries
        if q.topic == SELECT_TOPIC and "p_u" in q.arrays
    }
    space = next((r for r in ctx.view.replies if r.topic == ITEM_SPACE_TOPIC), None)
    if not vectors or space is None:
        return None
    item_space = ItemSpace.from_arrays(ctx.truth.full.schema, space.arrays)
    cloud = {u: item_space.preference(ds) for u, ds in ctx.truth.cloud.split_by_user().items()}
    return vectors, cloud


def _attack_cluster(ctx: _Context) -> list[Entry]:
    if ctx.config.method.name != "relayrec":
        return [
            ctx.not_applicable("cluster", "accuracy", "not a RelayRec run"),
            ctx.not_applicable("preference", "accuracy", "not a RelayRec run"),
        ]
    atk = ClusterInferenceAttack()
    keys = private_keys(ctx.run_dir)
    r = atk.run(ctx.view, keys)
    out = [ctx.entry("cluster", "accuracy", r.accuracy, details=r.as_dict())]
    space = next((m for m in ctx.view.replies if m.topic.endswith("item_space")), None)
    if space is not None:
        cats = preference_categories(
            {d: dev.train for d, dev in ctx.truth.devices.items()},
            space.arrays["item_table"],
            space.arrays["centroids"],
        )
        rc = atk.run_categories(ctx.view, cats)
        out.append(ctx.entry("preference", "accuracy", rc.accuracy, details=rc.as_dict()))
    return out


def _attack_audit(ctx: _Context) -> list[Entry]:
    p = ctx.config.privacy
    out = []
    ledger_path = ctx.run_dir / "privacy_ledger.jsonl"
    ledger = PrivacyLedger.load(ledger_path) if ledger_path.is_file() else None
    if not p.user_level_dp:
        out.append(ctx.not_applicable("audit:user", "ε lower bound", "no user-level DP: ε is ∞"))
    elif ledger is not None:
        user = [r for r in ledger.records if r.unit == "user" and r.noise_multiplier]
        if user:
            z = float(user[0].noise_multiplier or 0.0)
            res = audit_gaussian_sum(
                noise_multiplier=z,
                clipping_norm=float(p.clipping_norm or 1.0),
                trials=ctx.options.audit_trials,
                delta=p.delta,
                seed=ctx.options.seed,
            )
            run_eps = ledger.epsilon(delta=p.delta, unit="user", accountant=p.accountant)
            out.append(
                _audit_entry(
                    ctx,
                    "audit:user",
                    res,
                    {"run_user_epsilon": run_eps, "mechanism": user[0].mechanism},
                )
            )
    if p.dp_sgd:
        out.append(_example_audit(ctx))
    else:
        out.append(ctx.not_applicable("audit:example", "ε lower bound", "no DP-SGD: ε is ∞"))
    audited = [{"attack": e.attack, **_jsonable(e.details)} for e in out if e.applicable]
    if audited:  # next to the ledger, for `secrelay audit` to show (docs/attacks.md)
        (ctx.run_dir / "attack_audit.json").write_text(json.dumps(audited, indent=2))
    return out


def _audit_entry(ctx: _Context, name: str, res: AuditResult, extra: Mapping[str, Any]) -> Entry:
    value = Estimate(
        res.epsilon_lower,
        res.epsilon_lower,
        math.inf,
        res.confidence,
        f"{res.design} lower bound",
        int(res.counts.get("trials", res.counts.get("canaries", 0))),
    )
    return ctx.entry(name, "ε lower bound", value, details={**res.as_dict(), **extra})


def _example_audit(ctx: _Context) -> Entry:
    """One-run canary audit of example-level DP-SGD on a reduced copy of the run: the
    20 devices with the most rows, one round, every device sampled."""
    full = ctx.truth.full
    by_user = full.by_user()
    users = sorted(by_user, key=lambda u: -len(by_user[u]))[:20]
    rows = np.sort(np.concatenate([by_user[u] for u in users]))
    base = full.subset(rows)
    largest = len(by_user[users[0]])
    canaries = int(min(ctx.options.canaries, 2 * largest))
    cfg = ctx.config.replace(
        federated={"rounds": 1, "clients_per_round": len(users), "sampling": "fixed"},
        privacy={
            "secure_aggregation": False,
            "user_level_dp": False,
            "noise_multiplier": None,
            "target_epsilon": None,
            "clipping_norm": None,
            "user_epsilon": None,
            "num_colluders": 0,
            "example_epsilon": None,
        },
        run={"executor": "sequential"},
    )
    audit = CanaryAudit(cfg, base, unit="example", canaries=canaries, seed=ctx.options.seed)
    try:
        res = audit.run(ctx.run_dir / "audit_example")
    except ValueError as e:
        return ctx.not_applicable("audit:example", "ε lower bound", str(e))
    return _audit_entry(
        ctx,
        "audit:example",
        res,
        {"reduced_run": "20 largest devices, 1 round, sequential", "canaries": canaries},
    )


def _attack_inversion(ctx: _Context) -> list[Entry]:
    """DLG on planted one-step FedSGD rounds under the setting's protection."""
    if ctx.config.method.name != "federated" or ctx.config.model.name != "dnn":
        return [
            ctx.not_applicable(
                "inversion",
                "label accuracy",
                "update inversion needs a federated run of a 'dnn' (uploads of the dense part)",
            )
        ]
    layout = ModelLayout.from_config(ctx.config, ctx.truth.full.schema)
    atk = GradientInversionAttack(layout, iterations=100, restarts=1, seed=ctx.options.seed)
    out = []
    for b in ctx.options.inversion_batch_sizes:
        try:
            r = inversion_run(
                ctx.config,
                ctx.truth.full,
                ctx.run_dir / f"inversion_b{b}",
                atk,
                devices=ctx.options.inversion_devices,
                batch_size=b,
                lr=INVERSION_LR,
                seed=ctx.options.seed,
            )
        except ValueError as e:
            out.append(ctx.not_applicable(f"inversion:b{b}", "label accuracy", str(e)))
            continue
        out.append(
            ctx.entry(
                f"inversion:b{b}",
                "label accuracy",
                r.label_accuracy,
                details={
                    **r.as_dict(),
                    "reduced_run": (
                        f"planted: {ctx.options.inversion_devices} devices × {b} training rows, "
                        f"one FedSGD round (SGD, lr {INVERSION_LR}, one step), cloud model "
                        "trained 1 epoch on 2,000 rows of other users; the setting's privacy"
                    ),
                },
            )
        )
    return out


INVERSION_LR = 0.1
"""Learning rate of the planted FedSGD step (public: the server divides by it)."""


def _attack_lcft(ctx: _Context) -> list[Entry]:
    if ctx.config.method.name != "lcft":
        return [
            ctx.not_applicable("lcft:ctr", "local-CTR MAE", "not an LCFT run"),
            ctx.not_applicable("lcft:above_median", "accuracy", "not an LCFT run"),
        ]
    atk = LocalCTRAttack.from_config(ctx.config, ctx.truth.cloud, seed=ctx.options.seed)
    truth = {d: dev.train.ctr for d, dev in ctx.truth.devices.items() if len(dev.train)}
    plain = atk.run(ctx.view, truth)
    results = [plain]
    if atk.query is not None and atk.query.private:
        results.append(atk.run(ctx.view, truth, bayes=True))
    best = min(results, key=lambda r: r.mae.value)
    sweep = ldp_sweep(
        truth,
        prior=atk.prior,
        prior_ctrs=atk.prior_ctrs,
        epsilons=(0.5, 1.0, 2.0, 4.0, 8.0),
        delta=ctx.config.privacy.delta,
        accountant=ctx.config.privacy.accountant,
        seed=ctx.options.seed,
    )
    details = {
        "best_route": best.route,
        "baseline_mae": best.baseline_mae.as_dict(),
        "routes": [r.as_dict() for r in results],
        "simulated_sweep": sweep,
    }
    return [
        ctx.entry("lcft:ctr", "local-CTR MAE", best.mae, details=details),
        ctx.entry(
            "lcft:above_median",
            "accuracy",
            best.above_median,
            details={"baseline": best.above_median_baseline, "route": best.route},
        ),
    ]


def _attack_coda(ctx: _Context) -> list[Entry]:
    names = [f"coda:attribute:{a}" for a in ctx.options.attributes]
    if ctx.config.method.name != "coda":
        return [
            ctx.not_applicable(n, m, "not a CoDA run")
            for n, m in [(x, "accuracy") for x in names]
            + [("coda:items", "precision@20"), ("coda:reidentify", "re-identification rate")]
        ]
    from secrelay.relay.coda import CoDAOptions, SamplePrivatizer

    o = CoDAOptions.from_mapping(ctx.config.method.options)
    pool = ctx.truth.cloud
    hood = NeighbourhoodAttack(pool, k=o.k, seed=ctx.options.seed)
    devices = {d: dev.train for d, dev in ctx.truth.devices.items() if len(dev.train)}
    r = hood.run(
        ctx.view,
        devices,
        ctx.options.attributes,
        privatized=o.privatize_samples,
        feature=o.user_feature,
    )
    out = []
    for a, name in zip(ctx.options.attributes, names):
        if a not in r.attributes:
            out.append(ctx.not_applicable(name, "accuracy", f"the data has no field {a!r}"))
            continue
        est, base = r.attributes[a]
        out.append(ctx.entry(name, "accuracy", est, details={"baseline": base, **r.as_dict()}))
    out.append(
        ctx.entry(
            "coda:items",
            f"precision@{r.top_items}",
            r.item_precision,
            details={"baseline": r.item_baseline.as_dict(), "devices": r.devices},
        )
    )
    eps = o.sample_epsilon if o.privatize_samples else None
    rng = np.random.default_rng(ctx.options.seed)
    n = min(ctx.options.reidentify_samples, len(pool))
    rows = np.sort(rng.choice(len(pool), n, replace=False))
    atk = ReidentificationAttack(pool, aux="fields+items", seed=ctx.options.seed)
    priv = None if eps is None else SamplePrivatizer(pool.schema, float(eps))
    res = atk.run(rows, privatizer=priv, generator=np.random.default_rng(ctx.options.seed + 1))
    sweep = reidentification_sweep(
        pool,
        epsilons=(None, 8.0, 4.0, 2.0, 1.0),
        samples=n,
        seed=ctx.options.seed,
    )
    out.append(
        ctx.entry(
            "coda:reidentify",
            "re-identification rate",
            res.rate,
            details={
                **res.as_dict(),
                "design": (
                    "simulated release of random pool rows with the run's privatizer "
                    "(the transcript's handles cannot be linked to pool rows by the experimenter)"
                ),
                "sweep": [x.as_dict() for x in sweep],
            },
        )
    )
    return out


ATTACK_RUNNERS: dict[str, Callable[[_Context], list[Entry]]] = {
    "items": _attack_items,
    "difference": _attack_difference,
    "membership": _attack_membership,
    "attributes": _attack_attributes,
    "audit": _attack_audit,
    "cluster": _attack_cluster,
    "inversion": _attack_inversion,
    "lcft": _attack_lcft,
    "coda": _attack_coda,
}


# --- the grid ----------------------------------------------------------------------------------


def _epsilons(run_dir: Path, config: RunConfig) -> dict[str, float | None]:
    path = run_dir / "privacy_ledger.jsonl"
    out: dict[str, float | None] = {"user": None, "example_max": None}
    if not path.is_file():
        return out
    ledger = PrivacyLedger.load(path)
    p = config.privacy
    if any(r.unit == "user" for r in ledger.records):
        out["user"] = float(ledger.epsilon(delta=p.delta, unit="user", accountant=p.accountant))
    devices = ledger.devices(unit="example")
    if devices:
        eps = [
            ledger.epsilon(delta=p.delta, device=d, unit="example", accountant=p.accountant)
            for d in devices
        ]
        out["example_max"] = float(max(eps))
    return out


def _train(
    setting: Setting,
    base: RunConfig,
    out: Path,
    *,
    progress: bool,
    log: Callable[[str], None],
    reuse: bool,
) -> tuple[RunConfig, SettingRun]:
    cfg = setting.apply(base).replace(
        run={"record_transcript": True, "name": f"{base.run.name}-{setting.name}"}
    )
    rd = out / "runs" / setting.name
    t0 = time.perf_counter()
    summary = rd / "summary.json"
    same = (rd / "config.json").is_file() and json.loads(
        (rd / "config.json").read_text()
    ) == json.loads(cfg.to_json())
    if reuse and same and summary.is_file() and (rd / "transcript.npz").is_file():
        log(f"[{setting.name}] reusing the finished run in {rd}")
        final = json.loads(summary.read_text())["final"]
    else:
        log(f"[{setting.name}] training")
        result = run(cfg, rd, overwrite=True, progress=progress, log=log)
        final = result.final["final"]
    return cfg, SettingRun(
        setting.name,
        dict(setting.overrides),
        rd,
        dict(final),
        _epsilons(rd, cfg),
        time.perf_counter() - t0,
    )


def run_attacks(
    cfg: RunConfig,
    setting: SettingRun,
    options: AttackConfig,
    *,
    truth: PreparedData | None = None,
    log: Callable[[str], None] = print,
    curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[Entry]:
    """Every attack of ``options.attacks`` on one trained setting."""
    truth = truth or load_truth(cfg)
    view = ServerView.from_run(setting.run_dir, truth.full.schema)
    ctx = _Context(
        setting.name,
        cfg,
        setting.run_dir,
        truth,
        view,
        setting.metrics.get("gauc"),
        setting.metrics.get("auc"),
        options,
        log,
    )
    entries: list[Entry] = []
    for name in options.attacks:
        t0 = time.perf_counter()
        try:
            got = ATTACK_RUNNERS[name](ctx)
        except ValueError as e:
            got = [ctx.not_applicable(name, "", str(e))]
        entries += got
        log(
            f"[{setting.name}] {name}: "
            + "; ".join(f"{e.attack} {e.value}" for e in got)
            + f" ({time.perf_counter() - t0:.1f} s)"
        )
    if curves is not None:
        curves.update(ctx.curves)
    return entries


def attack(
    config: str | Path | tuple[RunConfig, AttackConfig],
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    reuse: bool = False,
    **overrides: Mapping[str, Any],
) -> TradeoffReport:
    """Run the trade-off grid of ``config`` into ``out`` and write the report.

    Parameters
    ----------
    config:
        A trade-off TOML (a run config with an ``[attack]`` section) or its parsed
        ``(base, attack)`` pair.
    out:
        Output directory: ``report.json``, ``report.md``, ``*.png`` and ``runs/<setting>``.
    progress, log:
        Progress bars and where notes go.
    reuse:
        Skip training a setting whose finished run (same resolved config, transcript
        recorded) is already in ``out/runs/<setting>``: re-run the attacks only.
    **overrides:
        Base config section overrides (``federated={"rounds": 3}``).
    """
    if isinstance(config, tuple):
        base, options = config
        if overrides:
            base = base.replace(**overrides)
    else:
        base, options = load_attack_config(config, **overrides)
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    settings: list[SettingRun] = []
    entries: list[Entry] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    truths: dict[str, PreparedData] = {}
    t0 = time.perf_counter()
    for i, s in enumerate(options.settings, start=1):
        log(f"setting {i}/{len(options.settings)}: {s.name}")
        cfg, trained = _train(s, base, dest, progress=progress, log=log, reuse=reuse)
        settings.append(trained)
        key = json.dumps(
            [cfg.to_dict()[k] for k in ("data", "split")] + [cfg.run.seed],
            sort_keys=True,
            default=str,
        )
        if key not in truths:
            truths[key] = load_truth(cfg)
        entries += run_attacks(cfg, trained, options, truth=truths[key], log=log, curves=curves)
    notes = (f"total wall time {time.perf_counter() - t0:.0f} s",)
    report = TradeoffReport(tuple(settings), tuple(entries), dest, notes)
    write_report(report, base, options, curves)
    return report


# --- writing -----------------------------------------------------------------------------------


def write_report(
    report: TradeoffReport,
    base: RunConfig,
    options: AttackConfig,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """``report.json``, ``report.md`` and the plots into ``report.out``."""
    out = report.out
    plots = _plots(report, curves)
    payload = {
        "base": base.to_dict(),
        "attacks": list(options.attacks),
        "settings": [s.as_dict() for s in report.settings],
        "entries": [e.as_dict() for e in report.entries],
        "plots": [p.name for p in plots],
        "notes": list(report.notes),
    }
    (out / "report.json").write_text(json.dumps(_jsonable(payload), indent=2))
    (out / "report.md").write_text(_markdown(report, plots))


def _plots(
    report: TradeoffReport, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> list[Path]:
    out: list[Path] = []
    by_attack: dict[str, list[Entry]] = {}
    for e in report.entries:
        if e.applicable and math.isfinite(e.value.value):
            by_attack.setdefault(e.attack, []).append(e)
    for name, es in by_attack.items():
        if not any(e.gauc is not None for e in es):
            continue
        pts = [
            {
                "setting": e.setting,
                "value": e.value.value,
                "low": e.value.low,
                "high": e.value.high,
                "accuracy": e.gauc,
            }
            for e in es
        ]
        safe = name.replace(":", "_")
        out.append(
            plot_tradeoff(
                pts, report.out / f"tradeoff_{safe}.png", metric=f"{name}: {es[0].metric}"
            )
        )
    targets = dict.fromkeys(k.split("|", 1)[0] for k in curves)
    for target in targets:
        mine = {k.split("|", 1)[1]: v for k, v in curves.items() if k.split("|", 1)[0] == target}
        safe = target.replace(" ", "_")
        out.append(
            plot_roc(
                mine,
                report.out / f"membership_roc_{safe}.png",
                title=f"membership inference on {target} (strongest attack per setting)",
            )
        )
    return out


def _fmt(e: Estimate) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    if math.isinf(e.high):
        return f"≥ {e.value:.3f}"
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def _markdown(report: TradeoffReport, plots: list[Path]) -> str:
    lines = ["# Utility–privacy trade-off report", ""]
    lines += [
        "## Settings",
        "",
        "| setting | gAUC | AUC | logloss | user ε | example ε (max) | rounds | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report.settings:
        m = s.metrics

        def f(v: Any) -> str:
            return "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

        lines.append(
            f"| {s.name} | {f(m.get('gauc'))} | {f(m.get('auc'))} | {f(m.get('logloss'))} | "
            f"{f(s.epsilon.get('user')) if s.epsilon.get('user') is not None else '∞'} | "
            f"{f(s.epsilon.get('example_max')) if s.epsilon.get('example_max') is not None else '∞'} | "
            f"{m.get('round')} | {s.seconds:.0f} |"
        )
    attacks = list(dict.fromkeys(e.attack for e in report.entries))
    names = [s.name for s in report.settings]
    lines += ["", "## Leakage (metric [95 % CI]; n/a = not applicable to the view)", ""]
    lines += ["| attack (metric) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a in attacks:
        cells = {e.setting: e for e in report.entries if e.attack == a}
        metric = next((e.metric for e in cells.values() if e.metric), "")
        row = [f"{a} ({metric})"]
        for n in names:
            c = cells.get(n)
            row.append("—" if c is None else (_fmt(c.value) if c.applicable else "n/a"))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Frontier", ""]
    for a in attacks:
        es = [
            e
            for e in report.entries
            if e.attack == a
            and e.applicable
            and math.isfinite(e.value.value)
            and e.gauc is not None
        ]
        if len(es) < 2:
            continue
        front = pareto_frontier([e.value.value for e in es], [float(e.gauc or 0.0) for e in es])
        lines.append(f"* {a}: " + " → ".join(es[i].setting for i in front))
    lines += ["", "## Notes", ""]
    for e in report.entries:
        if e.note:
            lines.append(f"* {e.setting} / {e.attack}: {e.note}")
    for n in report.notes:
        lines.append(f"* {n}")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"
