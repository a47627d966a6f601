"""LCFT: what the server learns of a device's local CTR w_i from its correction query.

LCFT's hard correction needs the (α, β) of the local-CTR interval w_i falls in
(``secrelay.relay.lcft``). A device either downloads the whole interval table
(``correction_path = "table"``: nothing goes up) or sends w_i in a query on
:data:`secrelay.relay.lcft.QUERY_TOPIC` — in the clear (``privacy.query_ldp =
"off"``), or as an ε-LDP report (``"gaussian"``: w_i + N(0, z²);
``"randomized_response"``: k RR bits at ε/k each).

:class:`LocalCTRAttack` is the honest-but-curious server. It reads the queries in
its transcript and decodes each with the public :class:`~secrelay.relay.lcft.CTRQuery`
the config determines (the same post-processing the server applies to answer);
a device that sent nothing gets the server's prior, the mean local CTR of the cloud
users (its own data). Two metrics, each against that prior as the baseline:

* **mean absolute error** |ŵ_i − w_i| over devices (bootstrap interval);
* **above the median** — is w_i above the devices' median? The server guesses yes
  when ŵ_i is above the median of its estimates; accuracy with a Clopper–Pearson
  interval, against the majority class.

:func:`ldp_sweep` runs the same decoding on simulated reports
(``CTRQuery.report``, the device's own code path) over a grid of ε, without
training anything: the MAE-vs-ε curve of each mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attacks.stats import Estimate, clopper_pearson, mean_estimate
from attacks.views import ServerView
from secrelay import RunConfig
from secrelay.data import CTRDataset
from secrelay.relay.lcft import QUERY_TOPIC, CTRQuery, LCFTOptions

__all__ = ["LocalCTRAttack", "LocalCTRResult", "ldp_sweep"]


@dataclass(frozen=True)
class LocalCTRResult:
    """The server's estimates of the devices' local CTRs, scored."""

    mae: Estimate
    baseline_mae: Estimate
    above_median: Estimate
    above_median_baseline: float
    devices: int
    queried: int
    route: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "mae": self.mae.as_dict(),
            "baseline_mae": self.baseline_mae.as_dict(),
            "above_median_accuracy": self.above_median.as_dict(),
            "above_median_baseline": self.above_median_baseline,
            "devices": self.devices,
            "queried": self.queried,
        }


def _cloud_ctrs(cloud: CTRDataset, *, min_rows: int = 10, min_users: int = 30) -> np.ndarray:
    """The local CTRs of the cloud users (the server's own data), from users with at
    least ``min_rows`` rows when there are ``min_users`` of them (a CTR from a handful
    of rows is mostly 0 or 1: a poor prior)."""
    users = [ds for ds in cloud.split_by_user().values() if len(ds)]
    rich = [ds for ds in users if len(ds) >= min_rows]
    return np.array([ds.ctr for ds in (rich if len(rich) >= min_users else users)])


def _cloud_prior(cloud: CTRDataset) -> float:
    """The server's guess with no report: the median local CTR of its cloud users
    (the constant that minimizes the mean absolute error over them)."""
    ctrs = _cloud_ctrs(cloud)
    return float(np.median(ctrs)) if ctrs.size else float(cloud.ctr)


class LocalCTRAttack:
    """The server's estimate of each device's local CTR (module doc).

    Parameters
    ----------
    query:
        The public report format, or ``None`` when devices download the table.
    prior:
        The estimate for a device that sent no query.
    """

    name = "lcft"

    def __init__(
        self,
        query: CTRQuery | None,
        *,
        prior: float,
        prior_ctrs: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"`prior` must be in [0, 1]; got {prior!r}")
        self.query = query
        self.prior = float(prior)
        self.prior_ctrs = (
            None if prior_ctrs is None else np.sort(np.asarray(prior_ctrs, dtype=np.float64))
        )
        self.seed = int(seed)

    def posterior_median(self, arrays: Mapping[str, np.ndarray]) -> float:
        """The Bayes estimate of w_i from a report: the median of the posterior over
        the empirical prior (the cloud users' local CTRs) — it minimizes the expected
        absolute error, so it never does worse on average than the prior itself."""
        q, w = self.query, self.prior_ctrs
        if q is None or w is None or not w.size or q.mechanism == "off":
            return self.prior if q is None else q.estimate(arrays)
        q.estimate(arrays)  # validates the payload
        if q.mechanism == "gaussian":
            assert q.noise_multiplier is not None
            r = float(np.asarray(arrays["noisy_ctr"]).reshape(-1)[0])
            loglik = -0.5 * ((r - w) / q.noise_multiplier) ** 2
        else:
            assert q.bit_epsilon is not None
            f = 1.0 / (1.0 + math.exp(q.bit_epsilon))
            bits = np.asarray(arrays["bits"], dtype=np.float64).reshape(-1)
            p1 = f + (1 - 2 * f) * w
            ones = float(bits.sum())
            loglik = ones * np.log(p1) + (bits.size - ones) * np.log1p(-p1)
        post = np.exp(loglik - loglik.max())
        cdf = np.cumsum(post) / post.sum()
        return float(w[int(np.searchsorted(cdf, 0.5))])

    @classmethod
    def from_config(cls, config: RunConfig, cloud: CTRDataset, *, seed: int = 0) -> LocalCTRAttack:
        """The attack a run's public config determines (its query format), with the
        prior from the cloud data."""
        if config.method.name != "lcft":
            raise ValueError(f"not an LCFT run (method {config.method.name!r})")
        options = LCFTOptions.from_mapping(config.method.options)
        query = None
        if options.correction_path == "query":
            p = config.privacy
            query = CTRQuery.plan(
                p.query_ldp,
                epsilon=p.query_ldp_epsilon,
                delta=p.delta,
                accountant=p.accountant,
                bits=options.query_rr_bits,
            )
        return cls(query, prior=_cloud_prior(cloud), prior_ctrs=_cloud_ctrs(cloud), seed=seed)

    def estimates(self, view: ServerView, *, bayes: bool = False) -> dict[int, float]:
        """``device -> ŵ_i`` for every device whose query is in the view: the server's
        own decoding (``CTRQuery.estimate``), or with ``bayes`` the posterior median."""
        if self.query is None:
            return {}
        read = self.posterior_median if bayes else self.query.estimate
        return {int(q.sender): read(q.arrays) for q in view.queries if q.topic == QUERY_TOPIC}

    def run(
        self, view: ServerView, truth: Mapping[int, float], *, bayes: bool = False
    ) -> LocalCTRResult:
        """Score the view's estimates against ``truth`` (``device -> w_i``)."""
        got = self.estimates(view, bayes=bayes)
        route = (
            "table download (no query)"
            if self.query is None
            else f"query ({self.query.mechanism}"
            + ("" if self.query.epsilon is None else f", ε = {self.query.epsilon:g}")
            + ")"
            + (", posterior median" if bayes and self.query is not None else "")
        )
        return self.score(got, truth, route=route)

    def score(
        self, estimates: Mapping[int, float], truth: Mapping[int, float], *, route: str
    ) -> LocalCTRResult:
        """MAE and above-median accuracy of ``estimates`` (missing devices: the prior)."""
        devs = sorted(truth)
        w = np.array([truth[d] for d in devs], dtype=np.float64)
        est = np.array([estimates.get(d, self.prior) for d in devs], dtype=np.float64)
        above = w > np.median(w) if w.size else np.zeros(0, dtype=bool)
        guess = est > np.median(est) if est.size else np.zeros(0, dtype=bool)
        majority = float(max(above.mean(), 1 - above.mean())) if w.size else math.nan
        return LocalCTRResult(
            mae=mean_estimate(np.abs(est - w), seed=self.seed),
            baseline_mae=mean_estimate(np.abs(self.prior - w), seed=self.seed),
            above_median=clopper_pearson(int((guess == above).sum()), int(w.size)),
            above_median_baseline=majority,
            devices=int(w.size),
            queried=sum(d in estimates for d in devs),
            route=route,
        )


def ldp_sweep(
    truth: Mapping[int, float],
    *,
    prior: float,
    prior_ctrs: np.ndarray | None = None,
    epsilons: Sequence[float],
    mechanisms: Sequence[str] = ("gaussian", "randomized_response"),
    delta: float = 1e-5,
    accountant: str = "prv",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Simulated reports of every device at each ε (``CTRQuery.report``, the device's
    code), decoded as the server does (and, given ``prior_ctrs``, by the posterior
    median); rows per (mechanism, ε), plus ``off`` and the table download."""
    rng = np.random.default_rng(seed)
    attack_off = LocalCTRAttack(CTRQuery(), prior=prior, seed=seed)
    plans: list[CTRQuery] = [CTRQuery()]
    for m in mechanisms:
        for e in epsilons:
            plans.append(CTRQuery.plan(m, epsilon=e, delta=delta, accountant=accountant))
    rows = []
    for q in plans:
        atk = LocalCTRAttack(q, prior=prior, prior_ctrs=prior_ctrs, seed=seed)
        reports = {d: q.report(w, generator=rng) for d, w in sorted(truth.items())}
        for bayes in (False, True) if prior_ctrs is not None and q.private else (False,):
            read = atk.posterior_median if bayes else q.estimate
            est = {d: read(a) for d, a in reports.items()}
            r = atk.score(est, truth, route=q.mechanism + (" (posterior median)" if bayes else ""))
            rows.append({"mechanism": q.mechanism, "epsilon": q.epsilon, **r.as_dict()})
    base = attack_off.score({}, truth, route="table download (no query)")
    rows.append({"mechanism": "table", "epsilon": None, **base.as_dict()})
    return rows
