"""Cluster-membership and preference inference against RelayRec, from the transcript.

A RelayRec device picks one of K initial models (its cluster) and contributes its
update into that cluster's slot of a (K, d) sum. What can the server tell about
the choice, and about the device's preference category?

Routes to the cluster, tried in this order for each device:

* ``slot`` — a plaintext cluster-keyed contribution is zero outside the chosen
  slot: the server reads the choice off it.
* ``selector reply`` — with ``selector_path = "query"`` the server answers the
  device's selector query, so it computed (and sent back, in the clear) the scores
  whose argmax the device takes.
* ``none`` — secure sums over K slots and a local (or encrypted) selector: nothing
  per device. The best the server can do is guess the cluster the (public, summed)
  per-cluster counts say is the largest; that guess is the baseline.

Preference category: a plaintext query carries p_u = Σ_c (λ_c / I_u) e_c (RelayRec
Eq. 4) and the server published the centroids e_c, so non-negative least squares
recovers λ / I_u and the dominant category argmax_c λ_c.

Accuracy is over devices, with a Clopper–Pearson interval; the baseline is the
largest cluster's share among the scored devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

from attacks.stats import Estimate, clopper_pearson
from attacks.views import ServerView
from secrelay.relay.relayrec import ITEM_SPACE_TOPIC, SELECT_TOPIC

__all__ = ["ClusterInferenceAttack", "ClusterResult", "dominant_category"]


@dataclass(frozen=True)
class ClusterResult:
    """Accuracy of the cluster (or category) guesses and the majority baseline."""

    target: str
    accuracy: Estimate
    baseline: Estimate
    routes: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "accuracy": self.accuracy.as_dict(),
            "baseline": self.baseline.as_dict(),
            "routes": dict(self.routes),
        }


def dominant_category(p_u: np.ndarray, centroids: np.ndarray) -> int:
    """argmax_c λ_c from p_u = Σ_c (λ_c / I_u) e_c by non-negative least squares."""
    coef, _ = nnls(np.asarray(centroids, dtype=np.float64).T, np.asarray(p_u, dtype=np.float64))
    return int(np.argmax(coef))


class ClusterInferenceAttack:
    """Guess each device's RelayRec cluster and preference category (module doc)."""

    name = "cluster"

    def keys(self, view: ServerView) -> tuple[str, ...]:
        """The K cluster keys in download order (``cluster/0`` … ``cluster/K-1``)."""
        for t in sorted(view.downloads):
            ks = tuple(k for k in view.downloads[t] if k.startswith("cluster/"))
            if ks:
                return ks
        return ()

    def predict(self, view: ServerView) -> dict[int, tuple[str | None, str]]:
        """``device -> (guessed key or None, route)`` for every device the view saw."""
        keys = self.keys(view)
        out: dict[int, tuple[str | None, str]] = {}
        for t, d in sorted(view.uploads):
            if d not in out:
                k = view.device_key(t, d)
                if k is not None and len(keys) > 1:
                    out[d] = (k, "slot")
        for r in view.replies:
            if r.topic == SELECT_TOPIC and "scores" in r.arrays and r.receiver not in out:
                scores = np.asarray(r.arrays["scores"]).reshape(-1)
                if keys and scores.size == len(keys):
                    out[r.receiver] = (keys[int(np.argmax(scores))], "selector reply")
        seen = {d for devs in view.participants.values() for d in devs}
        seen |= {d for devs in view.sampled.values() for d in devs}
        for d in seen:
            out.setdefault(d, (None, "none"))
        return out

    def run(self, view: ServerView, truth: Mapping[int, str]) -> ClusterResult:
        """Score the guesses against each device's actual key (``truth``).

        A device without a per-device guess gets the largest cluster among the
        guessed ones, or, if there are none, the largest true cluster (what the
        server learns from the per-cluster counts it aggregates).
        """
        pred = self.predict(view)
        scored = [d for d in pred if d in truth]
        counts = np.unique([truth[d] for d in scored], return_counts=True) if scored else None
        largest = str(counts[0][np.argmax(counts[1])]) if counts is not None else None
        guessed = [k for k, _ in pred.values() if k is not None]
        fallback = max(set(guessed), key=guessed.count) if guessed else largest
        hits = sum(1 for d in scored if (pred[d][0] or fallback) == truth[d])
        base = sum(1 for d in scored if truth[d] == largest)
        routes: dict[str, int] = {}
        for d in scored:
            routes[pred[d][1]] = routes.get(pred[d][1], 0) + 1
        return ClusterResult(
            "cluster",
            clopper_pearson(hits, len(scored)) if scored else Estimate.missing(),
            clopper_pearson(base, len(scored)) if scored else Estimate.missing(),
            routes,
        )

    def categories(self, view: ServerView) -> dict[int, int]:
        """``device -> dominant preference category`` from plaintext p_u queries."""
        centroids = None
        for r in view.replies:
            if r.topic == ITEM_SPACE_TOPIC and "centroids" in r.arrays:
                centroids = np.asarray(r.arrays["centroids"])
                break
        if centroids is None:
            return {}
        return {
            q.sender: dominant_category(np.asarray(q.arrays["p_u"]), centroids)
            for q in view.queries
            if q.topic == SELECT_TOPIC and "p_u" in q.arrays
        }

    def run_categories(self, view: ServerView, truth: Mapping[int, int]) -> ClusterResult:
        """Score the preference-category guesses (``truth``: each device's argmax λ_c)."""
        pred = self.categories(view)
        scored = [d for d in truth if d in pred] if pred else list(truth)
        vals = [truth[d] for d in scored]
        largest = max(set(vals), key=vals.count) if vals else None
        hits = sum(1 for d in scored if pred.get(d, largest) == truth[d])
        base = sum(1 for d in scored if truth[d] == largest)
        return ClusterResult(
            "preference category",
            clopper_pearson(hits, len(scored)) if scored else Estimate.missing(),
            clopper_pearson(base, len(scored)) if scored else Estimate.missing(),
            {"p_u query": len(pred)} if pred else {"none": len(scored)},
        )
