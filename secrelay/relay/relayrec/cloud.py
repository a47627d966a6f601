"""RelayRec, cloud side: clustered meta-learning of the initial device models.

Implements Algorithm 1 of Deng et al., "RelayRec: Empowering Privacy-Preserving
CTR Prediction via Cloud-Device Relay Learning" (IPSN 2023):

1. train an advanced server model (xDeepFM) on the pre-regulation cloud data;
2. represent every cloud user by the server model's embeddings of the
   user-related fields (:func:`user_representations`);
3. k-means the users into K clusters (:func:`cluster_users`, scikit-learn);
4. in each cluster meta-learn the lightweight device model (LR or DNN) with MAML
   over per-user support/query sets (:func:`maml_train`, :func:`maml_step`):
   inner step θ'_u = θ − η1 ∇L_support(u; θ), outer step
   θ ← θ − η2 ∇_θ (1/|B|) Σ_{u∈B} L_query(u; θ'_u) over batches B of users;
5. fine-tune each of the K initial models on all cloud data
   (:func:`build_initial_models`, which also builds the ablations' single and
   normally trained initial models).

Everything here runs on the cloud on data the cloud may use in the clear; nothing
crosses to a device. Every random choice takes an explicit seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.func import functional_call

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.data.splits import support_query_split
from secrelay.federated.client import ModelSpec, flat_parameters
from secrelay.models.base import CTRModel, make_model
from secrelay.relay.relayrec.options import RelayRecOptions
from secrelay.training import TrainConfig, soft_bce_with_logits, train_epochs

__all__ = [
    "MAMLConfig",
    "MetaTask",
    "build_initial_models",
    "cluster_data",
    "cluster_users",
    "make_meta_tasks",
    "maml_step",
    "maml_train",
    "model_keys",
    "train_normal",
    "user_representations",
]


# --- user representations and clustering -------------------------------------------------


def user_representations(
    server: CTRModel, data: CTRDataset, *, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's embedding: the server model's user-field embeddings, averaged
    over the user's rows (RelayRec §4.1, "user embedding").

    The user fields are constant over a user's rows in a clean data set, so the
    mean is the embedding itself; averaging makes the function well defined when a
    user field varies (e.g. a multi-valued field with changing values).

    Returns
    -------
    (users, reps)
        Sorted user identities ``(n_users,)`` and their representations
        ``(n_users, n_user_fields · dim)`` (float64).
    """
    server.eval()
    x = torch.from_numpy(np.array(data.x))
    parts = []
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            parts.append(server.user_embeddings(x[s : s + batch_size]).double())
    emb = torch.cat(parts).numpy() if parts else np.zeros((0, 1))
    users, inverse = np.unique(data.user, return_inverse=True)
    sums = np.zeros((users.size, emb.shape[1]))
    np.add.at(sums, inverse, emb)
    counts = np.bincount(inverse, minlength=users.size).astype(np.float64)
    return users, sums / counts[:, None]


def cluster_users(reps: np.ndarray, k: int, *, seed: int, n_init: int = 10) -> np.ndarray:
    """k-means (scikit-learn, k-means++ with ``n_init`` restarts) of the user
    representations into ``k`` clusters; returns each user's cluster id.

    With ``k = 1`` every user is in cluster 0 (no k-means is run).

    Raises
    ------
    InvalidParameterError
        If ``k`` < 1 or there are fewer distinct users than clusters.
    """
    from sklearn.cluster import KMeans

    if not isinstance(k, int) or k < 1:
        raise InvalidParameterError(f"`k` must be an int >= 1; got {k!r}")
    n = reps.shape[0]
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    distinct = np.unique(np.round(reps, 12), axis=0).shape[0]
    if distinct < k:
        raise InvalidParameterError(
            f"cannot form {k} clusters from {distinct} distinct user representations"
        )
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    labels: np.ndarray = km.fit_predict(reps).astype(np.int64)
    return labels


# --- MAML ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MAMLConfig:
    """Hyper-parameters of RelayRec's per-cluster meta-learning.

    Parameters
    ----------
    inner_lr:
        η1, the inner (per-user adaptation) SGD step on the support set; paper 0.01.
    outer_lr:
        η2, the outer (meta) step; paper 0.01.
    inner_steps:
        Inner SGD steps per user (>= 1; the paper's algorithm takes one).
    meta_epochs:
        Passes over the cluster's users (>= 0).
    users_per_batch:
        Users (tasks) per outer step (>= 1).
    first_order:
        ``False`` (default): second-order MAML, differentiating through the inner
        step (``create_graph=True``). ``True``: first-order MAML (FOMAML), the
        query gradient at the adapted parameters is used as the meta-gradient.
    outer_optimizer:
        ``"adam"`` (default; the meta-optimizer of Finn et al.'s reference MAML
        code, and the optimizer RelayRec uses elsewhere) or ``"sgd"`` (the literal
        update rule θ ← θ − η2·g of the paper's Algorithm 1).
    support_fraction:
        Share of each user's rows drawn at random into the support set, in (0, 1).
    """

    inner_lr: float = 0.01
    outer_lr: float = 0.01
    inner_steps: int = 1
    meta_epochs: int = 5
    users_per_batch: int = 25
    first_order: bool = False
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    support_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("inner_lr", "outer_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise InvalidParameterError(f"`{name}` must be a finite number > 0; got {v!r}")
        if not isinstance(self.inner_steps, int) or self.inner_steps < 1:
            raise InvalidParameterError(
                f"`inner_steps` must be an int >= 1; got {self.inner_steps!r}"
            )
        if not isinstance(self.meta_epochs, int) or self.meta_epochs < 0:
            raise InvalidParameterError(
                f"`meta_epochs` must be an int >= 0; got {self.meta_epochs!r}"
            )
        if not isinstance(self.users_per_batch, int) or self.users_per_batch < 1:
            raise InvalidParameterError(
                f"`users_per_batch` must be an int >= 1; got {self.users_per_batch!r}"
            )
        if self.outer_optimizer not in ("adam", "sgd"):
            raise InvalidParameterError(
                f"`outer_optimizer` must be 'adam' or 'sgd'; got {self.outer_optimizer!r}"
            )
        if not 0 < self.support_fraction < 1:
            raise InvalidParameterError(
                f"`support_fraction` must be in (0, 1); got {self.support_fraction!r}"
            )


@dataclass(frozen=True)
class MetaTask:
    """One user's meta-learning task: support and query rows as tensors."""

    user: int
    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor


def make_meta_tasks(data: CTRDataset, *, support_fraction: float, seed: int) -> list[MetaTask]:
    """Per-user support/query tasks (users with fewer than 2 rows are left out)."""
    sq = support_query_split(data, support_fraction=support_fraction, seed=seed, min_rows=2)
    sup = sq.support.by_user()
    qry = sq.query.by_user()
    tasks = []
    for u in sorted(sup):
        s, q = sup[u], qry[u]
        tasks.append(
            MetaTask(
                u,
                torch.from_numpy(np.array(sq.support.x[s])),
                torch.from_numpy(np.array(sq.support.y[s])),
                torch.from_numpy(np.array(sq.query.x[q])),
                torch.from_numpy(np.array(sq.query.y[q])),
            )
        )
    return tasks


def _adapt(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    task: MetaTask,
    config: MAMLConfig,
) -> dict[str, torch.Tensor]:
    """The inner loop: ``inner_steps`` SGD steps of size η1 on the support set."""
    fast = dict(params)
    for _ in range(config.inner_steps):
        loss = soft_bce_with_logits(functional_call(model, fast, (task.x_support,)), task.y_support)
        grads = torch.autograd.grad(
            loss, list(fast.values()), create_graph=not config.first_order, allow_unused=True
        )
        fast = {
            name: p if g is None else p - config.inner_lr * g
            for (name, p), g in zip(fast.items(), grads)
        }
    return fast


def maml_step(
    model: torch.nn.Module,
    tasks: Sequence[MetaTask],
    config: MAMLConfig,
    optimizer: torch.optim.Optimizer,
) -> float:
    """One outer (meta) step over a batch of users; returns the mean query loss.

    The meta-objective is the mean over the batch of each user's query loss at its
    adapted parameters. With ``first_order`` the inner gradients are computed
    without a graph, so the adapted parameters depend on θ through the identity
    only and the meta-gradient is the query gradient at θ'_u (FOMAML).
    """
    if not tasks:
        raise InvalidParameterError("maml_step() needs at least one task")
    params = dict(model.named_parameters())
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for task in tasks:
        fast = _adapt(model, params, task, config)
        loss_q = soft_bce_with_logits(functional_call(model, fast, (task.x_query,)), task.y_query)
        (loss_q / len(tasks)).backward()  # type: ignore[no-untyped-call]
        total += float(loss_q.detach())
    optimizer.step()
    return total / len(tasks)


def maml_train(
    model: torch.nn.Module,
    tasks: Sequence[MetaTask],
    config: MAMLConfig,
    *,
    seed: int,
) -> list[float]:
    """Meta-train ``model`` in place over ``tasks``; returns the mean query loss of
    every meta-epoch (before the step that used it)."""
    model.train()
    params = list(model.parameters())
    optimizer: torch.optim.Optimizer
    if config.outer_optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.outer_lr)
    else:
        optimizer = torch.optim.SGD(params, lr=config.outer_lr)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    history = []
    for _ in range(config.meta_epochs):
        order = rng.permutation(len(tasks))
        losses = []
        for s in range(0, len(order), config.users_per_batch):
            batch = [tasks[i] for i in order[s : s + config.users_per_batch]]
            losses.append(maml_step(model, batch, config, optimizer))
        history.append(float(np.mean(losses)) if losses else float("nan"))
    return history


def train_normal(
    model: torch.nn.Module, data: CTRDataset, config: TrainConfig, *, seed: int
) -> float:
    """Plain (non-meta) training; the "normal initial model" of the baselines."""
    out = train_epochs(model, data, config, generator=torch.Generator().manual_seed(seed))
    return float(out["loss"])


def cluster_data(
    data: CTRDataset, users: np.ndarray, labels: np.ndarray
) -> Mapping[int, CTRDataset]:
    """The cloud rows of each cluster's users."""
    label_of = dict(zip(users.tolist(), labels.tolist()))
    row_label = np.array([label_of[int(u)] for u in data.user], dtype=np.int64)
    return {int(c): data.subset(np.flatnonzero(row_label == c)) for c in np.unique(labels)}


# --- the K initial models ------------------------------------------------------------------


def model_keys(k: int) -> tuple[str, ...]:
    """The keys of the K initial models: ``cluster/0`` … ``cluster/K-1``."""
    return tuple(f"cluster/{i}" for i in range(k))


def build_initial_models(
    spec: ModelSpec,
    cloud: CTRDataset,
    users: np.ndarray,
    labels: np.ndarray,
    opts: RelayRecOptions,
    cloud_train: TrainConfig,
    *,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The K initial device models of the chosen ``initial`` variant.

    ``single_*`` trains one model on all cloud data and replicates it into the K
    slots; ``multiple_*`` trains one per user cluster on that cluster's data.
    ``*_meta`` meta-learns (MAML) and then fine-tunes on all cloud data for
    ``finetune_epochs``; ``*_normal`` trains normally (``[cloud]`` epochs) and —
    for ``multiple_normal`` — fine-tunes likewise, so the two variants differ only
    in meta- versus normal learning.

    Returns
    -------
    (models, stats)
        Flat parameter vectors by key, and per-model statistics (rows, users,
        meta-loss history).
    """
    kwargs = dict(spec.kwargs)
    maml = MAMLConfig(
        inner_lr=opts.inner_lr,
        outer_lr=opts.outer_lr,
        inner_steps=opts.inner_steps,
        meta_epochs=opts.meta_epochs,
        users_per_batch=opts.users_per_batch,
        first_order=opts.first_order,
        outer_optimizer=opts.outer_optimizer,
        support_fraction=opts.support_fraction,
    )
    finetune = dataclasses.replace(cloud_train, epochs=opts.finetune_epochs)
    groups: dict[int, CTRDataset] = (
        dict(cluster_data(cloud, users, labels)) if opts.multiple else {0: cloud}
    )
    vectors: dict[int, np.ndarray] = {}
    stats: dict[str, Any] = {}
    for c, data in sorted(groups.items()):
        model = make_model(spec.name, spec.schema, seed=seed + 1000 * c + 1, **kwargs)
        info: dict[str, Any] = {"rows": len(data), "users": data.n_users}
        if opts.meta:
            tasks = make_meta_tasks(data, support_fraction=opts.support_fraction, seed=seed + c)
            info["meta_users"] = len(tasks)
            if tasks:
                info["meta_query_loss"] = maml_train(model, tasks, maml, seed=seed + c)
            if opts.finetune_epochs > 0:
                info["finetune_loss"] = train_normal(model, cloud, finetune, seed=seed + 7 + c)
        else:
            info["train_loss"] = train_normal(model, data, cloud_train, seed=seed + 3 + c)
            if opts.multiple and opts.finetune_epochs > 0:
                info["finetune_loss"] = train_normal(model, cloud, finetune, seed=seed + 7 + c)
        vectors[c] = flat_parameters(model)
        stats[f"model/{c}"] = info
    keys = model_keys(opts.num_clusters)
    if opts.multiple:
        for i in range(opts.num_clusters):
            if i not in vectors:
                raise InvalidParameterError(f"user cluster {i} is empty; lower num_clusters")
        return {keys[i]: vectors[i] for i in range(opts.num_clusters)}, stats
    return {k: vectors[0].copy() for k in keys}, stats
