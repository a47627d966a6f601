"""CoDA, cloud side: user vectors, KNN matching, the sample store and its payloads.

Paper: Gu et al., "On-Device Learning with Cloud-Coordinated Data Augmentation for
Extreme Model Personalization in Recommender Systems", arXiv:2201.10382 (2022).

CoDA (on-device learning with cloud-coordinated data augmentation; DESIGN.md,
method 3), Algorithm 1: the cloud represents every user of its pre-regulation
pool by the mean of one feature over the user's samples, matches each device
(by the same vector computed on the device) with its K nearest pool users, and
serves the matched users' samples to the device in batches.

Storage (the paper's system design):

- every cloud sample has a unique **sample ID**; the **sample mapping**
  (ID → sample) holds each sample once, however many devices it is matched to
  (deduplication);
- the **batch mapping** (device → batch IDs → sample IDs) cuts each device's
  matched samples into batches of ``batch_size`` (25); a trailing remainder is
  merged into the previous batch while that stays ≤ ``max_batch_size`` (40), so
  no small fragment batch is sent;
- a device fetches at most ``max_batches_per_day`` (12) batches a day;
- a batch travels as a zlib-compressed, base64-encoded payload in a
  :class:`~secrelay.federated.messages.ReplyMessage` blob; the device's request
  (its user vector) is a :class:`~secrelay.federated.messages.QueryMessage`, so
  the CKKS layer can encrypt it later without changing the flow.

KNN uses scikit-learn's exact :class:`~sklearn.neighbors.NearestNeighbors`
rather than Faiss (the paper's choice): the vectors are low-dimensional (a
feature's vocabulary or one embedding, ~5–50 dims) where a KD/ball tree answers
exact queries on 100k users in seconds (measured in docs/results.md ("CoDA and MetaUA")),
exactness keeps the plaintext reference for the encrypted scoring simple, and
Faiss would add a large native dependency the project does not ship.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.neighbors import NearestNeighbors

from protocols.errors import DataFormatError, InvalidParameterError, MessageError
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Schema
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage

__all__ = [
    "BATCH_TOPIC",
    "MATCH_TOPIC",
    "PAYLOAD_MAGIC",
    "CloudSampleStore",
    "DailyQuota",
    "KNNMatcher",
    "SampleBatch",
    "VectorMode",
    "decode_payload",
    "default_user_feature",
    "encode_payload",
    "field_embedding_table",
    "make_batches",
    "match_reply",
    "match_request",
    "user_vectors",
]

MATCH_TOPIC = "coda/match"
BATCH_TOPIC = "coda/batch"
PAYLOAD_MAGIC = b"CODA1"

VectorMode = Literal["onehot", "embedding"]


# --- user vectors --------------------------------------------------------------------------


def default_user_feature(schema: Schema) -> str:
    """The feature the user vector averages when none is configured: the first
    multi-valued item field (genres, tags), else the item field with the smallest
    vocabulary (a category)."""
    items = schema.fields_with_role("item")
    if not items:
        raise InvalidParameterError("the schema has no item field to build user vectors from")
    multi = [f for f in items if f.max_len > 1]
    if multi:
        return multi[0].name
    return min(items, key=lambda f: f.vocab_size).name


def _row_onehot(ds: CTRDataset, feature: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(row, value, weight) triples of the per-row mean one-hot of ``feature``."""
    f = ds.schema[feature]
    col = np.asarray(ds.column(feature)).reshape(len(ds), -1)
    rows = np.repeat(np.arange(len(ds)), col.shape[1])
    vals = col.ravel()
    keep = vals != 0
    rows, vals = rows[keep], vals[keep]
    per_row = np.bincount(rows, minlength=len(ds)).astype(np.float64)
    weight = 1.0 / per_row[rows]
    return rows, vals, weight, f.vocab_size


def user_vectors(
    ds: CTRDataset,
    feature: str,
    *,
    mode: VectorMode = "onehot",
    embedding: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's mean of ``feature`` over their samples (CoDA Algorithm 1, line 1).

    Parameters
    ----------
    ds:
        Samples of one or many users (grouped by :attr:`CTRDataset.user`).
    feature:
        A field of the schema; multi-valued fields count each value of a row with
        weight 1/(values in the row).
    mode:
        ``"onehot"``: the mean one-hot (a distribution over the feature's values,
        index 0 = padding dropped); ``"embedding"``: the mean of the feature's
        embedding rows ``embedding`` (shape ``(vocab_size, dim)``, e.g. from the
        cloud model: :func:`field_embedding_table`).

    Returns
    -------
    (users, vectors)
        Sorted user identities and a float32 array ``(n_users, dim)``. Rows with
        no value of the feature contribute nothing; a user with none gets zeros.
    """
    if mode not in ("onehot", "embedding"):
        raise InvalidParameterError(f"`mode` must be 'onehot' or 'embedding'; got {mode!r}")
    users, inverse = np.unique(ds.user, return_inverse=True)
    rows, vals, weight, vocab = _row_onehot(ds, feature)
    n_rows_user = np.bincount(inverse, minlength=users.size).astype(np.float64)
    flat = inverse[rows] * vocab + vals
    counts = np.bincount(flat, weights=weight, minlength=users.size * vocab).reshape(
        users.size, vocab
    )
    onehot = counts / np.maximum(n_rows_user, 1.0)[:, None]
    if mode == "onehot":
        return users, onehot[:, 1:].astype(np.float32)
    if embedding is None or embedding.shape[0] != vocab:
        raise InvalidParameterError(
            f"mode='embedding' needs an `embedding` table with {vocab} rows for {feature!r}; "
            f"got {None if embedding is None else embedding.shape}"
        )
    emb = np.asarray(embedding, dtype=np.float64).copy()
    emb[0] = 0.0
    return users, (onehot @ emb).astype(np.float32)


def field_embedding_table(model_embedding: np.ndarray, schema: Schema, feature: str) -> np.ndarray:
    """The rows of a model's shared embedding table that belong to ``feature``."""
    start = schema.vocab_offsets()[schema.index(feature)]
    return np.asarray(model_embedding[start : start + schema[feature].vocab_size])


# --- matching --------------------------------------------------------------------------------


class KNNMatcher:
    """Exact K-nearest-neighbour matching of device vectors to the cloud's user pool.

    Parameters
    ----------
    pool_users:
        Identities of the pool users (the cloud's pre-regulation users).
    pool_vectors:
        Their vectors, shape ``(n_pool, dim)``.
    algorithm:
        scikit-learn's search structure (``"auto"`` picks a KD/ball tree for
        low-dimensional data, brute force otherwise).

    Examples
    --------
    >>> m = KNNMatcher(np.array([10, 11, 12]), np.array([[0.0], [1.0], [5.0]]))
    >>> m.match(np.array([[0.9]]), k=2)[0].tolist()
    [11, 10]
    """

    def __init__(
        self,
        pool_users: np.ndarray,
        pool_vectors: np.ndarray,
        *,
        algorithm: Literal["auto", "ball_tree", "kd_tree", "brute"] = "auto",
    ) -> None:
        vecs = np.asarray(pool_vectors, dtype=np.float32)
        users = np.asarray(pool_users, dtype=np.int64)
        if vecs.ndim != 2 or users.shape != (vecs.shape[0],) or vecs.shape[0] == 0:
            raise InvalidParameterError(
                f"pool needs users (n,) and vectors (n, dim) with n >= 1; got {users.shape} "
                f"and {vecs.shape}"
            )
        self.pool_users = users
        self.dim = vecs.shape[1]
        self._nn = NearestNeighbors(algorithm=algorithm).fit(vecs)

    def match(self, vectors: np.ndarray, *, k: int) -> np.ndarray:
        """The ``k`` nearest pool users of each row of ``vectors`` (nearest first).

        ``k`` is capped at the pool size. Returns user identities ``(n, k)``.
        """
        if not isinstance(k, int) or k < 1:
            raise InvalidParameterError(f"`k` must be an int >= 1; got {k!r}")
        q = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, self.pool_users.size)
        _, idx = self._nn.kneighbors(q, n_neighbors=k)
        out: np.ndarray = self.pool_users[idx]
        return out


# --- batches and the sample store ------------------------------------------------------------


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


@dataclass(frozen=True, eq=False)
class SampleBatch:
    """A decoded batch: sample IDs, features and labels."""

    sample_ids: np.ndarray
    x: np.ndarray
    y: np.ndarray


def encode_payload(batch: SampleBatch) -> bytes:
    """zlib + base64 encoding of a batch (magic, JSON header, raw arrays).

    IDs travel as int64, features as int32, labels as uint8.
    """
    ids = np.ascontiguousarray(batch.sample_ids, dtype="<i8")
    x = np.ascontiguousarray(batch.x, dtype="<i4")
    y = np.ascontiguousarray(batch.y, dtype=np.uint8)
    if x.ndim != 2 or ids.shape != (x.shape[0],) or y.shape != (x.shape[0],):
        raise InvalidParameterError(
            f"batch arrays disagree: ids {ids.shape}, x {x.shape}, y {y.shape}"
        )
    header = json.dumps({"n": int(x.shape[0]), "cols": int(x.shape[1])}).encode()
    raw = (
        PAYLOAD_MAGIC
        + len(header).to_bytes(4, "little")
        + header
        + ids.tobytes()
        + x.tobytes()
        + y.tobytes()
    )
    return base64.b64encode(zlib.compress(raw, 9))


def decode_payload(payload: bytes, *, n_columns: int | None = None) -> SampleBatch:
    """Inverse of :func:`encode_payload`.

    Raises
    ------
    DataFormatError
        Not base64, not a zlib stream (or truncated / bit-flipped: zlib's checksum
        fails), wrong magic, a malformed header, or a body whose length does not
        match the header; also when ``n_columns`` is given and differs.
    """
    try:
        compressed = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataFormatError(f"CoDA payload is not valid base64: {e}") from None
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as e:
        raise DataFormatError(f"CoDA payload is not a valid zlib stream: {e}") from None
    if not raw.startswith(PAYLOAD_MAGIC) or len(raw) < len(PAYLOAD_MAGIC) + 4:
        raise DataFormatError("CoDA payload has the wrong magic bytes (not a CoDA batch)")
    pos = len(PAYLOAD_MAGIC)
    hlen = int.from_bytes(raw[pos : pos + 4], "little")
    pos += 4
    try:
        header = json.loads(raw[pos : pos + hlen].decode())
        n, cols = int(header["n"]), int(header["cols"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataFormatError("CoDA payload header is malformed") from None
    pos += hlen
    if n < 0 or cols < 1 or len(raw) - pos != n * 8 + n * cols * 4 + n:
        raise DataFormatError(
            f"CoDA payload body has {len(raw) - pos} bytes; the header announces {n} rows "
            f"of {cols} columns"
        )
    if n_columns is not None and cols != n_columns:
        raise DataFormatError(f"CoDA payload has {cols} feature columns; expected {n_columns}")
    ids = np.frombuffer(raw, dtype="<i8", count=n, offset=pos).astype(np.int64)
    pos += n * 8
    x = (
        np.frombuffer(raw, dtype="<i4", count=n * cols, offset=pos)
        .reshape(n, cols)
        .astype(np.int64)
    )
    pos += n * cols * 4
    y = np.frombuffer(raw, dtype=np.uint8, count=n, offset=pos).astype(np.float32)
    if n and not np.isin(y, (0.0, 1.0)).all():
        raise DataFormatError("CoDA payload labels must be 0 or 1")
    return SampleBatch(ids, x, y)


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
    """

    def __init__(
        self,
        pool: CTRDataset,
        *,
        strip_fields: Sequence[str] | None = None,
        batch_size: int = 25,
        max_batch_size: int = 40,
        max_batches_per_day: int = 12,
    ) -> None:
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

    def matched_sample_ids(self, matched_users: np.ndarray) -> np.ndarray:
        """Sample IDs of the matched pool users (nearest user first, each ID once)."""
        parts = [self._rows_of_user.get(int(u), np.zeros(0, np.int64)) for u in matched_users]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    def assign(self, device: int, matched_users: np.ndarray) -> list[int]:
        """Build ``device``'s batches from its matched users; returns the batch IDs."""
        ids = self.matched_sample_ids(matched_users)
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
        return encode_payload(SampleBatch(ids, self._x[rows], self._y[rows]))

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


# --- the messages ---------------------------------------------------------------------------


def match_request(device: int, round: int, vector: np.ndarray) -> QueryMessage:
    """Device → cloud: the user vector (the CKKS layer encrypts it into ``blob``)."""
    return QueryMessage(
        sender=device,
        receiver=SERVER,
        round=round,
        topic=MATCH_TOPIC,
        arrays={"user_vector": np.asarray(vector, dtype=np.float32)},
    )


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
    return [
        ReplyMessage(
            sender=SERVER,
            receiver=request.sender,
            round=request.round,
            topic=BATCH_TOPIC,
            arrays={"batch_id": np.array([bid], dtype=np.int64)},
            blob=blob,
        )
        for bid, blob in store.fetch(request.sender, day)
    ]
