"""A synthetic device population whose devices are generated one at a time.

:func:`~secrelay.data.synthetic.make_synthetic` draws the whole data set in one pass
(every user's rows depend on one generator), so the process that wants any device's
rows must build all of them. :class:`SyntheticPopulation` draws each device's rows
from its own stream, ``SeedSequence([seed, device])``, so a worker materializes a
device's rows when its task runs, and a server can describe a population of 10⁵
devices in a few bytes (``docs/federated.md``, "Server memory").

The model is the synthetic generator's (users in latent preference groups, items in
latent categories, per-user CTR offsets, popularity-skewed items), with the
population-independent parts (item latents, group preferences) drawn from
``SeedSequence([seed])``. The user-id feature is hashed into ``user_buckets``
values, so the CTR model's size does not grow with the population either. The
data differ from :func:`make_synthetic`'s for the same seed; use it for scale, not
for the documented utility results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Field, Schema

__all__ = ["SyntheticPopulation", "population_from_options"]

_N_AGE = 7
_N_DAYPART = 4
_DAY = 86_400
_T0 = 1_700_000_000


@dataclass(frozen=True)
class _Shared:
    item_category: np.ndarray
    item_bias: np.ndarray
    item_weights: np.ndarray
    preference: np.ndarray  # (groups, categories)


@dataclass(frozen=True)
class SyntheticPopulation:
    """``n_devices`` devices (ids ``1..n_devices``), each generated on demand.

    Parameters
    ----------
    n_devices:
        Population size (>= 1).
    samples_per_device:
        Rows per device (>= 2); the last ``test_fraction`` of them by time are its
        test split.
    n_items, n_categories, n_groups:
        Item vocabulary, latent item categories and latent user groups (each >= 1).
    user_buckets:
        Values of the hashed user-id feature (>= 1).
    test_fraction:
        Fraction of each device's rows held out for its test split, in (0, 1).
    seed:
        Root of every stream (>= 0).

    Examples
    --------
    >>> pop = SyntheticPopulation(n_devices=100_000, samples_per_device=20, seed=1)
    >>> train, test = pop.device(77_777)
    >>> len(train), len(test), int(train.user[0])
    (16, 4, 77777)
    """

    n_devices: int
    samples_per_device: int = 40
    n_items: int = 500
    n_categories: int = 8
    n_groups: int = 4
    user_buckets: int = 1000
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name, low in (
            ("n_devices", 1),
            ("samples_per_device", 2),
            ("n_items", 1),
            ("n_categories", 1),
            ("n_groups", 1),
            ("user_buckets", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"`{name}` must be an int >= {low}; got {value!r}")
        if not 0.0 < float(self.test_fraction) < 1.0:
            problems.append(f"`test_fraction` must be in (0, 1); got {self.test_fraction!r}")
        if problems:
            raise InvalidParameterError("; ".join(problems))

    @property
    def device_ids(self) -> range:
        return range(1, self.n_devices + 1)

    @property
    def schema(self) -> Schema:
        return Schema(
            (
                Field("user_id", "user", self.user_buckets + 1),
                Field("age", "user", _N_AGE + 1),
                Field("item_id", "item", self.n_items + 1),
                Field("category", "item", self.n_categories + 1),
                Field("daypart", "context", _N_DAYPART + 1),
            ),
            user_id_field="user_id",
            label="click",
            timestamp="timestamp",
            item_id_field="item_id",
        )

    def device(self, device_id: int) -> tuple[CTRDataset, CTRDataset]:
        """Device ``device_id``'s (train, test) rows, drawn from its own stream."""
        u = int(device_id)
        if not 1 <= u <= self.n_devices:
            raise InvalidParameterError(f"`device_id` must be in [1, {self.n_devices}]; got {u}")
        shared = _shared(self)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, u]))
        n = self.samples_per_device
        group = int(rng.integers(self.n_groups))
        bias = rng.normal(0.0, 1.0)
        deviation = rng.normal(0.0, 0.5, size=self.n_categories)
        age = int(rng.integers(_N_AGE))
        items = rng.choice(self.n_items, size=n, p=shared.item_weights)
        times = np.sort(_T0 + rng.integers(0, 180 * _DAY, size=n))
        daypart = (times % _DAY) * _N_DAYPART // _DAY
        cat = shared.item_category[items]
        logit = (
            -0.3 + bias + shared.item_bias[items] + shared.preference[group, cat] + deviation[cat]
        )
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        x = np.column_stack(
            [
                np.full(n, u % self.user_buckets + 1),
                np.full(n, age + 1),
                items + 1,
                cat + 1,
                daypart + 1,
            ]
        ).astype(np.int64)
        user = np.full(n, u, dtype=np.int64)
        cut = n - max(1, round(n * self.test_fraction))
        schema = self.schema
        train = CTRDataset(schema, x[:cut], y[:cut], user[:cut], times[:cut])
        test = CTRDataset(schema, x[cut:], y[cut:], user[cut:], times[cut:])
        return train, test

    def rows(self, device_ids: range | list[int]) -> CTRDataset:
        """Every row (train and test) of ``device_ids``, in one data set: for a small
        population, or a small set of its devices (a cloud's users)."""
        parts = [part for d in device_ids for part in self.device(d)]
        if not parts:
            raise InvalidParameterError("`device_ids` must name at least one device")
        return CTRDataset.concat(parts)

    def with_devices(self, n_devices: int) -> SyntheticPopulation:
        """The same model with ``n_devices`` devices: device ``u``'s rows do not depend
        on the population size, so ids above ``self.n_devices`` are new users drawn
        from the same model (e.g. a cloud's pre-regulation users)."""
        return replace(self, n_devices=n_devices)


@lru_cache(maxsize=4)
def _shared(pop: SyntheticPopulation) -> _Shared:
    """The population-independent latents (O(items)); cached per process. They depend
    on the seed and the item/category/group counts, never on ``n_devices``."""
    rng = np.random.default_rng(np.random.SeedSequence([pop.seed]))
    weights = 1.0 / np.arange(1, pop.n_items + 1) ** 0.8
    weights = weights[rng.permutation(pop.n_items)]
    return _Shared(
        item_category=rng.integers(0, pop.n_categories, size=pop.n_items),
        item_bias=rng.normal(0.0, 0.5, size=pop.n_items),
        item_weights=weights / weights.sum(),
        preference=rng.normal(0.0, 1.0, size=(pop.n_groups, pop.n_categories)),
    )


def population_from_options(options: Mapping[str, Any]) -> tuple[SyntheticPopulation, int]:
    """``(population, cloud_devices)`` from ``[data] options`` of ``name = "population"``:
    :class:`SyntheticPopulation`'s keywords plus ``cloud_devices`` (>= 1, default 100),
    the pre-regulation users whose rows form the cloud data set (ids
    ``n_devices + 1 .. n_devices + cloud_devices``, drawn from the same model).

    Raises
    ------
    InvalidParameterError
        Naming every unknown or invalid option.
    """
    opts = dict(options)
    cloud = opts.pop("cloud_devices", 100)
    known = set(SyntheticPopulation.__dataclass_fields__)
    unknown = sorted(set(opts) - known)
    problems = []
    if unknown:
        problems.append(
            f"unknown option(s) {unknown} for data set 'population'; valid: "
            f"{sorted(known | {'cloud_devices'})}"
        )
    if "n_devices" not in opts:
        problems.append("data set 'population' needs the option `n_devices`")
    if isinstance(cloud, bool) or not isinstance(cloud, int) or cloud < 1:
        problems.append(f"`cloud_devices` must be an int >= 1; got {cloud!r}")
    if problems:
        raise InvalidParameterError("; ".join(problems))
    return SyntheticPopulation(**opts), int(cloud)
