"""CoDA's matched samples travel privatized (``method.options.privatize_samples``).

A pool user's pre-regulation samples are sent to the devices that matched them. Before
a sample leaves the cloud:

* its **identifying** user field (the schema's ``user_id_field``) is zeroed — as
  without privatization — and its **sample ID** is replaced by a handle drawn for that
  device (the pool row index would link samples to each other and to the pool user);
* every other **user field** (age, gender, occupation, zip, …) is randomized by
  k-ary randomized response, column by column, each column at ε / (user columns), so
  one released sample costs ε (:attr:`SamplePrivatizer.event`); item and context
  fields and the label are the data being shared and stay as they are;
* the samples of a device's matched users are **shuffled** before they are cut into
  batches, so a batch does not group one pool user's samples.

A sample is randomized once, the first time it is released; later releases to other
devices send the same randomized copy (post-processing: no further cost). Pool user u
whose n_u samples were released has spent n_u·ε on their user fields (the same true
values under every sample): :meth:`SamplePrivatizer.records` writes one ledger record
per pool user and round with exactly that composition.

Unit and adjacency: the ledger unit ``"pool_user"`` (a user of the cloud's pool, not a
device), replace-one of the user's user-field values; the records name the pool user as
their subject, ``pool/<user>``. The accountant composes them per pool user and never
adds different pool users together (:mod:`protocols.dp.ledger`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocols.dp import LedgerRecord
from protocols.dp.events import ComposedEvent, DpEvent, RandomizedResponseEvent, SelfComposedEvent
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError
from secrelay.data.schema import Schema

__all__ = ["SamplePrivatizer", "pool_unit"]


def pool_unit(user: int) -> str:
    """The ledger id of a pool user."""
    return f"pool/{int(user)}"


@dataclass(frozen=True)
class SamplePrivatizer:
    """k-ary randomized response on the non-identifying user fields of a sample.

    Parameters
    ----------
    schema:
        The samples' schema.
    epsilon:
        ε per released sample, in (0, 50]; split evenly over the user-field columns.

    Examples
    --------
    >>> from secrelay.data import Field, Schema
    >>> s = Schema((Field("user_id", "user", 5), Field("age", "user", 4),
    ...             Field("item_id", "item", 9)), user_id_field="user_id")
    >>> p = SamplePrivatizer(s, epsilon=50.0)
    >>> p.randomize(np.array([[3, 2, 7]]), np.random.default_rng(0)).tolist()
    [[0, 2, 7]]
    """

    schema: Schema
    epsilon: float

    def __post_init__(self) -> None:
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 50:
            raise InvalidParameterError(f"`epsilon` must be in (0, 50]; got {e!r}")
        if not self.columns:
            raise InvalidParameterError(
                "the schema has no user field besides the id to randomize; privatization "
                "only drops the id (set epsilon only when there are user fields)"
            )

    @property
    def id_columns(self) -> tuple[int, ...]:
        sl = self.schema.column_slice(self.schema.user_id_field)
        return tuple(range(sl.start, sl.stop))

    @property
    def columns(self) -> tuple[tuple[int, int], ...]:
        """(column, vocabulary size) of every randomized user-field column."""
        out: list[tuple[int, int]] = []
        for f in self.schema.fields_with_role("user"):
            if f.name == self.schema.user_id_field:
                continue
            sl = self.schema.column_slice(f.name)
            out.extend((c, f.vocab_size) for c in range(sl.start, sl.stop))
        return tuple(out)

    @property
    def column_epsilon(self) -> float:
        return float(self.epsilon) / len(self.columns)

    @property
    def event(self) -> DpEvent:
        """The privacy event of releasing one sample."""
        e = self.column_epsilon
        return ComposedEvent(
            RandomizedResponseEvent.from_epsilon(e, num_buckets=k) for _, k in self.columns
        )

    def randomize(self, x: np.ndarray, generator: RandomGenerator) -> np.ndarray:
        """Rows with the id zeroed and each user column randomized: kept with
        probability 1 − p, else replaced by a uniform value of its vocabulary
        (p = k / (e^ε_col − 1 + k), dp_accounting's parameterisation)."""
        out = np.array(x, dtype=np.int64, copy=True)
        if out.ndim != 2 or out.shape[1] != self.schema.n_columns:
            raise InvalidParameterError(
                f"`x` must be (n, {self.schema.n_columns}); got {out.shape}"
            )
        out[:, list(self.id_columns)] = 0
        n = out.shape[0]
        e = self.column_epsilon
        for c, k in self.columns:
            p = k / (math.expm1(e) + k)
            resample = np.asarray(generator.random(size=n)) < p
            draws = np.asarray(generator.integers(0, k, size=n), dtype=np.int64)
            out[:, c] = np.where(resample, draws, out[:, c])
        return out

    def records(
        self, releases: Mapping[int, int], *, run_id: str, round: int
    ) -> list[LedgerRecord]:
        """One record per pool user: ``releases[u]`` samples newly released this round."""
        out = []
        for user, count in sorted(releases.items()):
            if count <= 0:
                continue
            out.append(
                LedgerRecord(
                    run_id=run_id,
                    round=round,
                    mechanism="coda_sample_randomized_response",
                    event=SelfComposedEvent(event=self.event, count=int(count)),
                    unit="pool_user",
                    devices=(pool_unit(user),),
                    delta=0.0,
                    adjacency="replace_one",
                    steps=int(count),
                )
            )
        return out
