"""``method.name = "coda"``: :class:`CoDAMethod`, the one round the runner drives.

The cloud phase trains M0; the round builds the server (:class:`CoDACloud`), runs
the device phase through the run's executor (:mod:`secrelay.relay.coda.program`)
with the matching on the server in between, and scores every variant.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from protocols.dp import LedgerRecord, PrivacyLedger
from protocols.dp.rng import RandomGenerator, make_generator
from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import DeviceOutput, DeviceTask, load_flat_parameters
from secrelay.federated.messages import QueryMessage, ReplyMessage
from secrelay.methods import Method, RunContext, make_train_config, train_cloud_model
from secrelay.metrics import Metrics, evaluate_predictions
from secrelay.privacy.session import LEDGER_FILE
from secrelay.relay.coda.cloud import CoDACloud
from secrelay.relay.coda.he_matching import HEMatchServer, encrypted_match
from secrelay.relay.coda.matching import default_user_feature, field_embedding_table
from secrelay.relay.coda.options import CoDAOptions
from secrelay.relay.coda.payload import match_request
from secrelay.relay.coda.privacy import (
    DPUse,
    check_spent,
    device_dp_plan,
    planned_records,
    privacy_problems,
)
from secrelay.relay.coda.privatize import SamplePrivatizer
from secrelay.relay.coda.program import M0_KEY, CoDAProgram, CoDATask, UserVectorProgram
from secrelay.relay.coda.training import DPSGDSettings
from secrelay.training import predict

__all__ = ["CoDAMethod"]


class CoDAMethod(Method):
    """``method.name = "coda"``: one pass of CoDA over the devices
    (:mod:`secrelay.relay.coda`)."""

    name = "coda"
    supports_privacy = True
    he_flows = frozenset({"matching"})

    @classmethod
    def privacy_problems(cls, config: RunConfig) -> list[str]:
        options = CoDAOptions.from_mapping(config.method.options)
        problems = [*super().privacy_problems(config), *privacy_problems(config, options)]
        if config.privacy.he_matching:
            try:
                options.he_parameters()
            except InvalidParameterError as exc:
                problems.append(f"method.options.he_* (privacy.he_matching): {exc}")
        return problems

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.options = CoDAOptions.from_mapping(ctx.config.method.options)
        self._records: tuple[LedgerRecord, ...] = ()
        self._dp_cache: dict[int, tuple[DPSGDSettings, tuple[DPUse, ...]]] = {}
        self._started = False

    def setup(self) -> None:
        cfg = self.ctx.config
        self.options = CoDAOptions.from_mapping(cfg.method.options)
        self.cloud_vec = train_cloud_model(
            self.ctx.model_spec,
            self.ctx.data.cloud,
            make_train_config(cfg.cloud),
            seed=self.ctx.seed,
        )
        self.results: dict[str, np.ndarray] = {}
        self.extra: dict[str, Any] = {}

    def _devices(self) -> list[int]:
        ids = sorted(d for d, dd in self.ctx.data.devices.items() if len(dd.test))
        n = self.options.max_devices
        if n and n < len(ids):
            rng = np.random.default_rng(np.random.SeedSequence([self.ctx.seed, 31]))
            ids = sorted(int(i) for i in rng.choice(ids, size=n, replace=False))
        return ids

    def num_rounds(self) -> int:
        return 1

    def _feature(self) -> str:
        schema = self.ctx.data.full.schema
        f = self.options.user_feature or default_user_feature(schema)
        if f not in schema:
            raise ConfigError(
                f"method.options.user_feature {f!r} is not a field of {list(schema.names)}"
            )
        return f

    def _embedding(self, feature: str) -> np.ndarray | None:
        """The feature's rows of M0's embedding table (``vector_mode = "embedding"``)."""
        if self.options.vector_mode != "embedding":
            return None
        model = self.ctx.model_spec.build()
        load_flat_parameters(model, self.cloud_vec)
        table = model.embedding.embedding.weight.detach().numpy()
        return field_embedding_table(table, self.ctx.data.full.schema, feature)

    # --- differential privacy --------------------------------------------------------
    def _sigmas(self) -> tuple[float, ...]:
        o = self.options
        return (o.sigma, *[s for s in o.sigma_sweep if s != o.sigma])

    def _dp_plan(self, dev: int) -> tuple[DPSGDSettings, tuple[DPUse, ...]]:
        """The device's DP-SGD settings and planned trainings (memoised)."""
        if dev not in self._dp_cache:
            n_local = min(len(self.ctx.data.devices[dev].train), self.options.local_capacity)
            self._dp_cache[dev] = device_dp_plan(
                self.ctx.config, self.options, n_local=n_local, n_sigmas=len(self._sigmas())
            )
        return self._dp_cache[dev]

    def _planned_for(self, dev: int, round: int) -> list[LedgerRecord]:
        dp, uses = self._dp_plan(dev)
        return planned_records(dp, uses, device=dev, round=round)

    def planned_privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """Every DP-SGD record the round can spend, from public sizes only: per device
        the classifier, one CTR training per σ and (with ``baselines``) Local. A device
        that receives no matched rows trains no classifier and spends less."""
        if not self.ctx.config.privacy.dp_sgd:
            return ()
        return tuple(r for dev in self._devices() for r in self._planned_for(dev, round))

    def privacy_records(self, round: int) -> tuple[LedgerRecord, ...]:
        """What the round released: the devices' DP-SGD records and the pool users'
        records of the privatized samples (``unit = "pool_user"``)."""
        return self._records

    # --- the round ---------------------------------------------------------------------
    def _start(self, devices: list[int]) -> None:
        """Place the scored devices' data on the executor's workers (once a run)."""
        if not self._started:
            self.ctx.executor.start({d: self.ctx.data.devices[d] for d in devices})
            self._started = True

    def _generator(self, round: int, stream: int) -> RandomGenerator:
        """Randomness of a privacy measure (pool order, sample randomization): the OS
        CSPRNG, or ``run.seed`` under ``privacy.randomness = "reproducible"``."""
        if self.ctx.config.privacy.randomness == "secure":
            return make_generator(secure=True)
        return np.random.default_rng(np.random.SeedSequence([self.ctx.seed, round, stream]))

    def _he_check(
        self, cloud: CoDACloud, he: HEMatchServer, vector: np.ndarray, users: np.ndarray
    ) -> None:
        """The experimenter's top-K check: the encrypted pick against plaintext KNN on
        the same vector, as a set and up to ties (equal distances)."""
        plain = cloud.matcher.match(vector[None, :], k=self.options.k)[0]
        he.stats.topk_exact += int(set(plain.tolist()) == set(users.tolist()))
        assert cloud.pool_vectors is not None
        row = {int(u): i for i, u in enumerate(cloud.matcher.pool_users)}
        v = np.asarray(vector, dtype=np.float64)

        def dist(us: np.ndarray) -> np.ndarray:
            assert cloud.pool_vectors is not None
            x = np.asarray(cloud.pool_vectors, dtype=np.float64)[[row[int(u)] for u in us]]
            return np.sort(((x - v) ** 2).sum(axis=1))

        he.stats.topk_ties += int(np.allclose(dist(plain), dist(users), rtol=0, atol=1e-6))

    def _tasks(
        self,
        round: int,
        devices: list[int],
        vectors: list[DeviceOutput],
        cloud: CoDACloud,
        he: HEMatchServer | None = None,
    ) -> list[CoDATask]:
        """The server's side: each device's match request, answered with its batches
        for every day (all through the channel), and its learning task. With ``he``
        the request is encrypted (:mod:`~secrelay.relay.coda.he_matching`)."""
        channel = self.ctx.channel
        private = self.ctx.config.privacy.dp_sgd
        tasks = []
        for dev, out in zip(devices, vectors):
            if he is not None:
                vec = np.asarray(out.contribution["user_vector"])
                users = encrypted_match(
                    dev, round, vec, k=self.options.k, channel=channel, server=he
                )
                self._he_check(cloud, he, vec, users)
                served = cloud.serve_users(dev, round, users, days=self.options.days)
                days = tuple(self._deliver(r) for r in served)
            else:
                req = channel.send(match_request(dev, round, out.contribution["user_vector"]))
                assert isinstance(req, QueryMessage)
                days = tuple(self._deliver(r) for r in cloud.serve(req, days=self.options.days))
            dp, uses = self._dp_plan(dev) if private else (None, ())
            seed = int(np.random.SeedSequence([self.ctx.seed, dev, 5]).generate_state(1)[0] % 2**31)
            tasks.append(
                CoDATask(
                    device_id=dev,
                    round=round,
                    models={M0_KEY: self.cloud_vec},
                    seed=seed,
                    replies=days,
                    dp=dp,
                    dp_uses=uses,
                )
            )
        return tasks

    def _deliver(self, replies: list[ReplyMessage]) -> tuple[ReplyMessage, ...]:
        out = []
        for r in replies:
            delivered = self.ctx.channel.send(r)
            assert isinstance(delivered, ReplyMessage)
            out.append(delivered)
        return tuple(out)

    def run_round(self, round: int) -> dict[str, Any]:
        self._records = ()
        o = self.options
        t0 = time.perf_counter()
        feature = self._feature()
        emb = self._embedding(feature)
        privatizer = (
            SamplePrivatizer(self.ctx.data.cloud.schema, o.sample_epsilon)
            if o.privatize_samples
            else None
        )
        cloud = CoDACloud.build(
            self.ctx.data.cloud,
            feature,
            k=o.k,
            mode=o.vector_mode,
            embedding=emb,
            batch_size=o.batch_size,
            max_batch_size=o.max_batch_size,
            max_batches_per_day=o.max_batches_per_day,
            privatizer=privatizer,
            generator=self._generator(round, 47) if privatizer is not None else None,
        )
        he = None
        if self.ctx.config.privacy.he_matching:
            assert cloud.pool_vectors is not None
            he = HEMatchServer(
                cloud.matcher.pool_users,
                cloud.pool_vectors,
                o.he_parameters(),
                generator=self._generator(round, 43) if o.he_shuffle_pool else None,
            )
        devices = self._devices()
        self._start(devices)
        executor = self.ctx.executor
        ask = UserVectorProgram(feature, o.vector_mode, emb)
        asks = [DeviceTask(device_id=d, round=round, models={}, seed=0) for d in devices]
        vectors = executor.map(ask, asks)
        tasks = self._tasks(round, devices, vectors, cloud, he)
        pool_records = (
            privatizer.records(
                cloud.store.drain_releases(), run_id=self.ctx.config.run.name, round=round
            )
            if privatizer is not None
            else []
        )
        # The samples are released once served, whatever happens to the devices.
        self._records = tuple(pool_records)
        self._ledger_without_session(pool_records)
        learn = CoDAProgram(
            o, self.ctx.model_spec, make_train_config(self.ctx.config.local), self._sigmas()
        )
        outputs = executor.map(learn, tasks)
        # What the devices trained is released, even if one of them failed.
        self._records = (
            *(r for out in outputs for r in out.privacy_records),
            *pool_records,
        )
        for dev, out in zip(devices, outputs):
            if "error" in out.private:
                raise out.private["error"]
            if self.ctx.config.privacy.dp_sgd:
                check_spent(dev, self._planned_for(dev, round), list(out.privacy_records))
        counters = self._collect(devices, outputs)
        rec = self._record(round, feature, counters, len(devices))
        rec.update(
            {f"store/{k}": v for k, v in cloud.store.stats().items()}
            | {
                "payload_bytes_total": counters.get("payload_bytes", 0),
                "payload_raw_bytes_total": counters.get("raw_bytes", 0),
                "payload_memory_bytes_total": counters.get("memory_bytes", 0),
                "index_seconds": cloud.index_seconds,
                "match_seconds": cloud.match_seconds,
                "seconds": time.perf_counter() - t0,
            }
        )
        if he is not None:
            rec.update(he.stats.as_metrics())
        if privatizer is not None:
            rec.update(self._privatized(privatizer, pool_records))
        self.extra = rec
        return rec

    def _ledger_without_session(self, records: list[LedgerRecord]) -> None:
        """Spend the pool users' records into the run's privacy ledger when the runner
        keeps none (no device-level DP: it spends :meth:`privacy_records` only for a
        plan with differential privacy). With DP on, the runner's session spends them
        with the round's other records — writing here too would count them twice."""
        if records and not self.ctx.privacy.differential_privacy:
            PrivacyLedger.open(self.ctx.run_dir / LEDGER_FILE).spend(records)

    def _privatized(
        self, privatizer: SamplePrivatizer, records: list[LedgerRecord]
    ) -> dict[str, float]:
        """Summarise the privatized release for the round's metrics. The records are
        in the run's privacy ledger (``unit = "pool_user"``: ε per pool user, never
        summed across pool users or into the devices' ε); run directories written
        before kept them in ``coda_pool_ledger.jsonl``, which ``secrelay audit`` reads."""
        counts = [r.steps or 0 for r in records]
        return {
            "privatized/epsilon_per_sample": float(privatizer.epsilon),
            "privatized/samples_released": float(sum(counts)),
            "privatized/pool_users": float(len(records)),
            "privatized/max_pool_user_epsilon": float(max(counts, default=0))
            * float(privatizer.epsilon),
        }

    def _collect(self, devices: list[int], outputs: list[DeviceOutput]) -> dict[str, float]:
        """Pool the devices' test predictions, and M0's (the Cloud baseline, scored
        here), into :attr:`results`; return the devices' summed counters."""
        preds: dict[str, list[np.ndarray]] = {}
        counters: dict[str, float] = {}
        ys, gs = [], []
        model = self.ctx.model_spec.build()
        load_flat_parameters(model, self.cloud_vec)
        for dev, out in zip(devices, outputs):
            test = self.ctx.data.devices[dev].test
            for key, v in out.stats.items():
                counters[key] = counters.get(key, 0) + v
            for key, p in out.private["predictions"].items():
                preds.setdefault(key, []).append(p)
            preds.setdefault("cloud", []).append(predict(model, test))
            ys.append(test.y)
            gs.append(test.user)
        self.results = {k: np.concatenate(v) for k, v in preds.items()}
        self.results["__y"], self.results["__g"] = np.concatenate(ys), np.concatenate(gs)
        return counters

    def _record(
        self, round: int, feature: str, counters: Mapping[str, float], n_dev: int
    ) -> dict[str, Any]:
        """The round's metrics: every variant's AUC / gAUC / logloss, the main σ's
        as the headline, and the per-device means of the counters."""
        y, grp = self.results["__y"], self.results["__g"]
        rec: dict[str, Any] = {"round": round, "devices": n_dev, "feature": feature}
        for key, p in self.results.items():
            if key.startswith("__"):
                continue
            m = evaluate_predictions(y, p, grp)
            name = key.replace("sigma/", "sigma_")
            rec.update({f"{name}/auc": m.auc, f"{name}/gauc": m.gauc, f"{name}/logloss": m.logloss})
        main = evaluate_predictions(y, self.results[f"sigma/{self.options.sigma:g}"], grp)
        rec.update(main.as_dict())
        rec.update({k.replace("/", "_"): v / n_dev for k, v in counters.items()})
        return rec

    def evaluate(self) -> Metrics:
        o = self.options
        if not self.results:
            model = self.ctx.model_spec.build()
            load_flat_parameters(model, self.cloud_vec)
            tests = [self.ctx.data.devices[d].test for d in self._devices()]
            test = CTRDataset.concat(tests)
            return evaluate_predictions(test.y, predict(model, test), test.user)
        return evaluate_predictions(
            self.results["__y"], self.results[f"sigma/{o.sigma:g}"], self.results["__g"]
        )

    def state_dict(self) -> dict[str, Any]:
        return {"cloud": self.cloud_vec, "results": dict(self.results), "extra": dict(self.extra)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.options = CoDAOptions.from_mapping(self.ctx.config.method.options)
        self.cloud_vec = np.asarray(state["cloud"])
        self.results = dict(state["results"])
        self.extra = dict(state["extra"])

    def close(self) -> None:
        self.ctx.executor.close()
        self._started = False
