"""CoDA Algorithm 1 on the cloud: user vectors and K-nearest-neighbour matching.

Paper: Gu et al., "On-Device Learning with Cloud-Coordinated Data Augmentation for
Extreme Model Personalization in Recommender Systems", arXiv:2201.10382 (2022).

The cloud represents every user of its pre-regulation pool by the mean of one
feature over the user's samples and matches each device (by the same vector,
computed on the device from its own samples) with its K nearest pool users.

KNN uses scikit-learn's exact :class:`~sklearn.neighbors.NearestNeighbors`
rather than Faiss (the paper's choice): the vectors are low-dimensional (a
feature's vocabulary or one embedding, ~5–50 dims) where a KD/ball tree answers
exact queries on 100k users in seconds (measured in docs/results.md ("CoDA and MetaUA")),
exactness keeps the plaintext reference for the encrypted scoring simple, and
Faiss would add a large native dependency the project does not ship.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.neighbors import NearestNeighbors

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Schema

__all__ = [
    "KNNMatcher",
    "VectorMode",
    "default_user_feature",
    "field_embedding_table",
    "user_vectors",
]

VectorMode = Literal["onehot", "embedding"]


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
