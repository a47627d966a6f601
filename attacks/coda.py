"""CoDA: what the batch fetches reveal, and re-identification of pool users.

CoDA serves each device the pre-regulation samples of the K pool users nearest to
it (``secrelay.relay.coda``). Two adversaries:

* **The server, from the batch fetches** (:class:`NeighbourhoodAttack`). Whatever
  protects the match request (plaintext vector or CKKS matching), the server serves
  the K pool users' samples, so it learns the device's neighbourhood. Read from the
  transcript: the batch replies to a device decode (``decode_payload``) to sample IDs
  that are pool rows; with ``privatize_samples`` the IDs are per-device handles, and
  the server links each row back to its pool rows by the fields it did not
  randomize (items, context, label) and keeps the K users that explain most rows.
  The neighbours' attributes (the server's own cloud data) then vote for the
  device's gender / age / occupation, and their most frequent items are guessed as
  the device's items. Baselines: the majority class of the cloud users, and the
  globally most popular items.
* **A curious device, from the privatized samples** (:class:`ReidentificationAttack`).
  It links every received sample to a pool user with auxiliary knowledge of the pool:
  each pool user's user-field values (demographics) and, at the stronger level, the
  items they interacted with. Candidates are the pool users whose known items contain
  the sample's item (all pool users at the weaker level); among them it picks the
  most likely under k-ary randomized response of the user fields
  (:class:`~secrelay.relay.coda.SamplePrivatizer`: a column keeps its value with
  probability 1 − p + p/k, p = k / (e^ε_col − 1 + k)). Baseline: a uniform guess among
  the candidates. :func:`reidentification_sweep` repeats the release (the library's
  own privatizer) at each ε per sample.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from attacks.stats import Estimate, clopper_pearson, mean_estimate
from attacks.truth import user_attribute
from attacks.views import ServerView
from secrelay.data import CTRDataset
from secrelay.relay.coda import (
    BATCH_TOPIC,
    KNNMatcher,
    SamplePrivatizer,
    decode_payload,
    default_user_feature,
    user_vectors,
)

__all__ = [
    "NeighbourhoodAttack",
    "NeighbourhoodResult",
    "ReidentificationAttack",
    "ReidentificationResult",
    "reidentification_sweep",
    "served_rows",
]

Aux = Literal["fields", "fields+items"]


def _row_keys(x: np.ndarray, y: np.ndarray, keep: Sequence[int]) -> list[bytes]:
    cols = np.ascontiguousarray(np.column_stack([x[:, list(keep)], y.astype(np.int64)]))
    return [r.tobytes() for r in cols.astype(np.int64)]


def _kept_columns(pool: CTRDataset) -> list[int]:
    """Columns CoDA never changes: every field that is not a user field."""
    s = pool.schema
    out: list[int] = []
    for f in s.fields:
        if f.role != "user":
            sl = s.column_slice(f.name)
            out.extend(range(sl.start, sl.stop))
    return out


def served_rows(
    view: ServerView, pool: CTRDataset, *, privatized: bool
) -> dict[int, list[set[int]]]:
    """``device -> [candidate pool users of each received sample]`` from the batch
    replies in the transcript (one user per sample unless privatized)."""
    n_cols = pool.schema.n_columns
    users = np.asarray(pool.user)
    index: dict[bytes, set[int]] = {}
    if privatized:
        keep = _kept_columns(pool)
        for k, u in zip(_row_keys(np.asarray(pool.x), np.asarray(pool.y), keep), users):
            index.setdefault(k, set()).add(int(u))
    out: dict[int, list[set[int]]] = {}
    for r in view.replies:
        if r.topic != BATCH_TOPIC or not r.blob:
            continue
        batch = decode_payload(r.blob, n_columns=n_cols)
        mine = out.setdefault(int(r.receiver), [])
        if privatized:
            keys = _row_keys(batch.x, batch.y, _kept_columns(pool))
            mine.extend(index.get(k, set()) for k in keys)
        else:
            mine.extend({int(users[i])} for i in batch.sample_ids if 0 <= i < users.size)
    return out


@dataclass(frozen=True)
class NeighbourhoodResult:
    """Attribute and item inference from each device's served neighbourhood."""

    attributes: Mapping[str, tuple[Estimate, float]]
    item_precision: Estimate
    item_baseline: Estimate
    devices: int
    top_items: int
    route: str
    raw_vote: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "devices": self.devices,
            "attributes": {
                a: {"accuracy": e.as_dict(), "baseline": b, "raw_vote": self.raw_vote.get(a)}
                for a, (e, b) in self.attributes.items()
            },
            f"item_precision_at_{self.top_items}": self.item_precision.as_dict(),
            f"item_baseline_at_{self.top_items}": self.item_baseline.as_dict(),
        }


class NeighbourhoodAttack:
    """The server's inference from the pool users it served a device (module doc).

    Parameters
    ----------
    pool:
        The cloud's pool (its pre-regulation data; the server owns it).
    k:
        Neighbours per device (the public ``method.options.k``).
    top_items:
        Items guessed per device.
    """

    name = "neighbourhood"

    def __init__(self, pool: CTRDataset, *, k: int, top_items: int = 20, seed: int = 0) -> None:
        if k < 1 or top_items < 1:
            raise ValueError(f"`k` and `top_items` must be >= 1; got {k!r}, {top_items!r}")
        self.pool = pool
        self.k = int(k)
        self.top_items = int(top_items)
        self.seed = int(seed)
        self._by_user = pool.split_by_user()
        item = pool.schema.item_id_field
        self.item_field = item or ""

    def neighbours(self, served: Sequence[set[int]]) -> list[int]:
        """The K users explaining most received samples (each sample split evenly over
        its candidate users)."""
        score: Counter[int] = Counter()
        for cands in served:
            for u in cands:
                score[u] += 1.0 / len(cands)  # type: ignore[assignment]
        return [u for u, _ in score.most_common(self.k)]

    def _items_of(self, users: Sequence[int]) -> list[int]:
        counts: Counter[int] = Counter()
        for u in users:
            ds = self._by_user.get(u)
            if ds is not None and self.item_field:
                col = np.asarray(ds.column(self.item_field)).reshape(-1)
                counts.update(int(v) for v in np.unique(col[col != 0]))
        return [i for i, _ in counts.most_common(self.top_items)]

    def vote_helps(self, attribute: str, feature: str = "") -> bool:
        """Whether the neighbours' vote beats the majority class on the cloud users
        themselves (each voted on by its K nearest other pool users, matched as CoDA
        matches: the mean one-hot of ``feature``). A careful server uses the vote only
        then, so it never does worse than its prior."""
        f = feature or default_user_feature(self.pool.schema)
        users, vecs = user_vectors(self.pool, f)
        cloud = user_attribute(self._by_user, attribute)
        if len(users) < 3 or not cloud:
            return False
        k = min(self.k + 1, len(users))
        near = KNNMatcher(users, vecs).match(vecs, k=k)
        majority = Counter(cloud.values()).most_common(1)[0][0]
        vote = base = 0
        for u, row in zip(users, near):
            t = cloud.get(int(u))
            if t is None:
                continue
            votes = Counter(cloud[int(v)] for v in row if int(v) != int(u) and int(v) in cloud)
            vote += (votes.most_common(1)[0][0] if votes else majority) == t
            base += majority == t
        return vote > base

    def run(
        self,
        view: ServerView,
        devices: Mapping[int, CTRDataset],
        attributes: Sequence[str],
        *,
        privatized: bool,
        feature: str = "",
    ) -> NeighbourhoodResult:
        """Score the neighbourhood inference on ``devices`` (their training rows).

        Per attribute, the vote is used only where it beats the majority class on the
        cloud users (:meth:`vote_helps`); ``raw_vote`` in the details is the vote alone.
        """
        served = served_rows(view, self.pool, privatized=privatized)
        hood = {d: self.neighbours(s) for d, s in served.items() if d in devices and s}
        attrs: dict[str, tuple[Estimate, float]] = {}
        raw: dict[str, float] = {}
        for a in attributes:
            if a not in self.pool.schema:
                continue
            cloud = user_attribute(self._by_user, a)
            truth = user_attribute({d: devices[d] for d in hood}, a)
            majority = Counter(cloud.values()).most_common(1)[0][0] if cloud else 0
            use_vote = self.vote_helps(a, feature)
            hits = base = votes_right = 0
            for d, t in truth.items():
                votes = Counter(cloud[u] for u in hood[d] if u in cloud)
                vote = votes.most_common(1)[0][0] if votes else majority
                votes_right += vote == t
                hits += (vote if use_vote else majority) == t
                base += majority == t
            n = len(truth)
            attrs[a] = (clopper_pearson(hits, n), base / n if n else math.nan)
            raw[a] = votes_right / n if n else math.nan
        popular = self._items_of(list(self._by_user))
        prec, prec_base = [], []
        for d, users in hood.items():
            col = np.asarray(devices[d].column(self.item_field)).reshape(-1)
            mine = set(int(v) for v in col[col != 0])
            guess = self._items_of(users)
            prec.append(len(mine & set(guess)) / max(len(guess), 1))
            prec_base.append(len(mine & set(popular)) / max(len(popular), 1))
        route = "batch fetches → pool users" + (
            " (linked by unrandomized fields)" if privatized else ""
        )
        return NeighbourhoodResult(
            attrs,
            mean_estimate(prec, seed=self.seed),
            mean_estimate(prec_base, seed=self.seed),
            len(hood),
            self.top_items,
            route,
            raw,
        )


# --- re-identification of pool users from privatized samples ------------------------------


@dataclass(frozen=True)
class ReidentificationResult:
    """Re-identification rate of released samples, and the uniform-guess baseline."""

    rate: Estimate
    baseline: float
    epsilon: float | None
    aux: str
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "aux": self.aux,
            "rate": self.rate.as_dict(),
            "baseline": self.baseline,
            "samples": self.samples,
        }


class ReidentificationAttack:
    """A device links privatized samples back to pool users (module doc).

    Parameters
    ----------
    pool:
        The pool users' samples the auxiliary knowledge comes from.
    aux:
        ``"fields"`` (each pool user's user-field values) or ``"fields+items"``
        (also the set of items each pool user interacted with).
    """

    name = "reidentify"

    def __init__(self, pool: CTRDataset, *, aux: Aux = "fields+items", seed: int = 0) -> None:
        if aux not in ("fields", "fields+items"):
            raise ValueError(f"`aux` must be 'fields' or 'fields+items'; got {aux!r}")
        self.pool = pool
        self.aux: Aux = aux
        self.seed = int(seed)
        s = pool.schema
        self.columns = [
            (c, f.vocab_size)
            for f in s.fields_with_role("user")
            if f.name != s.user_id_field
            for c in range(s.column_slice(f.name).start, s.column_slice(f.name).stop)
        ]
        users = np.asarray(pool.user)
        self.users = np.unique(users)
        x = np.asarray(pool.x)
        # each pool user's user-field values (the mode over their rows)
        self.profile = np.zeros((self.users.size, len(self.columns)), dtype=np.int64)
        pos = {int(u): i for i, u in enumerate(self.users)}
        for u, rows in pool.by_user().items():
            for j, (c, _) in enumerate(self.columns):
                vals, cnt = np.unique(x[rows, c], return_counts=True)
                self.profile[pos[int(u)], j] = vals[np.argmax(cnt)]
        self._pos = pos
        self._item_col = s.column_slice(s.item_id_field).start if s.item_id_field else None
        self._holders: dict[int, np.ndarray] = {}
        if self._item_col is not None:
            tmp: dict[int, set[int]] = {}
            for r in range(len(pool)):
                tmp.setdefault(int(x[r, self._item_col]), set()).add(pos[int(users[r])])
            self._holders = {i: np.array(sorted(v)) for i, v in tmp.items()}

    def guess(
        self, x: np.ndarray, *, column_epsilon: float | None, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per released row, the guessed pool user and the number of candidates."""
        rows = np.asarray(x, dtype=np.int64)
        everyone = np.arange(self.users.size)
        out = np.zeros(rows.shape[0], dtype=np.int64)
        n_cand = np.zeros(rows.shape[0], dtype=np.int64)
        if column_epsilon is None:
            keep = np.array([1.0 for _ in self.columns])
            other = np.zeros(len(self.columns))
        else:
            ks = np.array([k for _, k in self.columns], dtype=np.float64)
            p = ks / (math.expm1(column_epsilon) + ks)
            keep, other = 1 - p + p / ks, p / ks
        log_keep, log_other = np.log(keep), np.log(np.maximum(other, 1e-300))
        obs_cols = [c for c, _ in self.columns]
        for i, row in enumerate(rows):
            cands = everyone
            if self.aux == "fields+items" and self._item_col is not None:
                cands = self._holders.get(int(row[self._item_col]), everyone)
            same = self.profile[cands] == row[obs_cols][None, :]
            ll = np.where(same, log_keep[None, :], log_other[None, :]).sum(axis=1)
            best = np.flatnonzero(ll >= ll.max() - 1e-9)
            out[i] = int(self.users[cands[best[generator.integers(best.size)]]])
            n_cand[i] = cands.size
        return out, n_cand

    def run(
        self,
        rows: np.ndarray,
        *,
        privatizer: SamplePrivatizer | None,
        generator: np.random.Generator,
    ) -> ReidentificationResult:
        """Release pool rows ``rows`` (indices) as CoDA does — the id stripped, and the
        user fields randomized by ``privatizer`` when given — and re-identify them."""
        idx = np.asarray(rows, dtype=np.int64)
        x = np.array(np.asarray(self.pool.x)[idx], dtype=np.int64)
        s = self.pool.schema
        if s.user_id_field:
            x[:, s.column_slice(s.user_id_field)] = 0
        eps = None
        if privatizer is not None:
            x = privatizer.randomize(x, generator)
            eps = privatizer.column_epsilon
        guess, n_cand = self.guess(x, column_epsilon=eps, generator=generator)
        truth = np.asarray(self.pool.user)[idx]
        hits = int((guess == truth).sum())
        return ReidentificationResult(
            rate=clopper_pearson(hits, int(idx.size)),
            baseline=float(np.mean(1.0 / np.maximum(n_cand, 1))) if idx.size else math.nan,
            epsilon=None if privatizer is None else float(privatizer.epsilon),
            aux=self.aux,
            samples=int(idx.size),
        )


def reidentification_sweep(
    pool: CTRDataset,
    *,
    epsilons: Sequence[float | None],
    samples: int = 2000,
    aux: Sequence[Aux] = ("fields", "fields+items"),
    seed: int = 0,
) -> list[ReidentificationResult]:
    """Re-identification of ``samples`` random pool rows released at each ε per sample
    (``None``: only the id stripped, CoDA without privatization), at each ``aux``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(pool), min(samples, len(pool)), replace=False))
    out = []
    for level in aux:
        atk = ReidentificationAttack(pool, aux=level, seed=seed)
        for e in epsilons:
            priv = None if e is None else SamplePrivatizer(pool.schema, float(e))
            out.append(atk.run(rows, privatizer=priv, generator=np.random.default_rng(seed + 1)))
    return out
