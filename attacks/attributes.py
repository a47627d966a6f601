"""Attribute inference: a device's gender, age bucket, occupation (any per-user field)
from what the server sees of it.

Three routes, each scored against the majority-class baseline (the most frequent
value among the cloud users, which the server owns):

* ``rows`` — from the device's plaintext update: the attribute field's own
  embedding rows. Every training example of a device carries its attribute value,
  so that one row moves with every step; the attack declares the value whose row
  moved most. (A model without user-attribute fields removes this route.)
* ``items`` — from the update's *item* rows only: a logistic regression trained
  on the cloud users (their item sets → their attribute), applied to the item set
  the server reads off the update (:mod:`attacks.items`). This is what still leaks
  when attributes are not model features. The classifier is used only if it beats
  the majority in 3-fold cross-validation on the cloud users; otherwise the attack
  predicts the majority (and says so in its route).
* ``preference`` — from RelayRec's selector query p_u (plain): the same
  classifier on the cloud users' preference vectors, which the server computes with
  its own item space.

Against a secure sum the server has no per-device signal: the attack then *is*
the baseline, and reports so. Accuracy is over devices, with a Clopper–Pearson
interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from attacks.items import detect_rows
from attacks.stats import Estimate, clopper_pearson
from attacks.views import ServerView
from secrelay.data import CTRDataset

__all__ = ["AttributeInferenceAttack", "AttributeResult", "majority_baseline"]


@dataclass(frozen=True)
class AttributeResult:
    """Accuracy of one route on one attribute, next to the majority baseline."""

    attribute: str
    route: str
    accuracy: Estimate
    baseline: Estimate
    classes: int

    @property
    def advantage(self) -> float:
        return self.accuracy.value - self.baseline.value

    def as_dict(self) -> dict[str, object]:
        return {
            "attribute": self.attribute,
            "route": self.route,
            "accuracy": self.accuracy.as_dict(),
            "baseline": self.baseline.as_dict(),
            "advantage": self.advantage,
            "classes": self.classes,
        }


def majority_baseline(
    reference: Mapping[int, int], truth: Mapping[int, int]
) -> tuple[int, Estimate]:
    """The most frequent value in ``reference`` (e.g. the cloud users) and its
    accuracy on ``truth``."""
    if not reference:
        raise ValueError("the majority baseline needs reference users")
    vals, counts = np.unique(list(reference.values()), return_counts=True)
    majority = int(vals[np.argmax(counts)])
    hits = sum(1 for v in truth.values() if v == majority)
    return majority, clopper_pearson(hits, len(truth))


class AttributeInferenceAttack:
    """Infer ``attribute`` (a user field) of each device.

    Parameters
    ----------
    attribute:
        The field name (``"gender"``, ``"age"``, ``"occupation"``).
    cloud:
        The cloud users' rows (the server's own pre-regulation data): the training
        set of the classifiers and the baseline's reference.
    regularization:
        Inverse L2 strength C of the logistic regressions (0.1: on ML-100K, 1/C
        between 1 and 100 all beat the majority, 10 best on a held-out user split).
    """

    name = "attributes"

    def __init__(
        self, attribute: str, cloud: CTRDataset, *, regularization: float = 0.1, seed: int = 0
    ) -> None:
        if attribute not in cloud.schema:
            raise ValueError(f"`attribute` {attribute!r} is not a field of the schema")
        if not regularization > 0:
            raise ValueError(f"`regularization` must be > 0; got {regularization!r}")
        self.attribute = attribute
        self.regularization = float(regularization)
        self.cloud = cloud
        self.seed = int(seed)
        by_user = cloud.split_by_user()
        self.cloud_users = by_user
        self.cloud_truth = {u: _mode(ds.column(attribute)) for u, ds in by_user.items()}
        self.cloud_truth = {u: v for u, v in self.cloud_truth.items() if v > 0}

    def baseline(self, truth: Mapping[int, int]) -> Estimate:
        return majority_baseline(self.cloud_truth, truth)[1]

    # --- routes ---------------------------------------------------------------------------
    def from_rows(self, view: ServerView, truth: Mapping[int, int]) -> AttributeResult:
        """The attribute row that moved most in each device's plaintext update."""
        first: dict[int, int] = {}
        for t, d in sorted(view.uploads):
            first.setdefault(d, t)
        hits = n = 0
        scored: list[int] = []
        for d, t in first.items():
            if d not in truth:
                continue
            upd = view.device_update(t, d)
            if upd is None:
                continue
            norms = view.layout.row_norms(upd, self.attribute)
            norms[0] = -1.0
            hits += int(int(np.argmax(norms)) == truth[d])
            n += 1
            scored.append(d)
        return self._result("rows (plaintext update)", hits, n, truth, scored)

    def from_items(
        self, view: ServerView, truth: Mapping[int, int], *, item_field: str | None = None
    ) -> AttributeResult:
        """A classifier from item sets (trained on the cloud users) applied to the item
        set read off each device's plaintext update."""
        f = item_field or view.layout.schema.item_id_field or ""
        vocab = view.layout.schema[f].vocab_size
        users = [u for u in self.cloud_truth if u in self.cloud_users]
        x_train = np.zeros((len(users), vocab), dtype=np.float32)
        for i, u in enumerate(users):
            col = np.asarray(self.cloud_users[u].column(f)).reshape(-1)
            x_train[i, col[col > 0]] = 1.0
        y_train = np.array([self.cloud_truth[u] for u in users])
        clf = _fit(x_train, y_train, self.seed, self.regularization)
        route = "items (plaintext update)" + (
            " [majority: no CV gain]" if isinstance(clf, int) else ""
        )
        first: dict[int, int] = {}
        for t, d in sorted(view.uploads):
            first.setdefault(d, t)
        hits = n = 0
        scored: list[int] = []
        width = view.layout.row_width(f)
        for d, t in first.items():
            upd = view.device_update(t, d)
            if upd is None or d not in truth:
                continue
            hit = detect_rows(view.layout.row_norms(upd, f), width=width)
            hit[0] = False
            pred = _predict(clf, hit.astype(np.float32)[None, :], y_train)
            hits += int(pred == truth[d])
            n += 1
            scored.append(d)
        return self._result(route, hits, n, truth, scored)

    def from_vectors(
        self,
        vectors: Mapping[int, np.ndarray],
        cloud_vectors: Mapping[int, np.ndarray],
        truth: Mapping[int, int],
        *,
        route: str = "preference (query p_u)",
    ) -> AttributeResult:
        """A classifier on per-user vectors (e.g. p_u): trained on ``cloud_vectors``
        of the cloud users, applied to the ``vectors`` the devices sent."""
        users = [u for u in cloud_vectors if u in self.cloud_truth]
        if not users:
            raise ValueError("no cloud user has both a vector and the attribute")
        x_train = np.stack([np.asarray(cloud_vectors[u], dtype=np.float64) for u in users])
        y_train = np.array([self.cloud_truth[u] for u in users])
        clf = _fit(x_train, y_train, self.seed, self.regularization)
        if isinstance(clf, int):
            route += " [majority: no CV gain]"
        hits = n = 0
        scored: list[int] = []
        for d, v in vectors.items():
            if d not in truth:
                continue
            pred = _predict(clf, np.asarray(v, dtype=np.float64)[None, :], y_train)
            hits += int(pred == truth[d])
            n += 1
            scored.append(d)
        return self._result(route, hits, n, truth, scored)

    def no_signal(self, truth: Mapping[int, int], *, route: str) -> AttributeResult:
        """The view holds nothing per device (secure sums): the best guess is the prior."""
        _, base = majority_baseline(self.cloud_truth, truth)
        return AttributeResult(self.attribute, route, base, base, self._classes())

    def _classes(self) -> int:
        return len(set(self.cloud_truth.values()))

    def _result(
        self, route: str, hits: int, n: int, truth: Mapping[int, int], scored: list[int]
    ) -> AttributeResult:
        """Accuracy over the scored devices, and the baseline on the same devices."""
        return AttributeResult(
            self.attribute,
            route,
            clopper_pearson(hits, n) if n else Estimate.missing("clopper-pearson"),
            self.baseline({d: truth[d] for d in scored}) if scored else self.baseline(truth),
            self._classes(),
        )


def _mode(col: np.ndarray) -> int:
    c = np.asarray(col).reshape(-1)
    c = c[c > 0]
    if c.size == 0:
        return 0
    vals, counts = np.unique(c, return_counts=True)
    return int(vals[np.argmax(counts)])


def _fit(x: np.ndarray, y: np.ndarray, seed: int, c: float) -> LogisticRegression | int:
    """The classifier, or the majority value when the classifier does not beat the
    majority in 3-fold cross-validation on the training users (a careful attacker
    never does worse than its prior)."""
    vals, counts = np.unique(y, return_counts=True)
    majority = int(vals[np.argmax(counts)])
    if vals.size < 2:
        return majority
    if counts.min() >= 3 and y.size >= 30:
        folds = np.random.default_rng(seed).permutation(y.size) % 3
        clf_hits = maj_hits = 0
        for k in range(3):
            tr, te = folds != k, folds == k
            if np.unique(y[tr]).size < 2:
                continue
            m = LogisticRegression(max_iter=1000, C=c, random_state=seed).fit(x[tr], y[tr])
            clf_hits += int((m.predict(x[te]) == y[te]).sum())
            fold_vals, fold_counts = np.unique(y[tr], return_counts=True)
            maj_hits += int((y[te] == fold_vals[np.argmax(fold_counts)]).sum())
        if clf_hits <= maj_hits:
            return majority
    clf = LogisticRegression(max_iter=1000, C=c, random_state=seed)
    clf.fit(x, y)
    return clf


def _predict(clf: LogisticRegression | int, x: np.ndarray, y_train: np.ndarray) -> int:
    if isinstance(clf, int):
        return clf
    return int(clf.predict(x)[0])
