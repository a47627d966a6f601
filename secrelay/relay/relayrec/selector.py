"""RelayRec's automated model selector (Algorithm 2 of Deng et al., IPSN 2023).

The cloud

1. embeds every item it knows with the server model's item-field embeddings and
   k-means them into C categories with centroids e_c (:func:`fit_item_space`);
2. represents a user by the preference vector
   p_u = (1/I_u) Σ_c λ_c e_c, where λ_c counts the user's interacted items whose
   nearest centroid is e_c and I_u = Σ_c λ_c (:func:`preference_vector`);
3. trains an MLP s(p_u) → k_u with cross-entropy on the cloud users'
   (p_u, cluster id) pairs (:func:`train_selector`).

A device computes its own p_u from its local data with the published
:class:`ItemSpace` (item-field embedding rows and centroids only: the server's
user-field embeddings are zeroed before publication) and obtains k_u either by
running the selector locally or by sending p_u in a
:class:`~secrelay.federated.messages.QueryMessage` (the flow the CKKS layer
encrypts). The selector is stored as plain numpy arrays (:class:`SelectorWeights`)
so both sides evaluate it with :func:`selector_logits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.data.schema import Schema
from secrelay.models.base import CTRModel, FieldEmbedding

__all__ = [
    "ItemSpace",
    "SelectorArrays",
    "SelectorWeights",
    "fit_item_space",
    "preference_vector",
    "selector_inputs",
    "selector_logits",
    "train_selector",
]


def _item_vocab_mask(schema: Schema) -> np.ndarray:
    """Boolean mask over the rows of the shared embedding table that belong to
    item fields."""
    mask = np.zeros(schema.total_vocab, dtype=bool)
    offsets = schema.vocab_offsets()
    for i, f in enumerate(schema.fields):
        if f.role == "item":
            mask[offsets[i] : offsets[i] + f.vocab_size] = True
    return mask


@dataclass(frozen=True, eq=False)
class ItemSpace:
    """What a device needs to compute its preference vector, and nothing more.

    Attributes
    ----------
    schema:
        Field layout (public).
    table:
        The server model's embedding table ``(total_vocab, dim)`` with every row
        that is not an item field's set to zero.
    centroids:
        The C item-category centroids e_c, ``(C, n_item_fields · dim)``.
    """

    schema: Schema
    table: np.ndarray
    centroids: np.ndarray

    def __post_init__(self) -> None:
        if self.table.ndim != 2 or self.table.shape[0] != self.schema.total_vocab:
            raise InvalidParameterError(
                f"`table` must have shape ({self.schema.total_vocab}, dim); got {self.table.shape}"
            )
        if self.centroids.ndim != 2 or self.centroids.shape[0] < 1:
            raise InvalidParameterError(
                f"`centroids` must be a non-empty (C, d) array; got {self.centroids.shape}"
            )

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """The payload of the published message."""
        return {"item_table": self.table, "centroids": self.centroids}

    @classmethod
    def from_arrays(cls, schema: Schema, arrays: Mapping[str, np.ndarray]) -> ItemSpace:
        return cls(schema, np.asarray(arrays["item_table"]), np.asarray(arrays["centroids"]))

    def item_embeddings(self, data: CTRDataset) -> np.ndarray:
        """Item-field embeddings of every row, ``(n, n_item_fields · dim)``."""
        emb = FieldEmbedding(self.schema, self.dim)
        with torch.no_grad():
            emb.embedding.weight.copy_(torch.from_numpy(np.asarray(self.table, dtype=np.float32)))
            x = torch.from_numpy(np.array(data.x))
            out = emb.role_embeddings(x, "item").flatten(1)
        return out.double().numpy()

    def preference(self, data: CTRDataset) -> np.ndarray:
        """p_u of the user whose interactions are ``data`` (all of its rows)."""
        return preference_vector(self.item_embeddings(data), self.centroids)


def preference_vector(item_embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """p_u = (1/I_u) Σ_c λ_c e_c (RelayRec Eq. 4).

    Parameters
    ----------
    item_embeddings:
        ``(I_u, d)``: one row per interaction of the user.
    centroids:
        ``(C, d)``: the item-category centroids e_c.

    Returns
    -------
    numpy.ndarray
        ``(d,)``; zeros when the user has no interaction.

    Examples
    --------
    >>> c = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> preference_vector(np.array([[0.9, 0.1], [0.8, 0.0], [0.1, 0.7]]), c).tolist()
    [0.6666666666666666, 0.3333333333333333]
    """
    e = np.asarray(item_embeddings, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    if e.ndim != 2 or c.ndim != 2 or e.shape[1] != c.shape[1]:
        raise InvalidParameterError(
            f"item embeddings {e.shape} and centroids {c.shape} must be (n, d) and (C, d)"
        )
    if e.shape[0] == 0:
        return np.zeros(c.shape[1])
    d2 = ((e[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    lam = np.bincount(d2.argmin(axis=1), minlength=c.shape[0]).astype(np.float64)
    out: np.ndarray = lam @ c / e.shape[0]
    return out


def fit_item_space(
    server: CTRModel, cloud: CTRDataset, num_categories: int, *, seed: int
) -> tuple[ItemSpace, np.ndarray]:
    """Cluster the distinct items of the cloud data into C categories.

    An item is a distinct combination of the item-field columns; its embedding is
    the server model's item-field embedding. Returns the :class:`ItemSpace` to
    publish and each distinct item's category (for reporting).
    """
    from sklearn.cluster import KMeans

    if not isinstance(num_categories, int) or num_categories < 1:
        raise InvalidParameterError(f"`num_categories` must be an int >= 1; got {num_categories!r}")
    schema = cloud.schema
    cols = np.concatenate(
        [
            np.arange(schema.column_slice(f.name).start, schema.column_slice(f.name).stop)
            for f in schema.fields
            if f.role == "item"
        ]
    )
    _, first = np.unique(cloud.x[:, cols], axis=0, return_index=True)
    reps = cloud.subset(np.sort(first))
    table = server.embedding.embedding.weight.detach().double().numpy().copy()
    table[~_item_vocab_mask(schema)] = 0.0
    probe = ItemSpace(schema, table, np.zeros((1, 1)))
    emb = probe.item_embeddings(reps)
    if np.unique(np.round(emb, 12), axis=0).shape[0] < num_categories:
        raise InvalidParameterError(
            f"cannot form {num_categories} item categories from {emb.shape[0]} distinct items"
        )
    if num_categories == 1:
        centroids = emb.mean(axis=0, keepdims=True)
        labels = np.zeros(emb.shape[0], dtype=np.int64)
    else:
        km = KMeans(n_clusters=num_categories, n_init=10, random_state=seed)
        labels = km.fit_predict(emb).astype(np.int64)
        centroids = km.cluster_centers_.astype(np.float64)
    return ItemSpace(schema, table, centroids), labels


# --- the selector MLP ------------------------------------------------------------------------


_SELECTOR_ARRAYS = ("mean", "scale", "w1", "b1", "w2", "b2")
_W = TypeVar("_W", bound="SelectorArrays")


@dataclass(frozen=True, eq=False)
class SelectorArrays:
    """A two-layer selector's standardisation (m, s) and weights as numpy arrays;
    the activation is the subclass's (:class:`SelectorWeights`: ReLU; the HE
    selector's ``SquareSelectorWeights``: x²)."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @property
    def num_outputs(self) -> int:
        return int(self.b2.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _SELECTOR_ARRAYS}

    @classmethod
    def from_arrays(cls: type[_W], arrays: Mapping[str, np.ndarray]) -> _W:
        return cls(**{k: np.asarray(arrays[k]) for k in _SELECTOR_ARRAYS})


@dataclass(frozen=True, eq=False)
class SelectorWeights(SelectorArrays):
    """The selector s(p) = W2·relu(W1·(p − m)/s + b1) + b2 as numpy arrays.

    The input standardisation (m, s) is part of the selector, so a device that
    runs it locally and a server that evaluates it on a query agree exactly.
    """


def selector_logits(weights: SelectorWeights, p: np.ndarray) -> np.ndarray:
    """The selector's scores for ``p`` (``(d,)`` → ``(K,)`` or ``(n, d)`` → ``(n, K)``)."""
    z = (np.asarray(p, dtype=np.float64) - weights.mean) / weights.scale
    h = np.maximum(z @ weights.w1 + weights.b1, 0.0)
    out: np.ndarray = h @ weights.w2 + weights.b2
    return out


def selector_inputs(
    prefs: np.ndarray, labels: np.ndarray, num_outputs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked training inputs of a selector: ``(x, y, mean, scale)`` with the
    standardisation (a zero spread counts as 1) that becomes part of the selector."""
    x = np.asarray(prefs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise InvalidParameterError(
            f"`prefs` must be (n, d) and `labels` (n,) with n >= 1; got {x.shape} and {y.shape}"
        )
    if y.min() < 0 or y.max() >= num_outputs:
        raise InvalidParameterError(
            f"`labels` must lie in [0, {num_outputs}); got {y.min()}..{y.max()}"
        )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return x, y, mean, scale


def class_weights(labels: np.ndarray, num_outputs: int) -> np.ndarray:
    """Per-class cross-entropy weights n / (K·n_k) (scikit-learn's "balanced"); 0 for
    a class with no member."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_outputs)
    present = counts > 0
    out = np.zeros(num_outputs, dtype=np.float64)
    out[present] = counts.sum() / (present.sum() * counts[present])
    return out


def train_selector(
    prefs: np.ndarray,
    labels: np.ndarray,
    num_outputs: int,
    *,
    hidden: int = 32,
    epochs: int = 300,
    lr: float = 0.01,
    seed: int = 0,
    balance: bool = False,
) -> tuple[SelectorWeights, float]:
    """Train the selector MLP with cross-entropy (full batch, Adam).

    Parameters
    ----------
    prefs:
        ``(n, d)`` preference vectors of the cloud users.
    labels:
        ``(n,)`` their cluster ids in ``[0, num_outputs)``.
    num_outputs:
        K, the number of initial models.
    balance:
        Weight each cluster's cross-entropy by the inverse of its size
        (:func:`class_weights`), so a large cluster cannot absorb every device.

    Returns
    -------
    (SelectorWeights, float)
        The selector and its training accuracy.
    """
    x, y, mean, scale = selector_inputs(prefs, labels, num_outputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_outputs)
        )
    arrays = fit_selector_net(
        net, (x - mean) / scale, y, num_outputs=num_outputs, epochs=epochs, lr=lr, balance=balance
    )
    weights = SelectorWeights(mean=mean, scale=scale, **arrays)
    acc = float((selector_logits(weights, x).argmax(axis=1) == y).mean())
    return weights, acc


def fit_selector_net(
    net: nn.Sequential,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_outputs: int,
    epochs: int,
    lr: float,
    balance: bool,
) -> dict[str, np.ndarray]:
    """Train a two-layer selector ``net`` (first and last modules linear) on
    standardised inputs ``x`` with cross-entropy (full batch, Adam; cluster-balanced
    with ``balance``) and return its ``w1, b1, w2, b2`` as float64 arrays
    (``x @ w1 + b1``)."""
    xt = torch.from_numpy(x).float()
    yt = torch.from_numpy(y)
    weight = torch.from_numpy(class_weights(y, num_outputs)).float() if balance else None
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(xt), yt, weight=weight)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    l1, l2 = net[0], net[-1]
    assert isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear)
    return {
        "w1": l1.weight.detach().double().numpy().T.copy(),
        "b1": l1.bias.detach().double().numpy().copy(),
        "w2": l2.weight.detach().double().numpy().T.copy(),
        "b2": l2.bias.detach().double().numpy().copy(),
    }
