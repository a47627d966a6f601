"""Update inversion (DLG / inverting gradients) on the dense part of a CTR model.

A device that trains one local step of SGD on a small batch uploads
Δ = −η·∇L(w_t; batch): its update *is* a scaled gradient. The honest-but-curious
server holds w_t (it sent it down), Δ (the plaintext upload) and the public recipe
(η, the architecture), so it can try to rebuild the batch:

* **labels** — iDLG's analytic trick (Zhao et al. 2020) for a sigmoid/BCE output:
  the output bias's gradient is g_b = mean_i(p_i − y_i). With one example its sign
  gives the label (g_b < 0 ⇔ y = 1); with B examples the number of clicks is
  round(Σ_i p_i − B·g_b), the p_i read from the reconstructed inputs (and the
  clicks assigned to the examples whose optimized soft labels are highest);
* **which embedding rows** — an embedding row's gradient is non-zero exactly for the
  feature values in the batch (:mod:`attacks.items`): the candidate values of every
  field are the rows that moved (under noise: the rows above the noise floor, at
  most ``max_candidates`` by norm);
* **the dense input** z_i = [e_{i,1}; …; e_{i,m}] the MLP reads — optimized with
  torch (Geiping et al. 2020, "Inverting gradients"): each example's field slot is
  a soft choice among the candidate rows (softmax for single-valued fields, sigmoid
  gates averaged for multi-valued ones), the soft labels are free, and Adam
  minimizes the cosine distance (or L2) between the dummy gradient — of the MLP's
  parameters and of the candidate rows — and the observed one. The soft choices are
  then snapped to rows, which gives the feature values and z.

Scoring (:func:`score_reconstruction`) matches reconstructed to true examples by
the Hungarian algorithm on the field-value disagreement and reports, per example,
whether the label is right, whether every field value is right, and whether z is
within ``tolerance`` relative L2 error.

Where it applies: ``dnn`` models (the logit is a function of z alone) and updates of
one SGD step from the downloaded model. A multi-step or Adam update is not a
gradient; the attack then reads Δ as one (the inverting-gradients paper unrolls the
steps; not done here). :func:`planted_batches` builds the ground-truth experiment:
devices holding exactly ``batch_size`` training rows, trained through the real
``secrelay`` pipeline (:func:`inversion_run`), so the update the attack inverts is
the one the server's transcript holds — plain, clipped, noised by DP-SGD or hidden
in a secure sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from attacks.items import detect_rows
from attacks.stats import Estimate, clopper_pearson
from attacks.views import ModelLayout, ServerView
from secrelay import RunConfig
from secrelay.data import CTRDataset
from secrelay.models import CTRModel, flat_parameter_slices, load_flat_parameters

__all__ = [
    "ExampleScore",
    "GradientInversionAttack",
    "InversionResult",
    "Reconstruction",
    "inversion_config",
    "inversion_run",
    "planted_batches",
    "score_reconstruction",
]

Distance = Literal["cosine", "l2"]


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """What the attack rebuilt of one batch.

    Attributes
    ----------
    x:
        ``(B, n_columns)`` feature codes (multi-valued fields padded with 0).
    y:
        ``(B,)`` labels (0 or 1).
    dense:
        ``(B, n_fields · dim)``: the dense part's input z of each example.
    distance:
        The final gradient distance (cosine distance or relative L2).
    clicks:
        The analytic click count of the batch (from the output bias gradient).
    """

    x: np.ndarray
    y: np.ndarray
    dense: np.ndarray
    distance: float
    clicks: int


@dataclass(frozen=True)
class ExampleScore:
    """One true example against its matched reconstruction."""

    label: bool
    fields: bool
    dense: bool
    dense_error: float
    field_hits: int = 0
    field_count: int = 0


@dataclass(frozen=True)
class InversionResult:
    """Recovery rates over examples, each with a Clopper–Pearson interval."""

    label_accuracy: Estimate
    feature_recovery: Estimate
    dense_recovery: Estimate
    examples: int
    devices: int
    batch_sizes: tuple[int, ...]
    route: str
    tolerance: float
    label_baseline: float
    notes: tuple[str, ...] = ()
    per_example: tuple[ExampleScore, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict[str, Any]:
        errs = [s.dense_error for s in self.per_example if math.isfinite(s.dense_error)]
        return {
            "route": self.route,
            "label_accuracy": self.label_accuracy.as_dict(),
            "label_baseline": self.label_baseline,
            "feature_recovery": self.feature_recovery.as_dict(),
            "dense_recovery": self.dense_recovery.as_dict(),
            "dense_tolerance": self.tolerance,
            "median_dense_error": float(np.median(errs)) if errs else None,
            "field_value_accuracy": (
                sum(s.field_hits for s in self.per_example)
                / max(sum(s.field_count for s in self.per_example), 1)
            ),
            "examples": self.examples,
            "devices": self.devices,
            "batch_sizes": sorted(set(self.batch_sizes)),
            "notes": list(self.notes),
        }


def _dense_head(layout: ModelLayout) -> None:
    if layout.name != "dnn":
        raise ValueError(
            f"update inversion reads the dense part of a 'dnn' model (logit = MLP(z)); "
            f"model {layout.name!r} has other terms"
        )


class GradientInversionAttack:
    """DLG / inverting-gradients attack on one-step updates (module doc).

    Parameters
    ----------
    layout:
        The public architecture (a ``dnn``).
    iterations:
        Adam steps of the gradient matching (per restart).
    restarts:
        Random restarts; the reconstruction with the smallest distance is kept.
    distance:
        ``"cosine"`` (Geiping et al.; invariant to the update's scale, so clipping
        does not hurt it) or ``"l2"`` (DLG).
    max_candidates:
        At most this many candidate rows per field and example of the batch.
    tolerance:
        Relative L2 error under which a dense input counts as recovered.
    seed:
        Seed of the dummy initialisations.
    """

    name = "inversion"

    def __init__(
        self,
        layout: ModelLayout,
        *,
        iterations: int = 300,
        restarts: int = 2,
        distance: Distance = "cosine",
        max_candidates: int = 4,
        tolerance: float = 0.1,
        lr: float = 0.1,
        seed: int = 0,
    ) -> None:
        _dense_head(layout)
        if distance not in ("cosine", "l2"):
            raise ValueError(f"`distance` must be 'cosine' or 'l2'; got {distance!r}")
        if iterations < 1 or restarts < 1 or max_candidates < 1:
            raise ValueError(
                "`iterations`, `restarts` and `max_candidates` must be >= 1; got "
                f"{iterations}, {restarts}, {max_candidates}"
            )
        if not tolerance > 0:
            raise ValueError(f"`tolerance` must be > 0; got {tolerance!r}")
        self.layout = layout
        self.iterations = int(iterations)
        self.restarts = int(restarts)
        self.distance: Distance = distance
        self.max_candidates = int(max_candidates)
        self.tolerance = float(tolerance)
        self.lr = float(lr)
        self.seed = int(seed)

    # --- the gradient from an update -------------------------------------------------
    @staticmethod
    def gradient_estimate(update: np.ndarray, *, lr: float, steps: int = 1) -> np.ndarray:
        """Δ = −η·Σ steps' gradients ⇒ the (mean) gradient −Δ/(η·steps) (exact for one
        SGD step from the downloaded model)."""
        if not lr > 0 or steps < 1:
            raise ValueError(f"need lr > 0 and steps >= 1; got {lr!r}, {steps!r}")
        return np.asarray(-np.asarray(update, dtype=np.float64) / (lr * steps))

    # --- one batch ---------------------------------------------------------------------
    def _model(self, flat: np.ndarray) -> CTRModel:
        model = self.layout.build(seed=0)
        load_flat_parameters(model, torch.as_tensor(np.asarray(flat, dtype=np.float32)))
        model.eval()
        return model

    def _candidates(self, gradient: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Per field, the candidate values: rows above the noise floor, at most
        ``max_candidates · B`` by norm; the top ``B`` when none is detected."""
        out = []
        cap = self.max_candidates * batch_size
        for f in self.layout.schema.fields:
            norms = self.layout.row_norms(gradient, f.name)
            if f.max_len > 1:
                norms = norms.copy()
                norms[0] = 0.0  # the padding row never moves
            found = np.flatnonzero(detect_rows(norms, width=self.layout.row_width(f.name)))
            if found.size > cap or found.size == 0:
                order = np.argsort(-norms, kind="stable")
                found = order[: cap if found.size else batch_size]
            out.append(np.sort(found))
        return out

    def invert(self, model: np.ndarray, gradient: np.ndarray, batch_size: int) -> Reconstruction:
        """Rebuild a batch of ``batch_size`` examples from the gradient ``gradient``
        of the mean BCE loss at the flat model ``model``."""
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1; got {batch_size!r}")
        schema = self.layout.schema
        g = np.asarray(gradient, dtype=np.float64).reshape(-1)
        if g.size != self.layout.num_parameters:
            raise ValueError(
                f"`gradient` has {g.size} coordinates; the model has {self.layout.num_parameters}"
            )
        net = self._model(model)
        slices = flat_parameter_slices(net)
        emb_name = next(n for n in slices if n.endswith("embedding.weight"))
        table = net.embedding.embedding.weight.detach().double()
        mlp = {n: p.detach().double() for n, p in net.named_parameters() if n != emb_name}
        bias_name = [n for n in mlp if n.endswith("bias")][-1]  # the output layer's bias
        offsets = schema.vocab_offsets()
        cands = self._candidates(g, batch_size)
        rows = [torch.as_tensor(offsets[i] + c, dtype=torch.long) for i, c in enumerate(cands)]
        obs_mlp = [
            torch.as_tensor(g[slices[n]].reshape(tuple(p.shape)), dtype=torch.float64)
            for n, p in mlp.items()
        ]
        emb_g = torch.as_tensor(g[slices[emb_name]].reshape(table.shape), dtype=torch.float64)
        obs_rows = [emb_g[r] for r in rows]
        observed = torch.cat([t.reshape(-1) for t in obs_mlp + obs_rows])
        head = _functional_head(net, emb_name)

        def dense_input(logits_a: list[torch.Tensor], tables: list[torch.Tensor]) -> torch.Tensor:
            slots = []
            for f, a, t in zip(schema.fields, logits_a, tables):
                if f.max_len > 1:
                    w = torch.sigmoid(a)
                    slots.append(w @ t / w.sum(dim=1, keepdim=True).clamp(min=1e-6))
                else:
                    slots.append(torch.softmax(a, dim=1) @ t)
            return torch.cat(slots, dim=1)

        def dummy_gradient(
            logits_a: list[torch.Tensor], u: torch.Tensor, *, create_graph: bool
        ) -> tuple[torch.Tensor, torch.Tensor]:
            params = {n: p.clone().requires_grad_(True) for n, p in mlp.items()}
            tabs = [table[r].clone().requires_grad_(True) for r in rows]
            z = dense_input(logits_a, tabs)
            out = head(params, z)
            y = torch.sigmoid(u)
            loss = (nn.functional.softplus(out) - y * out).mean()
            grads = torch.autograd.grad(loss, [*params.values(), *tabs], create_graph=create_graph)
            return torch.cat([t.reshape(-1) for t in grads]), z

        def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if self.distance == "cosine":
                cos: torch.Tensor = 1 - (a @ b) / (a.norm() * b.norm()).clamp(min=1e-12)
                return cos
            return ((a - b) ** 2).sum() / (b**2).sum().clamp(min=1e-12)

        first_click = float(g[slices[bias_name]].reshape(-1)[0]) < 0  # sign rule, B = 1
        w1_name = next(n for n, p in mlp.items() if p.dim() == 2)
        exact = _single_unit_examples(
            g[slices[w1_name]].reshape(tuple(mlp[w1_name].shape)),
            g[slices[w1_name.replace("weight", "bias")]],
            table.numpy(),
            [np.asarray(r) for r in rows],
            schema,
        )
        gen = torch.Generator().manual_seed(self.seed)
        best: tuple[float, list[torch.Tensor], torch.Tensor] | None = None
        forced = self._forced(cands, batch_size)
        if forced is not None:  # the visible rows leave one choice
            exact = [forced]
        if len(exact) >= batch_size and (batch_size == 1 or forced is None):
            fixed = [
                torch.as_tensor(np.stack([np.where(e[i], 20.0, -20.0) for e in exact[:batch_size]]))
                for i in range(len(rows))
            ]
            u0 = torch.full((batch_size,), 8.0 if first_click else -8.0, dtype=torch.float64)
            dg, _ = dummy_gradient(fixed, u0, create_graph=False)
            best = (float(dist(dg.detach(), observed)), fixed, u0)
        for _ in range(self.restarts if best is None else 0):
            init = [
                0.1 * torch.randn(batch_size, len(r), generator=gen, dtype=torch.float64)
                for r in rows
            ]
            for b, codes in enumerate(exact[:batch_size]):  # examples read off exactly
                for i, hit in enumerate(codes):
                    init[i][b] = torch.as_tensor(np.where(hit, 6.0, -6.0))
            logits_a = [a.requires_grad_(True) for a in init]
            if batch_size == 1:  # iDLG: the label is known; the cosine is flat in u
                u = torch.tensor([8.0 if first_click else -8.0], dtype=torch.float64)
                free = list(logits_a)
            else:  # random soft labels: restarts try different click patterns
                u = 2 * torch.randn(batch_size, generator=gen, dtype=torch.float64)
                u.requires_grad_(True)
                free = [*logits_a, u]
            opt = torch.optim.Adam(free, lr=self.lr)
            for _ in range(self.iterations):
                opt.zero_grad()
                dg, _ = dummy_gradient(logits_a, u, create_graph=True)
                loss = dist(dg, observed)
                if float(loss.detach()) < 1e-10:  # matched
                    break
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            dg, _ = dummy_gradient(logits_a, u, create_graph=False)
            d = float(dist(dg.detach(), observed))
            if best is None or d < best[0]:
                best = (d, [a.detach() for a in logits_a], u.detach())
        assert best is not None
        d, logits_a, u = best
        # snap the soft choices to rows
        x = np.zeros((batch_size, schema.n_columns), dtype=np.int64)
        slots = []
        for i, (f, a, c) in enumerate(zip(schema.fields, logits_a, cands)):
            sl = schema.column_slice(f.name)
            if f.max_len > 1:
                w = torch.sigmoid(a)  # the slot is a mean: only relative gates matter
                on = w >= 0.5 * w.max(dim=1, keepdim=True).values
                for b in range(batch_size):
                    pick = c[on[b].numpy()] if on[b].any() else c[[int(a[b].argmax())]]
                    pick = pick[: f.max_len]
                    x[b, sl.start : sl.start + pick.size] = pick
                    slots.append((b, i, table[offsets[i] + pick].mean(dim=0)))
            else:
                pick = c[a.argmax(dim=1).numpy()]
                x[:, sl.start] = pick
                for b in range(batch_size):
                    slots.append((b, i, table[offsets[i] + int(pick[b])]))
        dim = table.shape[1]
        dense = np.zeros((batch_size, schema.n_fields * dim))
        for b, i, vec in slots:
            dense[b, i * dim : (i + 1) * dim] = vec.numpy()
        # labels: the click count from the output bias (iDLG), given to the examples
        # whose optimized soft labels are highest
        scale = 1.0
        with torch.no_grad():
            zt = torch.as_tensor(dense)
            p = torch.sigmoid(head(mlp, zt)).numpy()
        snapped_a = [
            torch.as_tensor(np.where(_onehot(x, schema, i, c), 20.0, -20.0))
            for i, c in enumerate(cands)
        ]
        dg, _ = dummy_gradient(snapped_a, u, create_graph=False)
        dg = dg.detach()
        if float(dg @ dg) > 0:
            scale = float((dg @ observed) / (dg @ dg))  # clipping rescales Δ
        g_b = float(g[slices[bias_name]].reshape(-1)[0]) / (scale if scale > 0 else 1.0)
        if batch_size == 1:
            clicks = int(first_click)
        else:
            clicks = int(np.clip(round(float(p.sum()) - batch_size * g_b), 0, batch_size))
        y = np.zeros(batch_size)
        y[np.argsort(-u.numpy(), kind="stable")[:clicks]] = 1.0
        return Reconstruction(x, y, dense, d, clicks)

    def _forced(self, cands: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray] | None:
        """With one example and no more moved rows per field than it can hold, the
        rows *are* the example (every candidate chosen)."""
        if batch_size != 1:
            return None
        masks = []
        for f, c in zip(self.layout.schema.fields, cands):
            if c.size == 0 or c.size > f.max_len:
                return None
            masks.append(np.ones(c.size, dtype=bool))
        return masks

    # --- over a server view -----------------------------------------------------------
    def run(
        self,
        view: ServerView,
        truth: Mapping[int, CTRDataset],
        *,
        lr: float,
        round: int | None = None,
    ) -> InversionResult:
        """Invert every plaintext upload of ``round`` (default: the first) whose device
        is in ``truth`` (its training rows = the batch of its one local step)."""
        t = min(view.rounds) if round is None else round
        scores: list[ExampleScore] = []
        sizes, devices, notes = [], 0, []
        for (rt, d), _ in sorted(view.uploads.items()):
            if rt != t or d not in truth or not len(truth[d]):
                continue
            upd = view.device_update(t, d)
            key = view.device_key(t, d)
            if upd is None or key is None:
                continue
            model = np.asarray(view.downloads[t][key], dtype=np.float64)
            batch = truth[d]
            rec = self.invert(model, self.gradient_estimate(upd, lr=lr), len(batch))
            scores += score_reconstruction(self.layout, model, rec, batch, self.tolerance)
            sizes.append(len(batch))
            devices += 1
        if not devices:
            notes.append("no plaintext upload of a device with known rows")
        return self._result(scores, devices, sizes, "plaintext upload", truth, notes)

    def run_aggregate(
        self,
        model: np.ndarray,
        aggregate: np.ndarray,
        truth: Mapping[int, CTRDataset],
        *,
        lr: float,
        batch_size: int,
    ) -> InversionResult:
        """Secure sums: the server holds only the round's aggregate update. It inverts
        it as if it were one device's update of ``batch_size`` examples and gives every
        participant (the devices in ``truth``) that reconstruction."""
        rec = self.invert(model, self.gradient_estimate(aggregate, lr=lr), batch_size)
        scores: list[ExampleScore] = []
        sizes = []
        for _, batch in sorted(truth.items()):
            if len(batch):
                scores += score_reconstruction(self.layout, model, rec, batch, self.tolerance)
                sizes.append(len(batch))
        return self._result(
            scores,
            len(sizes),
            sizes,
            "aggregate (secure sum)",
            truth,
            (f"the sum of {len(sizes)} devices' updates inverted as one batch",),
        )

    def _result(
        self,
        scores: Sequence[ExampleScore],
        devices: int,
        sizes: Sequence[int],
        route: str,
        truth: Mapping[int, CTRDataset],
        notes: Sequence[str],
    ) -> InversionResult:
        n = len(scores)
        ys = [float(np.mean(ds.y)) for ds in truth.values() if len(ds)]
        rate = (
            float(np.mean(np.concatenate([truth[d].y for d in truth if len(truth[d])])))
            if ys
            else 0.5
        )
        return InversionResult(
            label_accuracy=clopper_pearson(sum(s.label for s in scores), n),
            feature_recovery=clopper_pearson(sum(s.fields for s in scores), n),
            dense_recovery=clopper_pearson(sum(s.dense for s in scores), n),
            examples=n,
            devices=devices,
            batch_sizes=tuple(sizes),
            route=route,
            tolerance=self.tolerance,
            label_baseline=max(rate, 1 - rate),
            notes=tuple(notes),
            per_example=tuple(scores),
        )


def _single_unit_examples(
    g_w: np.ndarray,
    g_b: np.ndarray,
    table: np.ndarray,
    rows: Sequence[np.ndarray],
    schema: Any,
    *,
    rtol: float = 2e-2,
) -> list[list[np.ndarray]]:
    """Examples read off the first layer exactly (Phong et al. 2017): a hidden unit j
    active for one example only has ∂L/∂W1[j] / ∂L/∂b1[j] = z_i. A ratio is kept when
    every field slot is (the mean of) candidate rows — the visible rows confirm it.
    Returns, per distinct example, one boolean mask over each field's candidates."""
    dim = table.shape[1]
    found: list[list[np.ndarray]] = []
    keys: set[tuple[bytes, ...]] = set()
    scale = np.abs(g_b).max() if g_b.size else 0.0
    for j in np.argsort(-np.abs(g_b)):
        if not abs(g_b[j]) > 1e-9 * max(scale, 1e-300):
            break
        z = g_w[j] / g_b[j]
        masks = []
        for i, f in enumerate(schema.fields):
            slot = z[i * dim : (i + 1) * dim]
            emb = table[rows[i]]
            tol = rtol * max(float(np.linalg.norm(slot)), 1e-12)
            if f.max_len == 1:
                d = np.linalg.norm(emb - slot, axis=1)
                k = int(np.argmin(d)) if d.size else -1
                if k < 0 or d[k] > tol:
                    break
                masks.append(np.arange(len(rows[i])) == k)
            else:
                hit = _subset_mean(emb, slot, f.max_len, tol)
                if hit is None:
                    break
                masks.append(hit)
        else:
            key = tuple(m.tobytes() for m in masks)
            if key not in keys:
                keys.add(key)
                found.append(masks)
    return found


def _subset_mean(emb: np.ndarray, slot: np.ndarray, size: int, tol: float) -> np.ndarray | None:
    """A subset of at most ``size`` rows of ``emb`` whose mean is ``slot`` (or None)."""
    from itertools import combinations

    n = emb.shape[0]
    if n > 24:
        return None
    for k in range(1, min(size, n) + 1):
        for comb in combinations(range(n), k):
            if np.linalg.norm(emb[list(comb)].mean(axis=0) - slot) <= tol:
                mask = np.zeros(n, dtype=bool)
                mask[list(comb)] = True
                return mask
    return None


def _onehot(x: np.ndarray, schema: Any, i: int, cands: np.ndarray) -> np.ndarray:
    """``(B, len(cands))``: which candidates of field ``i`` the snapped codes use."""
    f = schema.fields[i]
    sl = schema.column_slice(f.name)
    codes = x[:, sl]
    return np.stack([np.isin(cands, row[row != 0] if f.max_len > 1 else row) for row in codes])


def _functional_head(net: nn.Module, emb_name: str) -> Any:
    """``head(params, z)``: the model's logit from the dense input with the given MLP
    parameters (a ``dnn``: logit = MLP(z))."""
    from torch.func import functional_call

    mlp = cast(nn.Module, getattr(net, "mlp")).double()  # noqa: B009

    def head(params: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        local = {k[len("mlp.") :]: v for k, v in params.items() if k.startswith("mlp.")}
        out: torch.Tensor = functional_call(mlp, local, (z,)).squeeze(-1)
        return out

    return head


def score_reconstruction(
    layout: ModelLayout,
    model: np.ndarray,
    rec: Reconstruction,
    batch: CTRDataset,
    tolerance: float,
) -> list[ExampleScore]:
    """Match the true examples of ``batch`` to reconstructed ones (Hungarian, on the
    number of wrong field values plus the relative dense error) and score each."""
    schema = layout.schema
    net = layout.build(seed=0)
    load_flat_parameters(net, torch.as_tensor(np.asarray(model, dtype=np.float32)))
    with torch.no_grad():
        true_z = net.embedding(torch.from_numpy(np.array(batch.x))).flatten(1).double().numpy()
    tx = np.asarray(batch.x)
    n, m = len(batch), rec.x.shape[0]

    def same(i: int, j: int) -> np.ndarray:
        out = []
        for f in schema.fields:
            sl = schema.column_slice(f.name)
            a, b = tx[i, sl], rec.x[j, sl]
            out.append(
                set(a[a != 0].tolist()) == set(b[b != 0].tolist())
                if f.max_len > 1
                else a[0] == b[0]
            )
        return np.asarray(out)

    err = np.full((n, m), np.inf)
    wrong = np.zeros((n, m))
    for i in range(n):
        norm = max(float(np.linalg.norm(true_z[i])), 1e-12)
        for j in range(m):
            err[i, j] = float(np.linalg.norm(rec.dense[j] - true_z[i])) / norm
            wrong[i, j] = float((~same(i, j)).sum())
    cost = wrong + np.minimum(err, 10.0)
    if m >= n:
        ri, ci = linear_sum_assignment(cost)
        pairs = dict(zip(ri.tolist(), ci.tolist()))
    else:  # fewer reconstructions than examples (an aggregate): best match each
        pairs = {i: int(np.argmin(cost[i])) for i in range(n)}
    out = []
    ty = np.asarray(batch.y)
    for i in range(n):
        j = pairs[i]
        out.append(
            ExampleScore(
                label=bool(rec.y[j] == ty[i]),
                fields=bool(wrong[i, j] == 0),
                dense=bool(err[i, j] <= tolerance),
                dense_error=float(err[i, j]),
                field_hits=int(len(schema.fields) - wrong[i, j]),
                field_count=len(schema.fields),
            )
        )
    return out


# --- the planted experiment through the real pipeline ---------------------------------------


def _rows_for_train(batch_size: int, train_fraction: float) -> int:
    """The smallest per-device row count whose time split trains on ``batch_size``."""
    for m in range(2, 10 * batch_size + 10):
        if min(max(math.floor(train_fraction * m + 1e-9), 1), m - 1) == batch_size:
            return m
    raise ValueError(f"no row count trains on {batch_size} rows at {train_fraction}")


def planted_batches(
    base: CTRDataset,
    *,
    devices: int,
    batch_size: int,
    cloud_rows: int = 2000,
    train_fraction: float = 0.8,
    seed: int = 0,
) -> tuple[CTRDataset, float]:
    """A data set whose devices hold exactly ``batch_size`` training rows each.

    ``devices`` users of ``base`` keep the few rows their time split needs (their
    real features and labels), moved after every other row; ``cloud_rows`` rows of
    other users stay where they are and form the cloud data. Returns the data and
    the temporal ``split.alpha`` that puts exactly those rows in the cloud.
    """
    rng = np.random.default_rng(seed)
    m = _rows_for_train(batch_size, train_fraction)
    by_user = base.by_user()
    eligible = sorted(u for u, r in by_user.items() if r.size >= m)
    if len(eligible) < devices + 1:
        raise ValueError(f"only {len(eligible)} users have {m} rows; need {devices + 1}")
    chosen = rng.choice(eligible, devices, replace=False)
    picked = set(int(u) for u in chosen)
    t_max = int(np.max(base.timestamp))
    parts, times = [], []
    for k, u in enumerate(sorted(picked)):
        rows = np.sort(rng.choice(by_user[u], m, replace=False))
        parts.append(rows)
        times.append(t_max + 1 + k * m + np.arange(m))
    others = np.concatenate([r for u, r in by_user.items() if int(u) not in picked])
    cloud = np.sort(rng.choice(others, min(cloud_rows, others.size), replace=False))
    dev_rows = np.concatenate(parts)
    ts = np.concatenate([np.asarray(base.timestamp)[cloud], np.concatenate(times)])
    idx = np.concatenate([cloud, dev_rows])
    data = CTRDataset(
        base.schema,
        np.asarray(base.x)[idx],
        np.asarray(base.y)[idx],
        np.asarray(base.user)[idx],
        ts.astype(np.int64),
    )
    alpha = (cloud.size - 0.5) / len(data)
    return data, float(alpha)


def inversion_config(
    config: RunConfig, *, alpha: float, devices: int, lr: float, cloud_epochs: int = 1
) -> RunConfig:
    """``config`` made a one-step FedSGD round: every device trains one SGD step on
    all its rows (learning rate ``lr``) and uploads; its privacy is kept."""
    fed: dict[str, Any] = {"rounds": 1, "clients_per_round": devices, "sampling": "fixed"}
    if config.federated.sampling == "poisson":
        fed = {"rounds": 1, "sampling": "poisson", "sample_rate": 1.0}
    return config.replace(
        split={"mode": "temporal", "alpha": alpha},
        local={"epochs": 1, "batch_size": 1 << 20, "optimizer": "sgd", "lr": lr},
        cloud={"epochs": cloud_epochs},
        federated=fed,
        run={"record_transcript": True, "progress": False, "executor": "sequential"},
    )


def inversion_run(
    config: RunConfig,
    base: CTRDataset,
    run_dir: str | Path,
    attack: GradientInversionAttack,
    *,
    devices: int = 20,
    batch_size: int = 1,
    lr: float = 0.1,
    seed: int = 0,
) -> InversionResult:
    """Plant ``devices`` devices of ``batch_size`` rows, train one FedSGD round of
    ``config``'s protection through ``secrelay`` and invert what the server saw."""
    from attacks.audit import simulate_in_memory
    from attacks.truth import final_models
    from secrelay.methods import prepare_data

    data, alpha = planted_batches(base, devices=devices, batch_size=batch_size, seed=seed)
    cfg = inversion_config(config, alpha=alpha, devices=devices, lr=lr)
    truth = {d: dev.train for d, dev in prepare_data(cfg, data).devices.items()}
    rd = Path(simulate_in_memory(cfg, data, run_dir).run_dir)
    view = ServerView.from_run(rd, data.schema)
    if view.uploads:
        return attack.run(view, truth, lr=lr)
    t = min(view.downloads)
    start = np.asarray(view.downloads[t]["global"], dtype=np.float64)
    final = final_models(rd).get("global")
    if final is None:
        raise ValueError("the run released no aggregate to invert")
    who = set(view.participants.get(t, ()))
    got = {d: b for d, b in truth.items() if d in who}
    return attack.run_aggregate(start, final - start, got, lr=lr, batch_size=batch_size)
