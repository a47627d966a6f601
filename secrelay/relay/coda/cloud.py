"""CoDA, cloud side: the deduplicated sample store, its serving, and a round's server.

Paper: Gu et al., "On-Device Learning with Cloud-Coordinated Data Augmentation for
Extreme Model Personalization in Recommender Systems", arXiv:2201.10382 (2022).

Storage (the paper's system design):

- every cloud sample has a unique **sample ID**; the **sample mapping**
  (ID → sample) holds each sample once, however many devices it is matched to
  (deduplication);
- the **batch mapping** (device → batch IDs → sample IDs) cuts each device's
  matched samples into batches of ``batch_size`` (25); a trailing remainder is
  merged into the previous batch while that stays ≤ ``max_batch_size`` (40), so
  no small fragment batch is sent;
- a device fetches at most ``max_batches_per_day`` (12) batches a day, each a
  payload of :mod:`secrelay.relay.coda.payload`.

:class:`CoDACloud` is the server's part of a round: the pool's user vectors, the
KNN index (:mod:`secrelay.relay.coda.matching`) and the store, answering each
device's match request with its batches for every simulated day.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError, MessageError
from secrelay.data.dataset import CTRDataset
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.relay.coda.matching import KNNMatcher, VectorMode, user_vectors
from secrelay.relay.coda.payload import BATCH_TOPIC, MATCH_TOPIC, SampleBatch, encode_payload
from secrelay.relay.coda.privatize import SamplePrivatizer

__all__ = [
    "CloudSampleStore",
    "CoDACloud",
    "DailyQuota",
    "batch_replies",
    "make_batches",
    "match_reply",
]


def make_batches(
    sample_ids: np.ndarray, *, batch_size: int = 25, max_batch_size: int = 40
) -> list[np.ndarray]:
    """Cut sample IDs into batches of ``batch_size``; a trailing remainder joins the
    previous batch when the result stays ≤ ``max_batch_size`` (no fragments).

    Examples
    --------
    >>> [len(b) for b in make_batches(np.arange(60))]
    [25, 35]
    >>> [len(b) for b in make_batches(np.arange(70))]
    [25, 25, 20]
    """
    if batch_size < 1 or max_batch_size < batch_size:
        raise InvalidParameterError(
            f"need 1 <= batch_size <= max_batch_size; got {batch_size} and {max_batch_size}"
        )
    ids = np.asarray(sample_ids, dtype=np.int64)
    batches = [ids[i : i + batch_size] for i in range(0, ids.size, batch_size)]
    if (
        len(batches) >= 2
        and batches[-1].size < batch_size
        and batches[-2].size + batches[-1].size <= max_batch_size
    ):
        batches[-2] = np.concatenate([batches[-2], batches[-1]])
        batches.pop()
    return batches


@dataclass
class DailyQuota:
    """At most ``per_day`` batch fetches per device per day (the cloud enforces it)."""

    per_day: int = 12
    used: dict[tuple[int, int], int] = field(default_factory=dict)

    def take(self, device: int, day: int, n: int) -> int:
        """Grant up to ``n`` fetches for ``device`` on ``day``; returns how many."""
        have = self.used.get((device, day), 0)
        grant = max(0, min(n, self.per_day - have))
        self.used[(device, day)] = have + grant
        return grant


class CloudSampleStore:
    """The cloud's deduplicated sample mapping, batch mapping and serving.

    Parameters
    ----------
    pool:
        The cloud's pre-regulation samples; row ``i`` gets sample ID ``i``.
    strip_fields:
        Feature fields zeroed before any sample is released (the identifying
        user-id field by default; DESIGN.md "CoDA samples sent down").
    batch_size, max_batch_size, max_batches_per_day:
        25, 40 and 12 in the paper.
    privatizer, generator:
        Privatized release (:mod:`secrelay.relay.coda.privatize`): each sample's user
        fields are randomized once, at its first release; the IDs a device receives
        are handles drawn for it, not pool rows; a device's matched samples are
        shuffled before batching. ``generator`` draws all of it. Newly released
        samples per pool user accumulate in :attr:`pending_releases`.
    """

    def __init__(
        self,
        pool: CTRDataset,
        *,
        strip_fields: Sequence[str] | None = None,
        batch_size: int = 25,
        max_batch_size: int = 40,
        max_batches_per_day: int = 12,
        privatizer: SamplePrivatizer | None = None,
        generator: RandomGenerator | None = None,
    ) -> None:
        if privatizer is not None and generator is None:
            raise InvalidParameterError("a privatized sample store needs a `generator`")
        self.schema = pool.schema
        strip = (pool.schema.user_id_field,) if strip_fields is None else tuple(strip_fields)
        x = np.array(pool.x)
        for name in strip:
            x[:, pool.schema.column_slice(name)] = 0
        self._x = x
        self._y = np.asarray(pool.y)
        self._rows_of_user = {u: rows for u, rows in pool.by_user().items()}
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self.quota = DailyQuota(max_batches_per_day)
        # sample mapping (ID -> row); a sample enters it once, when first matched.
        self.sample_mapping: dict[int, int] = {}
        # batch mapping: device -> batch IDs; batch ID -> sample IDs.
        self.device_batches: dict[int, list[int]] = {}
        self.batch_samples: dict[int, np.ndarray] = {}
        self._served: dict[int, int] = {}
        self.privatizer = privatizer
        self._gen = generator
        self._pool_user = np.asarray(pool.user)
        self._released: dict[int, np.ndarray] = {}
        self._next_handle = 0
        self.pending_releases: dict[int, int] = {}

    def matched_sample_ids(self, matched_users: np.ndarray) -> np.ndarray:
        """Sample IDs of the matched pool users (nearest user first, each ID once)."""
        parts = [self._rows_of_user.get(int(u), np.zeros(0, np.int64)) for u in matched_users]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    def assign(self, device: int, matched_users: np.ndarray) -> list[int]:
        """Build ``device``'s batches from its matched users; returns the batch IDs."""
        ids = self.matched_sample_ids(matched_users)
        if self.privatizer is not None and ids.size:
            assert self._gen is not None
            ids = ids[np.argsort(np.asarray(self._gen.random(size=ids.size)), kind="stable")]
        for i in ids.tolist():
            self.sample_mapping.setdefault(int(i), int(i))
        batch_ids = []
        for b in make_batches(ids, batch_size=self.batch_size, max_batch_size=self.max_batch_size):
            bid = len(self.batch_samples)
            self.batch_samples[bid] = b
            batch_ids.append(bid)
        self.device_batches[device] = batch_ids
        self._served[device] = 0
        return batch_ids

    def payload(self, batch_id: int) -> bytes:
        ids = self.batch_samples[batch_id]
        rows = np.array([self.sample_mapping[int(i)] for i in ids], dtype=np.int64)
        if self.privatizer is None:
            return encode_payload(SampleBatch(ids, self._x[rows], self._y[rows]))
        return encode_payload(self._private_batch(rows))

    def _private_batch(self, rows: np.ndarray) -> SampleBatch:
        """Randomize never-released rows (once), send the released copies under fresh
        handles."""
        assert self.privatizer is not None and self._gen is not None
        new = [int(r) for r in rows if int(r) not in self._released]
        if new:
            fresh = self.privatizer.randomize(self._x[new], self._gen)
            for r, row in zip(new, fresh):
                self._released[r] = row
                u = int(self._pool_user[r])
                self.pending_releases[u] = self.pending_releases.get(u, 0) + 1
        x = np.stack([self._released[int(r)] for r in rows]) if rows.size else self._x[rows]
        handles = np.arange(self._next_handle, self._next_handle + rows.size, dtype=np.int64)
        self._next_handle += rows.size
        return SampleBatch(handles, x, self._y[rows])

    def drain_releases(self) -> dict[int, int]:
        """Newly released samples per pool user since the last call."""
        out, self.pending_releases = self.pending_releases, {}
        return out

    def fetch(
        self, device: int, day: int, *, max_batches: int | None = None
    ) -> list[tuple[int, bytes]]:
        """The device's next unserved batches, within its daily quota."""
        if device not in self.device_batches:
            raise MessageError(
                f"device {device} has no matched batches; send a match request first"
            )
        pending = self.device_batches[device][self._served[device] :]
        want = len(pending) if max_batches is None else min(len(pending), max_batches)
        grant = self.quota.take(device, day, want)
        out = [(b, self.payload(b)) for b in pending[:grant]]
        self._served[device] += grant
        return out

    def stats(self) -> dict[str, int]:
        """Sizes of the mappings (deduplication: sample mapping ≤ Σ batch sizes)."""
        return {
            "samples_stored": len(self.sample_mapping),
            "sample_references": int(sum(b.size for b in self.batch_samples.values())),
            "batches": len(self.batch_samples),
            "devices": len(self.device_batches),
        }


def match_reply(
    request: QueryMessage, store: CloudSampleStore, matcher: KNNMatcher, *, k: int, day: int
) -> list[ReplyMessage]:
    """Cloud: match the requester, assign its batches, send today's payloads.

    Raises
    ------
    MessageError
        Wrong topic, direction or vector shape (the store is left unchanged).
    """
    if request.topic != MATCH_TOPIC or request.receiver != SERVER:
        raise MessageError(
            f"expected a {MATCH_TOPIC!r} request to the server; got {request.topic!r}"
        )
    vec = request.arrays.get("user_vector")
    if vec is None or vec.shape != (matcher.dim,) or not np.all(np.isfinite(vec)):
        raise MessageError(
            f"{MATCH_TOPIC!r} needs a finite `user_vector` of shape ({matcher.dim},); got "
            f"{None if vec is None else vec.shape}"
        )
    users = matcher.match(vec[None, :], k=k)[0]
    store.assign(request.sender, users)
    return batch_replies(store, request.sender, round=request.round, day=day)


def batch_replies(
    store: CloudSampleStore, device: int, *, round: int, day: int
) -> list[ReplyMessage]:
    """The device's next batches within its quota for ``day``, one reply each."""
    return [
        ReplyMessage(
            sender=SERVER,
            receiver=device,
            round=round,
            topic=BATCH_TOPIC,
            arrays={"batch_id": np.array([bid], dtype=np.int64)},
            blob=blob,
        )
        for bid, blob in store.fetch(device, day)
    ]


@dataclass(eq=False)
class CoDACloud:
    """The server's part of a CoDA round: the pool's KNN index and sample store.

    Build it with :meth:`build`; :meth:`serve` answers one device's match request.
    ``index_seconds`` and ``match_seconds`` time the index build and the matching.
    """

    matcher: KNNMatcher
    store: CloudSampleStore
    k: int
    index_seconds: float = 0.0
    match_seconds: float = 0.0
    pool_vectors: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        pool: CTRDataset,
        feature: str,
        *,
        k: int,
        mode: VectorMode = "onehot",
        embedding: np.ndarray | None = None,
        batch_size: int = 25,
        max_batch_size: int = 40,
        max_batches_per_day: int = 12,
        privatizer: SamplePrivatizer | None = None,
        generator: RandomGenerator | None = None,
    ) -> CoDACloud:
        """Vectors of the pool users (``pool``, the pre-regulation data), their KNN
        index and the sample store that serves their samples."""
        pool_users, pool_vecs = user_vectors(pool, feature, mode=mode, embedding=embedding)
        t = time.perf_counter()
        matcher = KNNMatcher(pool_users, pool_vecs)
        store = CloudSampleStore(
            pool,
            batch_size=batch_size,
            max_batch_size=max_batch_size,
            max_batches_per_day=max_batches_per_day,
            privatizer=privatizer,
            generator=generator,
        )
        return cls(matcher, store, k, index_seconds=time.perf_counter() - t, pool_vectors=pool_vecs)

    def serve(self, request: QueryMessage, *, days: int) -> list[list[ReplyMessage]]:
        """Match the requester (day 0) and send its batches on each of ``days`` days;
        the replies of day ``d`` are element ``d``."""
        t = time.perf_counter()
        first = match_reply(request, self.store, self.matcher, k=self.k, day=0)
        self.match_seconds += time.perf_counter() - t
        later = [
            batch_replies(self.store, request.sender, round=request.round, day=day)
            for day in range(1, days)
        ]
        return [first, *later]

    def serve_users(
        self, device: int, round: int, users: np.ndarray, *, days: int
    ) -> list[list[ReplyMessage]]:
        """Send ``device`` the samples of ``users`` (matched elsewhere, e.g. by the
        encrypted matching) on each of ``days`` days."""
        self.store.assign(device, np.asarray(users, dtype=np.int64))
        return [batch_replies(self.store, device, round=round, day=day) for day in range(days)]
