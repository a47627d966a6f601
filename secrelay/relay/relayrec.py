"""RelayRec: cloud–device relay learning of CTR models (method ``"relayrec"``).

Deng et al., "RelayRec: Empowering Privacy-Preserving CTR Prediction via
Cloud-Device Relay Learning", IPSN 2023. Three stages:

* **Clustered meta-learning on the cloud** (Algorithm 1,
  :mod:`secrelay.relay.relayrec_cloud`): xDeepFM server model → user embeddings →
  k-means into K clusters → MAML of the device model (LR or DNN) per cluster →
  fine-tuning of each of the K initial models on all cloud data.
* **Automated model selector** (Algorithm 2,
  :mod:`secrelay.relay.relayrec_selector`): item categories, preference vectors
  p_u and an MLP s(p_u) → k_u trained on the cloud users.
* **Personalized collaborative learning on the devices** (Algorithm 3, this
  module): every device downloads all K initial models and the item space,
  computes p_u from its own train data, obtains k_u (by default through a
  :class:`~secrelay.federated.messages.QueryMessage` / ``ReplyMessage`` pair — the
  flow a CKKS layer will encrypt — or by running the downloaded selector
  locally), keeps k_u in its private state, and in each round trains with the
  FedProx objective μ/2‖w − w_k‖² towards its chosen model; the server aggregates
  per model (:class:`~secrelay.federated.strategies.ClusteredStrategy`,
  sample-weighted), so devices that chose different models never mix.

Every component can be swapped for the paper's ablations and baselines
(:class:`~secrelay.relay.relayrec_options.RelayRecOptions`). Evaluation: each
device's test rows are scored with the current model of its chosen key (the
personal model for ``standalone``); gAUC is the headline metric.

Configuration: ``[model]`` is the device model, ``[cloud]`` trains the server
model and the normal initial models (and sets the fine-tuning batch size and
learning rate), ``[local]`` is the devices' local training, ``[federated]`` the
rounds; ``[strategy]`` is not used (``method.options.collaboration`` chooses).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.checkpoint import atomic_write_text
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    DeviceData,
    ModelSpec,
    PlainTrainer,
    PrivateKey,
    flat_parameters,
    load_flat_parameters,
    single_thread,
)
from secrelay.federated.loop import DeviceStore, evaluate_keyed
from secrelay.federated.messages import SERVER, ModelDownload, QueryMessage, ReplyMessage
from secrelay.federated.strategies import (
    ClusteredStrategy,
    FedAvg,
    FedProx,
    StandaloneStrategy,
    Strategy,
)
from secrelay.federated.transcript import Channel
from secrelay.methods import LoopMethod, make_train_config
from secrelay.metrics import Metrics, logloss
from secrelay.models.base import CTRModel, make_model
from secrelay.relay.relayrec_cloud import (
    MAMLConfig,
    cluster_data,
    cluster_users,
    make_meta_tasks,
    maml_train,
    train_normal,
    user_representations,
)
from secrelay.relay.relayrec_options import RelayRecOptions
from secrelay.relay.relayrec_selector import (
    ItemSpace,
    SelectorWeights,
    fit_item_space,
    selector_logits,
    train_selector,
)
from secrelay.training import TrainConfig, predict

__all__ = [
    "SELECT_TOPIC",
    "RelayRecMethod",
    "SharedUpdateStrategy",
    "build_initial_models",
    "model_keys",
    "select_device_key",
]

SELECT_TOPIC = "relayrec/select"
ITEM_SPACE_TOPIC = "relayrec/item_space"
SELECTOR_TOPIC = "relayrec/selector"


def model_keys(k: int) -> tuple[str, ...]:
    """The keys of the K initial models: ``cluster/0`` … ``cluster/K-1``."""
    return tuple(f"cluster/{i}" for i in range(k))


class SharedUpdateStrategy(FedAvg):
    """The ``fedavg`` / ``fedprox`` collaboration ablation with K initial models:
    every device trains from its chosen model, the server averages *all* devices'
    updates (sample-weighted, or uniform) and applies the mean to every model. With one
    initial model (or K identical ones) this is plain FedAvg / FedProx."""

    name = "relayrec_shared"

    def __init__(
        self,
        *,
        mu: float = 0.0,
        server_lr: float = 1.0,
        weighting: Literal["samples", "uniform"] = "samples",
    ) -> None:
        super().__init__(server_lr=server_lr, weighting=weighting)
        if mu < 0:
            raise InvalidParameterError(f"`mu` must be >= 0; got {mu!r}")
        self.mu = float(mu)

    def trainer(self, trainer: Any) -> Any:
        return FedProx(mu=self.mu).trainer(trainer) if self.mu > 0 else trainer

    def apply(self, round: int, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        weight = float(np.asarray(sums["weight"]).sum())
        if weight <= 0:
            return {}
        mean = np.asarray(sums["delta"], dtype=np.float64) / weight
        for key in self.keys:
            self._set(key, self.models[key] + self.server_lr * mean)
        return {"update_norm": float(np.linalg.norm(mean))}


def _make_strategy(opts: RelayRecOptions, *, uniform: bool = False) -> Strategy:
    """The collaboration strategy; ``uniform`` (user-level DP) weights each device 1."""
    c = opts.collaboration
    weighting: Literal["samples", "uniform"] = "uniform" if uniform else "samples"
    share = opts.dp_count_share
    if c == "clustered_fedprox":
        return ClusteredStrategy(mu=opts.mu, weighting=weighting, count_share=share)
    if c == "clustered_fedavg":
        return ClusteredStrategy(mu=0.0, weighting=weighting, count_share=share)
    if c == "fedprox":
        return SharedUpdateStrategy(mu=opts.mu, weighting=weighting)
    if c == "fedavg":
        return SharedUpdateStrategy(mu=0.0, weighting=weighting)
    return StandaloneStrategy()


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


def select_device_key(
    device: DeviceData,
    *,
    opts: RelayRecOptions,
    keys: tuple[str, ...],
    channel: Channel,
    item_space: ItemSpace,
    selector: SelectorWeights,
    initial: Mapping[str, np.ndarray],
    spec: ModelSpec,
    seed: int,
) -> str:
    """Algorithm 3, steps 1–2, for one device: which initial model it starts from.

    The server's part (answering a query) is the only code here that reads a
    device's message; the device's part reads only its own data and what it
    downloaded. Every message goes through ``channel`` (round 0).
    """
    dev = device.device_id
    if opts.selection == "random":
        rng = np.random.default_rng(np.random.SeedSequence([seed, dev, 17]))
        return keys[int(rng.integers(len(keys)))]
    if opts.selection == "optimal":
        down = channel.send(
            ModelDownload(sender=SERVER, receiver=dev, round=0, models=dict(initial))
        )
        assert isinstance(down, ModelDownload)
        model = spec.build()
        losses = []
        for key in keys:
            load_flat_parameters(model, down.models[key])
            losses.append(logloss(device.train.y, predict(model, device.train)))
        return keys[int(np.argmin(losses))]
    # The learned selector: the device computes p_u on its own train data.
    pub = channel.send(
        ReplyMessage(
            sender=SERVER, receiver=dev, round=0, topic=ITEM_SPACE_TOPIC, arrays=item_space.arrays()
        )
    )
    assert isinstance(pub, ReplyMessage)
    p_u = ItemSpace.from_arrays(device.train.schema, pub.arrays).preference(device.train)
    if opts.selector_path == "local":
        w = channel.send(
            ReplyMessage(
                sender=SERVER, receiver=dev, round=0, topic=SELECTOR_TOPIC, arrays=selector.arrays()
            )
        )
        assert isinstance(w, ReplyMessage)
        scores = selector_logits(SelectorWeights.from_arrays(w.arrays), p_u)
    else:
        q = channel.send(
            QueryMessage(
                sender=dev, receiver=SERVER, round=0, topic=SELECT_TOPIC, arrays={"p_u": p_u}
            )
        )
        assert isinstance(q, QueryMessage)
        answer = selector_logits(selector, q.arrays["p_u"])  # server side
        r = channel.send(
            ReplyMessage(
                sender=SERVER, receiver=dev, round=0, topic=SELECT_TOPIC, arrays={"scores": answer}
            )
        )
        assert isinstance(r, ReplyMessage)
        scores = r.arrays["scores"]
    return keys[int(np.argmax(scores))]


class RelayRecMethod(LoopMethod):
    """RelayRec and its ablations, driven round by round by the runner.

    Privacy (``[privacy]``): ``dp_sgd`` trains every device with DP-SGD;
    ``user_level_dp`` clips each device's update and noises the cluster-keyed sums
    — update *and* per-cluster device count, since which cluster a device chose is
    its data (:meth:`ClusteredStrategy.release_spec
    <secrelay.federated.strategies.ClusteredStrategy.release_spec>`); it switches the
    clustered collaboration to uniform device weights. The cloud phase uses only
    the cloud's own (pre-regulation) data and spends nothing.
    """

    name = "relayrec"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.options = RelayRecOptions.from_mapping(ctx.config.method.options)
        self.keys = model_keys(self.options.num_clusters)
        self.cloud_stats: dict[str, Any] = {}

    # --- cloud phase --------------------------------------------------------------
    def setup(self) -> None:
        cfg, opts, seed = self.ctx.config, self.options, self.ctx.seed
        cloud = self.ctx.data.cloud
        cloud_train = make_train_config(cfg.cloud)
        log = self.ctx.log
        with single_thread():
            server = self._server_model()
            server_loss = train_normal(server, cloud, cloud_train, seed=seed)
            users, reps = user_representations(server, cloud)
            labels = cluster_users(reps, opts.num_clusters, seed=seed)
            item_space, item_labels = fit_item_space(server, cloud, opts.num_categories, seed=seed)
            by_user = cloud.by_user()
            prefs = np.stack([item_space.preference(cloud.subset(by_user[int(u)])) for u in users])
            selector, acc = train_selector(
                prefs,
                labels,
                opts.num_clusters,
                hidden=opts.selector_hidden,
                epochs=opts.selector_epochs,
                lr=opts.selector_lr,
                seed=seed,
            )
            initial, model_stats = build_initial_models(
                self.ctx.model_spec, cloud, users, labels, opts, cloud_train, seed=seed
            )
        log(
            f"relayrec cloud: server {opts.server_model} loss {server_loss:.4f}; user clusters "
            f"{np.bincount(labels, minlength=opts.num_clusters).tolist()}; item categories "
            f"{np.bincount(item_labels, minlength=opts.num_categories).tolist()}; selector "
            f"train accuracy {acc:.3f}"
        )
        store = DeviceStore()
        choice = {}
        with single_thread():
            for dev, dd in sorted(self.ctx.data.devices.items()):
                key = select_device_key(
                    dd,
                    opts=opts,
                    keys=self.keys,
                    channel=self.ctx.channel,
                    item_space=item_space,
                    selector=selector,
                    initial=initial,
                    spec=self.ctx.model_spec,
                    seed=seed,
                )
                store.update(dev, {"model_key": key, "selection": opts.selection})
                choice[dev] = key
        counts = {k: sum(1 for v in choice.values() if v == k) for k in self.keys}
        log(f"relayrec devices: chosen initial models {counts}")
        self.cloud_stats = {
            "server_train_loss": server_loss,
            "user_clusters": np.bincount(labels, minlength=opts.num_clusters).tolist(),
            "item_categories": np.bincount(item_labels, minlength=opts.num_categories).tolist(),
            "selector_train_accuracy": acc,
            "device_choices": counts,
            "initial_models": model_stats,
        }
        atomic_write_text(
            self.ctx.run_dir / "relayrec_cloud.json",
            json.dumps(self.cloud_stats, indent=2, default=float),
        )
        self.strategy = self._strategy()
        self.strategy.initialize(initial)
        self._build_loop(store)

    def _strategy(self) -> Strategy:
        uniform = self.options.weighting == "uniform" or self.ctx.config.privacy.user_level_dp
        return _make_strategy(self.options, uniform=uniform)

    def _server_model(self) -> CTRModel:
        kwargs = {
            "embedding_dim": self.ctx.config.model.embedding_dim,
            **self.options.server_model_options,
        }
        return make_model(
            self.options.server_model, self.ctx.model_spec.schema, seed=self.ctx.seed, **kwargs
        )

    def _build_loop(self, store: DeviceStore) -> None:
        fed = self.ctx.config.federated
        personal = self.strategy.personalized
        rc = self.round_config(
            clients_per_round=len(self.ctx.data.devices) if personal else fed.clients_per_round,
            sampling="fixed" if personal else fed.sampling,
        )
        program = self.strategy.client_program(
            self.ctx.model_spec,
            PlainTrainer(make_train_config(self.ctx.config.local)),
            selector=PrivateKey("model_key"),
        )
        self.loop = self.build_loop(
            self.strategy, program, config=rc, rounds=self.num_rounds(), device_store=store
        )

    # --- rounds -------------------------------------------------------------------
    def num_rounds(self) -> int:
        return 1 if self.strategy.personalized else self.ctx.config.federated.rounds

    def run_round(self, round: int) -> dict[str, Any]:
        last = round == self.num_rounds()
        rec = self.run_loop_round(round, evaluate=True if last else None).as_dict()
        if round == 1:
            rec["selector_train_accuracy"] = self.cloud_stats.get("selector_train_accuracy")
            for k, v in self.cloud_stats.get("device_choices", {}).items():
                rec[f"devices/{k}"] = v
        return rec

    def device_keys(self) -> dict[int, str]:
        """Each device's chosen model key (the experimenter's view of the simulation)."""
        return {d: str(s["model_key"]) for d, s in self.loop.store.state.items()}

    def evaluate(self) -> Metrics:
        if self.strategy.personalized and not self.loop.personal_predictions:
            tests = {d: dd.test for d, dd in self.ctx.data.devices.items() if len(dd.test)}
            keys = self.device_keys()
            return evaluate_keyed(self.ctx.model_spec, self.strategy.models, tests, keys)
        return self.loop.evaluate()

    # --- persistence --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "loop": self.loop.state_dict(),
            "cloud_stats": json.loads(json.dumps(self.cloud_stats, default=float)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cloud_stats = dict(state.get("cloud_stats", {}))
        self.strategy = self._strategy()
        self.strategy.initialize(state["loop"]["strategy"]["models"])
        self._build_loop(DeviceStore())
        self.loop.load_state_dict(state["loop"])
