"""RelayRec as a runner-driven method (``method.name = "relayrec"``).

:class:`RelayRecMethod` runs the cloud phase (:mod:`~secrelay.relay.relayrec.cloud`,
:mod:`~secrelay.relay.relayrec.selector`), lets every device choose its initial model
(:mod:`~secrelay.relay.relayrec.device`) and then drives the federated rounds with
the chosen collaboration (:mod:`~secrelay.relay.relayrec.strategy`). Evaluation:
each device's test rows are scored with the current model of its chosen key (the
personal model for ``standalone``); gAUC is the headline metric.

Configuration: ``[model]`` is the device model, ``[cloud]`` trains the server
model and the normal initial models (and sets the fine-tuning batch size and
learning rate), ``[local]`` is the devices' local training, ``[federated]`` the
rounds; ``[strategy]`` is not used (``method.options.collaboration`` chooses).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.checkpoint import atomic_write_text
from secrelay.config import RunConfig
from secrelay.federated.client import PlainTrainer, PrivateKey, single_thread
from secrelay.federated.loop import DeviceStore, evaluate_keyed
from secrelay.federated.strategies import Strategy
from secrelay.methods import LoopMethod, RunContext, make_train_config
from secrelay.metrics import Metrics
from secrelay.models.base import CTRModel, make_model
from secrelay.relay.relayrec.cloud import (
    build_initial_models,
    cluster_users,
    model_keys,
    train_normal,
    user_representations,
)
from secrelay.relay.relayrec.device import select_device_key
from secrelay.relay.relayrec.he_selector import (
    HESelectorServer,
    square_selector_logits,
    train_square_selector,
)
from secrelay.relay.relayrec.options import RelayRecOptions
from secrelay.relay.relayrec.selector import fit_item_space, train_selector
from secrelay.relay.relayrec.strategy import _make_strategy

__all__ = ["RelayRecMethod"]


class RelayRecMethod(LoopMethod):
    """RelayRec and its ablations, driven round by round by the runner.

    Privacy (``[privacy]``): ``dp_sgd`` trains every device with DP-SGD;
    ``user_level_dp`` clips each device's update and noises the cluster-keyed sums
    — update *and* per-cluster device count, since which cluster a device chose is
    its data (:meth:`ClusteredStrategy.release_spec
    <secrelay.federated.strategies.ClusteredStrategy.release_spec>`); it switches the
    clustered collaboration to uniform device weights. The cloud phase uses only
    the cloud's own (pre-regulation) data and spends nothing. ``he_selector`` trains
    the HE-friendly (square-activation) selector and encrypts every device's query
    under CKKS (:mod:`~secrelay.relay.relayrec.he_selector`); its traffic and time
    are in round 1's record (``he/selector_*``). Every device downloads all K
    initial models in every round, so the server never learns the chosen key from
    the downloads (docs/he.md, *All K models down*).
    """

    name = "relayrec"
    he_flows = frozenset({"selector"})

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        problems = super().privacy_problems(config)
        if not config.privacy.he_selector:
            return problems
        opts = RelayRecOptions.from_mapping(config.method.options)
        if opts.selection != "selector" or opts.selector_path != "query":
            problems.append(
                "privacy.he_selector encrypts the selector query: it needs "
                "method.options.selection = 'selector' and selector_path = 'query'; got "
                f"selection = {opts.selection!r}, selector_path = {opts.selector_path!r}"
            )
        try:
            opts.he_parameters()
        except InvalidParameterError as exc:
            problems.append(f"method.options.he_* (privacy.he_selector): {exc}")
        return problems

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.options = RelayRecOptions.from_mapping(ctx.config.method.options)
        self.keys = model_keys(self.options.num_clusters)
        self.cloud_stats: dict[str, Any] = {}

    # --- cloud phase --------------------------------------------------------------
    def setup(self) -> None:
        sel = self._cloud_phase()
        log = self.ctx.log
        if self.ctx.data.population is not None:
            # A lazy population: each device chooses when it is first sampled or
            # evaluated (the same choice, made later; nothing is gathered up front).
            store = DeviceStore(fill=self._selection(sel))
            counts: dict[str, Any] = {}
            log("relayrec devices: each device chooses its initial model when first needed")
        else:
            choose = self._selection(sel)
            store = DeviceStore()
            for dev in sorted(self.ctx.data.devices):
                store.update(dev, choose(dev))
            choice = {d: s["model_key"] for d, s in store.state.items()}
            counts = {k: sum(1 for v in choice.values() if v == k) for k in self.keys}
            log(f"relayrec devices: chosen initial models {counts}")
        self.cloud_stats["device_choices"] = counts
        he = sel["he"]
        if he is not None:
            self.cloud_stats["he_selector"] = {
                **he.stats.as_metrics(),
                "he/selector_galois_steps": list(he.layout.galois_steps),
                "he/selector_input_dim": he.layout.inputs,
            }
        atomic_write_text(
            self.ctx.run_dir / "relayrec_cloud.json",
            json.dumps(self.cloud_stats, indent=2, default=float),
        )
        self.strategy = self._strategy()
        self.strategy.initialize(sel["initial"])
        self._build_loop(store)

    def _selection(self, sel: Mapping[str, Any]) -> Callable[[int], dict[str, Any]]:
        """Algorithm 3, steps 1-2, as a function of the device id: what the device
        stores (its chosen key); see :func:`select_device_key`."""
        opts, seed, he = self.options, self.ctx.seed, sel["he"]

        def choose(dev: int) -> dict[str, Any]:
            dd = self.ctx.data.devices[dev]
            with single_thread():
                key = select_device_key(
                    dd,
                    opts=opts,
                    keys=self.keys,
                    channel=self.ctx.channel,
                    item_space=sel["item_space"],
                    selector=sel["selector"],
                    initial=sel["initial"],
                    spec=self.ctx.model_spec,
                    seed=seed,
                    he=he,
                )
                if he is not None:  # the experimenter's check (both sides known here)
                    p_u = sel["item_space"].preference(dd.train)
                    plain = self.keys[int(np.argmax(square_selector_logits(he.weights, p_u)))]
                    he.stats.plaintext_agreement += int(plain == key)
            return {"model_key": key, "selection": opts.selection}

        return choose

    def _cloud_phase(self) -> dict[str, Any]:
        """Train the server model, cluster the cloud's users, fit the item space and
        the selector, build the K initial models (cloud data only; deterministic in
        ``run.seed``). Sets ``cloud_stats``; returns what selection needs."""
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
            he: HESelectorServer | None = None
            if self.ctx.config.privacy.he_selector:
                square, acc = train_square_selector(
                    prefs,
                    labels,
                    opts.num_clusters,
                    hidden=opts.selector_hidden,
                    epochs=opts.selector_epochs,
                    lr=opts.selector_lr,
                    seed=seed,
                    balance=opts.selector_balance,
                )
                he = HESelectorServer(square, opts.he_parameters(), radix=opts.he_radix)
            selector, acc_relu = train_selector(
                prefs,
                labels,
                opts.num_clusters,
                hidden=opts.selector_hidden,
                epochs=opts.selector_epochs,
                lr=opts.selector_lr,
                seed=seed,
                balance=opts.selector_balance,
            )
            if he is None:
                acc = acc_relu
            initial, model_stats = build_initial_models(
                self.ctx.model_spec, cloud, users, labels, opts, cloud_train, seed=seed
            )
        log(
            f"relayrec cloud: server {opts.server_model} loss {server_loss:.4f}; user clusters "
            f"{np.bincount(labels, minlength=opts.num_clusters).tolist()}; item categories "
            f"{np.bincount(item_labels, minlength=opts.num_categories).tolist()}; selector "
            f"train accuracy {acc:.3f}"
        )
        self.cloud_stats = {
            "server_train_loss": server_loss,
            "user_clusters": np.bincount(labels, minlength=opts.num_clusters).tolist(),
            "item_categories": np.bincount(item_labels, minlength=opts.num_categories).tolist(),
            "selector_train_accuracy": acc,
            "initial_models": model_stats,
        }
        if he is not None:
            self.cloud_stats["selector_relu_train_accuracy"] = acc_relu
        return {
            "item_space": item_space,
            "selector": selector,
            "initial": initial,
            "he": he,
        }

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
            PlainTrainer(self.local_train_config()),
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
            for k, v in self.cloud_stats.get("he_selector", {}).items():
                if not isinstance(v, list):
                    rec[k] = v
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
        fill = None
        if self.ctx.data.population is not None:
            # Devices not yet seen still choose: redo the (deterministic) cloud phase.
            fill = self._selection(self._cloud_phase())
        self.cloud_stats = dict(state.get("cloud_stats", {}))
        self.strategy = self._strategy()
        self.strategy.initialize(state["loop"]["strategy"]["models"])
        self._build_loop(DeviceStore(fill=fill))
        self.loop.load_state_dict(state["loop"])
