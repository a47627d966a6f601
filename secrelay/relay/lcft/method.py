"""LCFT as a :class:`~secrelay.methods.Method` (``method.name = "lcft"``).

Round 0 is the cloud: train the model on the cloud data and (for the hard
correction) search the correction table, then publish w_g and the table. Round 1
is the devices: on the query path each first asks for its hard-correction pair,
then every device fine-tunes the cloud model once per correction
(:class:`~secrelay.relay.lcft.device.LCFTProgram`) and is evaluated with its own
models.

The loop is built here, not through :meth:`~secrelay.methods.LoopMethod.build_loop`:
the plan's DP-SGD composition needs a program with one plain trainer and update
transforms, and calibrates for one training per sampled round, while LCFT's
program trains once per correction and shares ``privacy.local_target_epsilon``
over all of them (see :meth:`LCFTMethod._build_loop`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from protocols.dp import LedgerRecord, RandomGenerator, make_generator
from protocols.errors import ProtocolAbort
from secrelay.checkpoint import atomic_write_text
from secrelay.config import RunConfig
from secrelay.federated.client import load_flat_parameters, single_thread
from secrelay.federated.loop import FederatedLoop, RoundConfig
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.federated.strategies import StandaloneStrategy
from secrelay.methods import Method, RunContext, make_train_config, train_cloud_model
from secrelay.metrics import Metrics, evaluate_predictions
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.relay.lcft.analysis import improvement_by_drift
from secrelay.relay.lcft.cloud import TABLE_TOPIC, search_correction_table
from secrelay.relay.lcft.corrections import CorrectionTable
from secrelay.relay.lcft.device import LCFTProgram
from secrelay.relay.lcft.options import LCFTOptions
from secrelay.relay.lcft.privacy import privacy_problems as lcft_privacy_problems
from secrelay.relay.lcft.query import CTRQuery, answer_query, query_request
from secrelay.training import predict

__all__ = ["LCFTMethod"]


class LCFTMethod(Method):
    """LCFT driven by the runner: the cloud trains the model (round 0), every device
    fine-tunes it once with corrected labels (round 1).

    On the query path every device first sends its (LDP-noised, with
    ``privacy.query_ldp``) local CTR and receives its hard-correction pair; that
    release is round 1's only privacy cost, one user-level ledger record covering
    every device (:meth:`~secrelay.relay.lcft.query.CTRQuery.record`), known before the round from the config
    and the device ids alone.
    """

    name = "lcft"
    supports_privacy = True  # privacy.query_ldp and dp_sgd; user_level_dp is refused
    makes_queries = True

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        """The base checks and LCFT's own
        (:func:`~secrelay.relay.lcft.privacy.privacy_problems`), before any data loads."""
        options = LCFTOptions.from_mapping(config.method.options)
        return [*super().privacy_problems(config), *lcft_privacy_problems(options, config.privacy)]

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.options = LCFTOptions.from_mapping(ctx.config.method.options)
        privacy = ctx.config.privacy
        self.query: CTRQuery | None = None
        if self.options.correction_path == "query":
            self.query = CTRQuery.plan(
                privacy.query_ldp,
                epsilon=privacy.query_ldp_epsilon,
                delta=privacy.delta,
                accountant=privacy.accountant,
                bits=self.options.query_rr_bits,
            )
        self.table: CorrectionTable | None = None
        self.search_stats: dict[str, Any] = {}
        self.query_stats: dict[str, float] = {}
        self._privacy_records: tuple[LedgerRecord, ...] = ()
        self.dp_trainer: DPSGDTrainer | None = None

    def setup(self) -> None:
        """The cloud phase: train the model, search the table, publish, build the loop."""
        cfg, seed = self.ctx.config, self.ctx.seed
        cloud = self.ctx.data.cloud
        self.global_ctr = cloud.ctr
        self.cloud_vec = train_cloud_model(
            self.ctx.model_spec, cloud, make_train_config(cfg.cloud), seed=seed
        )
        if self.query is not None and self.query.private:
            self.ctx.log(f"lcft query LDP: {self.query.describe()}")
        if "hard" in self.options.corrections:
            with single_thread():
                self.table, self.search_stats = search_correction_table(
                    self.ctx.model_spec,
                    cloud,
                    make_train_config(cfg.cloud),
                    make_train_config(cfg.local),
                    edges=self.options.hard_edges,
                    alphas=self.options.hard_alphas,
                    betas=self.options.hard_betas,
                    min_rows=self.options.hard_min_rows,
                    max_users=self.options.hard_max_users,
                    seed=seed,
                )
            self.ctx.log(
                "lcft hard correction table: "
                + ", ".join(
                    f"[{lo:.2f},{hi:.2f}) -> ({a:g}, {b:g})"
                    for lo, hi, a, b in zip(
                        self.table.edges[:-1],
                        self.table.edges[1:],
                        self.table.alpha,
                        self.table.beta,
                    )
                )
            )
        self._publish()
        self._build_loop()

    def _publish(self) -> None:
        """The one-way download every device receives at set-up: w_g and (for the
        hard correction on the table path) the whole interval table."""
        arrays = {"global_ctr": np.array([self.global_ctr])}
        if self.table is not None and self.options.correction_path == "table":
            arrays.update(self.table.arrays())
        for dev in sorted(self.ctx.data.devices):
            self.ctx.channel.send(
                ReplyMessage(sender=SERVER, receiver=dev, round=0, topic=TABLE_TOPIC, arrays=arrays)
            )

    def _build_loop(self) -> None:
        """One standalone round over every device, with LCFT's own DP-SGD trainer.

        Not :meth:`~secrelay.methods.LoopMethod.build_loop`: the plan's composition
        would refuse :class:`LCFTProgram` under ``privacy.dp_sgd`` (no plain trainer
        to replace) and would calibrate ``local_target_epsilon`` for one training,
        not one per correction.
        """
        strategy = StandaloneStrategy()
        strategy.initialize({"global": self.cloud_vec})
        train = make_train_config(self.ctx.config.local)
        self.dp_trainer = (
            self.ctx.privacy.dpsgd_trainer(train, participations=len(self.options.corrections))
            if self.ctx.config.privacy.dp_sgd
            else None
        )
        program = LCFTProgram(
            self.ctx.model_spec,
            train,
            self.global_ctr,
            tuple(self.options.corrections),
            self.table if self.options.correction_path == "table" else None,
            self.options.correction_path,
            self.dp_trainer,
        )
        self.loop = FederatedLoop(
            strategy,
            program,
            self.ctx.data.devices,
            self.ctx.model_spec,
            config=RoundConfig(clients_per_round=len(self.ctx.data.devices), sampling="fixed"),
            seed=self.ctx.seed,
            channel=self.ctx.channel,
            executor=self.ctx.executor,
            randomness=self.ctx.privacy.randomness,
        )

    def num_rounds(self) -> int:
        """One device round: every device fine-tunes once."""
        return 1

    def _predictions(self, name: str) -> dict[int, np.ndarray]:
        return {
            d: np.asarray(s[f"predictions/{name}"])
            for d, s in self.loop.store.state.items()
            if f"predictions/{name}" in s
        }

    def _metrics_of(self, preds: Mapping[int, np.ndarray]) -> Metrics:
        devs = [d for d in sorted(preds) if len(self.ctx.data.devices[d].test)]
        tests = [self.ctx.data.devices[d].test for d in devs]
        return evaluate_predictions(
            np.concatenate([t.y for t in tests]),
            np.concatenate([preds[d] for d in devs]),
            np.concatenate([t.user for t in tests]),
        )

    def _query_generator(self, round: int, device: int) -> RandomGenerator:
        if self.ctx.config.privacy.randomness == "secure":
            return make_generator(secure=True)
        return np.random.default_rng(np.random.SeedSequence([self.ctx.seed, round, device, 29]))

    def _query_phase(self, round: int) -> tuple[LedgerRecord, ...]:
        """Every device queries its hard-correction pair through the channel; the
        answer goes into the device's private state for the round's program."""
        assert self.query is not None and self.table is not None
        devices = sorted(self.ctx.data.devices)
        errors, interval_hits, pair_hits = [], 0, 0
        for dev in devices:
            w_i = self.ctx.data.devices[dev].train.ctr  # on the device
            q = self.ctx.channel.send(
                query_request(
                    dev, round, w_i, self.query, generator=self._query_generator(round, dev)
                )
            )
            assert isinstance(q, QueryMessage)
            r = self.ctx.channel.send(answer_query(q, self.table, self.query))  # server side
            assert isinstance(r, ReplyMessage)
            pair = (float(r.arrays["alpha"][0]), float(r.arrays["beta"][0]))
            self.loop.store.update(dev, {"query/hard": pair})  # the device keeps its answer
            # Simulation bookkeeping (neither party sees both w_i and the estimate).
            est = self.query.estimate(q.arrays)
            errors.append(abs(est - w_i))
            interval_hits += self.table.interval(est) == self.table.interval(w_i)
            pair_hits += pair == self.table.lookup(w_i)
        n = max(len(devices), 1)
        self.query_stats = {
            "abs_error": float(np.mean(errors)) if errors else float("nan"),
            "interval_match": interval_hits / n,
            "pair_match": pair_hits / n,
        }
        rec = self.query.record(run_id=self.ctx.config.run.name, round=round, devices=devices)
        return () if rec is None else (rec,)

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """Round 1's releases, from the config, the device ids and data sizes alone:
        the query record, and each device's DP-SGD record once per correction."""
        if round != 1:
            return ()
        out: list[LedgerRecord] = []
        if self.query is not None:
            rec = self.query.record(
                run_id=self.ctx.config.run.name, round=round, devices=sorted(self.ctx.data.devices)
            )
            if rec is not None:
                out.append(rec)
        if self.dp_trainer is not None:
            for _, dd in sorted(self.ctx.data.devices.items()):
                if dd.num_train:
                    rec = self.dp_trainer.planned_record(dd, round=round)
                    out.extend([rec] * len(self.options.corrections))
        return tuple(out)

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """The query record and the DP-SGD records of the last round."""
        return self._privacy_records

    def run_round(self, round: int) -> dict[str, Any]:
        """Queries (query path), fine-tuning, every correction's metrics, the report."""
        self._privacy_records = ()
        if self.query is not None:
            self._privacy_records = self._query_phase(round)
        try:
            record = self.loop.run_round(round, evaluate=True)
        except ProtocolAbort as exc:  # the queries were released all the same
            exc.add_privacy_records(self._privacy_records)
            raise
        self._privacy_records += tuple(record.privacy_records)
        rec = record.as_dict()
        for k, v in self.query_stats.items():
            rec[f"query/{k}"] = v
        local_ctr = {d: float(s["local_ctr"]) for d, s in self.loop.store.state.items()}
        preds = {c: self._predictions(c) for c in ("cloud", *self.options.corrections)}
        for c, p in preds.items():
            for k, v in self._metrics_of(p).as_dict().items():
                rec[f"{c}/{k}"] = v
        buckets = improvement_by_drift(
            self.ctx.data.devices, local_ctr, preds, self.global_ctr, self.options.drift_edges
        )
        report = {
            "global_ctr": self.global_ctr,
            "corrections": list(self.options.corrections),
            "table": None
            if self.table is None
            else {k: v.tolist() for k, v in self.table.arrays().items()},
            "search": self.search_stats,
            "correction_path": self.options.correction_path,
            "query": None
            if self.query is None
            else {**self.query.describe(), "stats": self.query_stats},
            "drift_buckets": buckets,
        }
        atomic_write_text(
            self.ctx.run_dir / "lcft_report.json", json.dumps(report, indent=2, default=float)
        )
        return rec

    def evaluate(self) -> Metrics:
        """The devices' own models after round 1; the cloud model before it."""
        if self.loop.personal_predictions:
            return self.loop.evaluate()
        model = self.ctx.model_spec.build()
        load_flat_parameters(model, self.cloud_vec)
        return evaluate_predictions(
            self.ctx.data.device_test.y,
            predict(model, self.ctx.data.device_test),
            self.ctx.data.device_test.user,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "loop": self.loop.state_dict(),
            "cloud": self.cloud_vec,
            "global_ctr": self.global_ctr,
            "table": None if self.table is None else self.table.arrays(),
            "search": json.loads(json.dumps(self.search_stats, default=float)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cloud_vec = np.asarray(state["cloud"], dtype=np.float32)
        self.global_ctr = float(state["global_ctr"])
        self.table = None if state["table"] is None else CorrectionTable.from_arrays(state["table"])
        self.search_stats = dict(state.get("search", {}))
        self._build_loop()
        self.loop.load_state_dict(state["loop"])

    def close(self) -> None:
        """Close the loop's executor."""
        if hasattr(self, "loop"):
            self.loop.close()
