"""The embedded synthetic CTR data set (the default data of ``secrelay demo``).

Generative model (all randomness from ``numpy.random.default_rng(seed)``):

* Every user ``u`` belongs to one of ``n_groups`` latent preference groups
  ``g_u``; every item ``i`` to one of ``n_categories`` latent categories ``c_i``.
* Group preferences are a matrix ``P`` (groups × categories) of standard
  normals. At the *drift time* ``t_d`` (a fraction ``drift_at`` of the time span,
  by default the regulation boundary α = 5 %) the preferences move to
  ``P' = cos(θ) P + sin(θ) Q`` with a fresh standard-normal ``Q`` and
  ``θ = drift · π/2``: ``drift = 0`` keeps them, ``drift = 1`` replaces them by
  independent ones (the correlation of ``P`` and ``P'`` is ``cos θ``).
* The click logit of user ``u`` on item ``i`` at time ``t`` is::

      intercept + b_u + b_i + preference_scale · (P_t[g_u, c_i] + user_noise · E_u[c_i])
                + h[daypart(t)]

  with a per-user bias ``b_u ~ N(0, user_bias_scale²)`` (heterogeneous local
  CTRs), an item bias ``b_i ~ N(0, item_bias_scale²)``, per-user deviations
  ``E_u ~ N(0, 1)`` and a small daypart effect ``h``. The label is a Bernoulli
  draw of its sigmoid, so the Bayes-optimal score is that probability
  (:meth:`SyntheticLatents.click_probability`).
* Items are drawn from a Zipf-like popularity (exponent ``popularity_exponent``);
  each user's times are uniform over ``span_days`` days. With ``exposure = 0`` (the
  default) which items a user sees does not depend on the user; with
  ``exposure > 0`` a user of group ``g`` sees an item of category ``c`` at time ``t``
  with weight ``popularity · exp(exposure · P_t[g, c])`` — users mostly see what
  their group likes, so *what* a user interacted with (not only whether it clicked)
  carries its preferences, as in logged recommendation data.

Observed fields (vocabulary sizes; index 0 = padding / unknown):

========== ======= ================================================================
field      role    meaning
========== ======= ================================================================
user_id    user    the user (``n_users + 1``)
age        user    7 age buckets, correlated with the group (8)
gender     user    2 values, weakly correlated with the group (3)
region     user    ``n_regions`` regions, strongly correlated with the group
item_id    item    the item (``n_items + 1``)
category   item    the latent category, observed (``n_categories + 1``)
tags       item    1-3 of ``n_tags`` tags, the first determined by the category
                   (multi-valued, ``max_len`` 3)
daypart    context hour of day in 4 blocks of 6 hours (5)
========== ======= ================================================================

The device identity :attr:`CTRDataset.user` equals the ``user_id`` code (1..n).
Rows are in time order (ties by user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Field, Schema

__all__ = [
    "SyntheticData",
    "SyntheticLatents",
    "make_synthetic",
    "make_synthetic_with_latents",
]

_N_AGE = 7
_N_DAYPART = 4
_MAX_TAGS = 3
_T0 = 1_577_836_800  # 2020-01-01T00:00:00Z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


@dataclass(frozen=True, eq=False)
class SyntheticLatents:
    """The generator's hidden parameters (index ``k`` ↔ user / item code ``k + 1``).

    Attributes
    ----------
    user_group:
        ``(n_users,)`` latent group of each user.
    item_category:
        ``(n_items,)`` latent category of each item.
    user_bias, item_bias:
        Per-user and per-item logit offsets.
    user_deviation:
        ``(n_users, n_categories)`` individual preference deviations ``E_u``.
    preference_before, preference_after:
        ``(n_groups, n_categories)`` group preferences before / from the drift time.
    daypart_effect:
        ``(4,)`` logit offset of each daypart.
    intercept, preference_scale, user_noise:
        Scalars of the logit (see the module docstring).
    drift_time:
        The drift boundary ``t_d`` (Unix seconds): rows with ``timestamp >= t_d``
        use ``preference_after``.
    """

    user_group: np.ndarray
    item_category: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_deviation: np.ndarray
    preference_before: np.ndarray
    preference_after: np.ndarray
    daypart_effect: np.ndarray
    intercept: float
    preference_scale: float
    user_noise: float
    drift_time: int

    def logit(self, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """True click logit for user codes, item codes and times (arrays of one shape)."""
        u = np.asarray(user, dtype=np.int64) - 1
        i = np.asarray(item, dtype=np.int64) - 1
        t = np.asarray(timestamp, dtype=np.int64)
        n_u, n_i = self.user_group.size, self.item_category.size
        if u.size and (u.min() < 0 or u.max() >= n_u):
            raise InvalidParameterError(f"`user` codes must be in [1, {n_u}]")
        if i.size and (i.min() < 0 or i.max() >= n_i):
            raise InvalidParameterError(f"`item` codes must be in [1, {n_i}]")
        g = self.user_group[u]
        c = self.item_category[i]
        pref = np.where(
            t >= self.drift_time, self.preference_after[g, c], self.preference_before[g, c]
        )
        z: np.ndarray = (
            self.intercept
            + self.user_bias[u]
            + self.item_bias[i]
            + self.preference_scale * (pref + self.user_noise * self.user_deviation[u, c])
            + self.daypart_effect[_daypart(t)]
        )
        return z

    def click_probability(self, ds: CTRDataset) -> np.ndarray:
        """Bayes-optimal click probability of every row of ``ds``.

        Uses the device identity ``ds.user`` (not the ``user_id`` feature, which
        the ``random`` regulation split shuffles), the ``item_id`` column and the
        timestamps, so it stays valid on any subset or split of the generated data.
        """
        return _sigmoid(self.logit(ds.user, ds.column("item_id"), ds.timestamp))


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """A generated data set together with the latents that produced it."""

    dataset: CTRDataset
    latents: SyntheticLatents


def _daypart(t: np.ndarray) -> np.ndarray:
    return ((t % 86_400) // 3_600 // 6).astype(np.int64)


def _exposed_items(
    rng: np.random.Generator,
    popularity: np.ndarray,
    latents: SyntheticLatents,
    row_user: np.ndarray,
    row_time: np.ndarray,
    exposure: float,
) -> np.ndarray:
    """Item codes of every row, drawn with weight popularity · exp(exposure · P_t[g, c])."""
    group = latents.user_group[row_user - 1]
    after = row_time >= latents.drift_time
    items = np.zeros(row_user.size, dtype=np.int64)
    for g in range(latents.preference_before.shape[0]):
        for late, pref in ((False, latents.preference_before), (True, latents.preference_after)):
            rows = np.flatnonzero((group == g) & (after == late))
            if rows.size:
                w = popularity * np.exp(exposure * pref[g, latents.item_category])
                items[rows] = rng.choice(w.size, size=rows.size, p=w / w.sum()) + 1
    return items


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidParameterError(f"`{name}` must be an int >= {low}; got {value!r}")
    return int(value)


def _check_float(name: str, value: object, low: float, high: float | None = None) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"`{name}` must be a number; got {value!r}") from None
    if not np.isfinite(v) or v < low or (high is not None and v > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameterError(f"`{name}` must be in {rng}; got {value!r}")
    return v


def make_synthetic_with_latents(
    *,
    n_users: int = 1000,
    samples_per_user: int = 100,
    n_items: int = 500,
    n_groups: int = 4,
    n_categories: int = 8,
    n_regions: int = 10,
    n_tags: int = 20,
    drift: float = 0.5,
    drift_at: float = 0.05,
    intercept: float = -0.3,
    user_bias_scale: float = 1.0,
    item_bias_scale: float = 0.5,
    preference_scale: float = 1.0,
    user_noise: float = 0.5,
    popularity_exponent: float = 0.8,
    span_days: int = 180,
    exposure: float = 0.0,
    seed: int = 0,
) -> SyntheticData:
    """Generate the synthetic data set and return it with its latent parameters.

    Parameters
    ----------
    n_users, samples_per_user, n_items:
        Sizes (each >= 1); the data set has ``n_users * samples_per_user`` rows.
    n_groups, n_categories:
        Latent user groups and item categories (each >= 1).
    n_regions, n_tags:
        Vocabulary of the ``region`` and ``tags`` fields (each >= 1).
    drift:
        Strength of the preference change at the drift time, in [0, 1]
        (correlation of old and new group preferences is ``cos(drift · π/2)``).
    drift_at:
        Drift time as a fraction of the time span, in [0, 1].
    intercept:
        Global logit offset (sets the global CTR; the default gives about 0.45).
    user_bias_scale, item_bias_scale:
        Standard deviations of the per-user and per-item logit offsets (>= 0).
    preference_scale:
        Weight of the group × category preference in the logit (>= 0).
    user_noise:
        Weight of each user's individual deviation from its group (>= 0).
    popularity_exponent:
        Zipf exponent of item popularity (>= 0; 0 = uniform).
    span_days:
        Length of the time span in days (>= 1).
    exposure:
        How strongly a user's group preference steers which items it sees (>= 0;
        0 = items independent of the user, as before this parameter existed).
    seed:
        Seed of ``numpy.random.default_rng``; equal seeds give identical data.

    Returns
    -------
    SyntheticData
        The data set and its :class:`SyntheticLatents`.
    """
    n_users = _check_int("n_users", n_users, 1)
    samples_per_user = _check_int("samples_per_user", samples_per_user, 1)
    n_items = _check_int("n_items", n_items, 1)
    n_groups = _check_int("n_groups", n_groups, 1)
    n_categories = _check_int("n_categories", n_categories, 1)
    n_regions = _check_int("n_regions", n_regions, 1)
    n_tags = _check_int("n_tags", n_tags, 1)
    span_days = _check_int("span_days", span_days, 1)
    drift = _check_float("drift", drift, 0.0, 1.0)
    drift_at = _check_float("drift_at", drift_at, 0.0, 1.0)
    intercept = _check_float("intercept", intercept, -50.0, 50.0)
    user_bias_scale = _check_float("user_bias_scale", user_bias_scale, 0.0)
    item_bias_scale = _check_float("item_bias_scale", item_bias_scale, 0.0)
    preference_scale = _check_float("preference_scale", preference_scale, 0.0)
    user_noise = _check_float("user_noise", user_noise, 0.0)
    popularity_exponent = _check_float("popularity_exponent", popularity_exponent, 0.0)
    exposure = _check_float("exposure", exposure, 0.0)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)

    # --- latent structure -----------------------------------------------------------
    user_group = rng.integers(0, n_groups, size=n_users)
    item_category = rng.integers(0, n_categories, size=n_items)
    user_bias = rng.normal(0.0, user_bias_scale, size=n_users)
    item_bias = rng.normal(0.0, item_bias_scale, size=n_items)
    user_deviation = rng.normal(0.0, 1.0, size=(n_users, n_categories))
    pref_before = rng.normal(0.0, 1.0, size=(n_groups, n_categories))
    theta = drift * np.pi / 2
    pref_after = np.cos(theta) * pref_before + np.sin(theta) * rng.normal(
        0.0, 1.0, size=(n_groups, n_categories)
    )
    daypart_effect = rng.normal(0.0, 0.15, size=_N_DAYPART)
    span = span_days * 86_400
    drift_time = _T0 + round(drift_at * span)
    latents = SyntheticLatents(
        user_group=user_group,
        item_category=item_category,
        user_bias=user_bias,
        item_bias=item_bias,
        user_deviation=user_deviation,
        preference_before=pref_before,
        preference_after=pref_after,
        daypart_effect=daypart_effect,
        intercept=intercept,
        preference_scale=preference_scale,
        user_noise=user_noise,
        drift_time=drift_time,
    )

    # --- observed user fields (correlated with the group) ---------------------------
    typical_age = (np.arange(n_groups) * 2 + 1) % _N_AGE
    age = np.where(
        rng.random(n_users) < 0.5, typical_age[user_group], rng.integers(0, _N_AGE, n_users)
    )
    gender = (rng.random(n_users) < 0.35 + 0.3 * (user_group % 2)).astype(np.int64)
    typical_region = np.arange(n_groups) % n_regions
    region = np.where(
        rng.random(n_users) < 0.7,
        typical_region[user_group],
        rng.integers(0, n_regions, n_users),
    )

    # --- observed item fields ---------------------------------------------------------
    tags = np.zeros((n_items, _MAX_TAGS), dtype=np.int64)
    tags[:, 0] = item_category % n_tags + 1
    extra = rng.integers(0, _MAX_TAGS, size=n_items)  # 0-2 extra random tags
    rand_tags = rng.integers(1, n_tags + 1, size=(n_items, _MAX_TAGS - 1))
    for k in range(_MAX_TAGS - 1):
        tags[:, k + 1] = np.where(extra > k, rand_tags[:, k], 0)

    # --- interactions -------------------------------------------------------------------
    weights = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    weights = weights[rng.permutation(n_items)]
    weights /= weights.sum()
    n = n_users * samples_per_user
    row_user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), samples_per_user)
    if exposure == 0.0:  # the original draw order: data of earlier versions unchanged
        row_item = rng.choice(n_items, size=n, p=weights).astype(np.int64) + 1
        row_time = _T0 + rng.integers(0, span, size=n)
    else:
        row_time = _T0 + rng.integers(0, span, size=n)
        row_item = _exposed_items(rng, weights, latents, row_user, row_time, exposure)
    prob = _sigmoid(latents.logit(row_user, row_item, row_time))
    y = (rng.random(n) < prob).astype(np.float32)

    order = np.lexsort((row_user, row_time))
    row_user, row_item, row_time, y = row_user[order], row_item[order], row_time[order], y[order]
    u0, i0 = row_user - 1, row_item - 1
    x = np.column_stack(
        [
            row_user,
            age[u0] + 1,
            gender[u0] + 1,
            region[u0] + 1,
            row_item,
            item_category[i0] + 1,
            tags[i0],
            _daypart(row_time) + 1,
        ]
    ).astype(np.int64)
    schema = Schema(
        (
            Field("user_id", "user", n_users + 1),
            Field("age", "user", _N_AGE + 1),
            Field("gender", "user", 3),
            Field("region", "user", n_regions + 1),
            Field("item_id", "item", n_items + 1),
            Field("category", "item", n_categories + 1),
            Field("tags", "item", n_tags + 1, max_len=_MAX_TAGS),
            Field("daypart", "context", _N_DAYPART + 1),
        ),
        user_id_field="user_id",
        label="click",
        timestamp="timestamp",
        item_id_field="item_id",
    )
    for arr in (
        user_group,
        item_category,
        user_bias,
        item_bias,
        user_deviation,
        pref_before,
        pref_after,
        daypart_effect,
    ):
        arr.setflags(write=False)
    return SyntheticData(CTRDataset(schema, x, y, row_user, row_time), latents)


def make_synthetic(
    *,
    n_users: int = 1000,
    samples_per_user: int = 100,
    n_items: int = 500,
    n_groups: int = 4,
    n_categories: int = 8,
    n_regions: int = 10,
    n_tags: int = 20,
    drift: float = 0.5,
    drift_at: float = 0.05,
    intercept: float = -0.3,
    user_bias_scale: float = 1.0,
    item_bias_scale: float = 0.5,
    preference_scale: float = 1.0,
    user_noise: float = 0.5,
    popularity_exponent: float = 0.8,
    span_days: int = 180,
    exposure: float = 0.0,
    seed: int = 0,
) -> CTRDataset:
    """Generate the embedded synthetic CTR data set.

    Users in latent preference groups, items in latent categories, heterogeneous
    per-user CTRs and a preference drift at ``drift_at`` of the time span; see
    the module docstring for the model and fields and
    :func:`make_synthetic_with_latents` for the parameters and the latents.

    Examples
    --------
    >>> ds = make_synthetic(n_users=20, samples_per_user=10, seed=1)
    >>> len(ds), ds.n_users, ds.schema.names[:4]
    (200, 20, ('user_id', 'age', 'gender', 'region'))
    >>> bool((make_synthetic(n_users=20, samples_per_user=10, seed=1).x == ds.x).all())
    True
    """
    return make_synthetic_with_latents(
        n_users=n_users,
        samples_per_user=samples_per_user,
        n_items=n_items,
        n_groups=n_groups,
        n_categories=n_categories,
        n_regions=n_regions,
        n_tags=n_tags,
        drift=drift,
        drift_at=drift_at,
        intercept=intercept,
        user_bias_scale=user_bias_scale,
        item_bias_scale=item_bias_scale,
        preference_scale=preference_scale,
        user_noise=user_noise,
        popularity_exponent=popularity_exponent,
        span_days=span_days,
        exposure=exposure,
        seed=seed,
    ).dataset
