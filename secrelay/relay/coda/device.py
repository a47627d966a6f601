"""CoDA, device side: one device's state and learning (Algorithms 2 and 3).

:class:`CoDADevice` holds a device's bounded sample tables and model versions
(:mod:`secrelay.relay.coda.storage`), decodes the matched batches it receives, and
runs the sample filter (:mod:`secrelay.relay.coda.filtering`) and the fine-tuning
(:mod:`secrelay.relay.coda.training`) for every σ; under example-level DP-SGD each
training spends exactly what :func:`~secrelay.relay.coda.privacy.plan_dp_uses` planned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from protocols.dp import LedgerRecord
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    DeviceData,
    flat_parameters,
    load_flat_parameters,
    single_thread,
)
from secrelay.federated.messages import ReplyMessage
from secrelay.relay.coda.filtering import (
    CLASSIFIER_BATCH_SIZE,
    filter_matched,
    filter_matched_private,
)
from secrelay.relay.coda.matching import VectorMode, user_vectors
from secrelay.relay.coda.options import CoDAOptions
from secrelay.relay.coda.payload import BATCH_TOPIC, decode_payload
from secrelay.relay.coda.privacy import DPUse
from secrelay.relay.coda.storage import ModelStore, SampleTable
from secrelay.relay.coda.training import DPSGDSettings, gated_train, private_train
from secrelay.training import TrainConfig, predict, train_epochs

__all__ = ["CoDADevice", "device_user_vector"]


def device_user_vector(
    train: CTRDataset,
    feature: str,
    *,
    mode: VectorMode = "onehot",
    embedding: np.ndarray | None = None,
) -> np.ndarray:
    """A device's own user vector, the mean of ``feature`` over its local samples
    ``train`` (one user): what it sends in its match request."""
    _, vecs = user_vectors(train, feature, mode=mode, embedding=embedding)
    vec: np.ndarray = vecs[0]
    return vec


class CoDADevice:
    """One device's CoDA state: sample tables, model versions, and its learning.

    Parameters
    ----------
    data:
        The device's own data (train = local samples, test = its later rows).
    initial:
        The downloaded cloud model M0 (flat parameters).
    dp, dp_uses:
        Example-level DP-SGD (``privacy.dp_sgd``): the settings, and the planned
        trainings (:func:`plan_dp_uses`) whose steps per epoch every private
        training uses. ``None`` trains without DP.
    round:
        Written into the ledger records.
    """

    def __init__(
        self,
        data: DeviceData,
        initial: np.ndarray,
        options: CoDAOptions,
        *,
        model_builder: Callable[[], torch.nn.Module],
        train_config: TrainConfig,
        seed: int,
        dp: DPSGDSettings | None = None,
        dp_uses: tuple[DPUse, ...] = (),
        round: int = 1,
    ) -> None:
        if dp is not None and options.gate:
            raise InvalidParameterError(
                "DP-SGD training needs options.gate = false: the validation gate is a "
                "non-private decision on held-out local rows"
            )
        self.dp = dp
        self.dp_steps = {u.mechanism: u.steps_per_epoch for u in dp_uses}
        if dp is not None and not {"coda_classifier", "coda_ctr"} <= set(self.dp_steps):
            raise InvalidParameterError(
                f"`dp_uses` must plan 'coda_classifier' and 'coda_ctr'; got {sorted(self.dp_steps)}"
            )
        self.round = round
        self.privacy_records: list[LedgerRecord] = []
        self.data = data
        self.options = options
        self.schema = data.train.schema
        self.models = ModelStore(initial)
        self.local = SampleTable(capacity=options.local_capacity, ttl_days=options.ttl_days)
        self.matched = SampleTable(capacity=options.matched_capacity, ttl_days=options.ttl_days)
        ids = np.arange(len(data.train))
        self.local.insert(ids, data.train.x, data.train.y, day=0)
        self._build = model_builder
        self.train_config = train_config
        self.seed = seed
        self.payload_bytes = 0
        self.raw_bytes = 0
        self.memory_bytes = 0

    def user_vector(self, feature: str, embedding: np.ndarray | None) -> np.ndarray:
        """The device's own user vector, from its local samples (never sent in the
        clear once the CKKS layer wraps the request)."""
        return device_user_vector(
            self.data.train, feature, mode=self.options.vector_mode, embedding=embedding
        )

    def receive(self, reply: ReplyMessage, *, day: int) -> int:
        """Decode a batch payload into the matched table; returns rows received."""
        if reply.topic != BATCH_TOPIC:
            raise InvalidParameterError(f"expected a {BATCH_TOPIC!r} reply; got {reply.topic!r}")
        batch = decode_payload(reply.blob, n_columns=self.schema.n_columns)
        self.payload_bytes += len(reply.blob)
        n, cols = batch.x.shape
        self.raw_bytes += n * (8 + 4 * cols + 1)  # the same arrays, uncompressed
        self.memory_bytes += n * (8 + 8 * cols + 4)  # int64 ids and features, float32 labels
        self.matched.insert(batch.sample_ids, batch.x, batch.y, day=day)
        return len(batch.sample_ids)

    def _dataset(self, x: np.ndarray, y: np.ndarray) -> CTRDataset:
        n = len(y)
        return CTRDataset(
            self.schema,
            x.reshape(n, self.schema.n_columns),
            y,
            np.full(n, self.data.device_id),
            np.zeros(n, np.int64),
        )

    def _fresh(self) -> torch.nn.Module:
        model: torch.nn.Module = self._build()
        load_flat_parameters(model, self.models.m0)
        return model

    def _fit(
        self, model: torch.nn.Module, train: CTRDataset, mechanism: str, gen: torch.Generator
    ) -> None:
        """Fine-tune on ``train``: plain, or DP-SGD with the planned steps (recorded)."""
        if self.dp is None:
            train_epochs(model, train, self.train_config, generator=gen)
            return
        res = private_train(
            model,
            train,
            self.train_config,
            steps_per_epoch=self.dp_steps[mechanism],
            dp=self.dp,
            round=self.round,
            device_id=str(self.data.device_id),
            mechanism=mechanism,
            generator=gen,
        )
        self.privacy_records.append(res.record)

    def learn(self, sigmas: tuple[float, ...]) -> dict[str, Any]:
        """Algorithms 2 and 3 for every σ; the first σ's model is committed as M.

        Returns the test predictions of every variant and bookkeeping. Under DP-SGD
        the ledger records of every training are in :attr:`privacy_records`.
        """
        o = self.options
        _, lx, ly = self.local.arrays()
        local = self._dataset(lx, ly)
        n = len(local)
        n_val = min(max(round(o.validation_fraction * n), 1), n - 1) if o.gate and n >= 2 else 0
        fit, val = local.subset(np.arange(n - n_val)), local.subset(np.arange(n - n_val, n))
        _, mx, my = self.matched.arrays()
        matched = self._dataset(mx, my) if len(my) else local.subset(np.zeros(0, np.int64))
        test = self.data.test
        out: dict[str, Any] = {"n_matched": len(matched)}
        self.privacy_records = []

        def g(k: int) -> torch.Generator:
            return torch.Generator().manual_seed(self.seed + k)

        with single_thread():
            torch.manual_seed(self.seed)
            # Baselines: Local (plain fine-tuning on every local row) and Local+gate.
            if o.baselines:
                model = self._fresh()
                self._fit(model, local, "coda_local", g(1))
                out["local"] = predict(model, test)
                if o.gate and n_val:
                    model = self._fresh()
                    gated_train(model, fit, val, self.train_config, generator=g(2))
                    out["local_gate"] = predict(model, test)
                elif o.gate:
                    out["local_gate"] = out["local"]
            cfg = TrainConfig(
                epochs=o.classifier_epochs, batch_size=CLASSIFIER_BATCH_SIZE, lr=o.classifier_lr
            )
            if len(matched) and self.dp is not None:
                res = filter_matched_private(
                    local,
                    matched,
                    steps_per_epoch=self.dp_steps["coda_classifier"],
                    dp=self.dp,
                    round=self.round,
                    device_id=str(self.data.device_id),
                    sigma=0.0,
                    train_fraction=o.classifier_fraction,
                    config=cfg,
                    seed=self.seed,
                    generator=g(5),
                )
                scores = res.scores
                self.privacy_records.append(res.record)
            elif len(matched):
                _, scores = filter_matched(
                    local,
                    matched,
                    sigma=0.0,
                    train_fraction=o.classifier_fraction,
                    config=cfg,
                    seed=self.seed,
                )
            else:
                scores = np.zeros(0)
            for i, sigma in enumerate(sigmas):
                keep = scores >= sigma
                kept = matched.subset(np.flatnonzero(keep))
                out[f"kept/{sigma:g}"] = int(keep.sum())
                if o.ungated:
                    plain = CTRDataset.concat([local, kept])
                    model = self._fresh()
                    train_epochs(model, plain, self.train_config, generator=g(4))
                    out[f"sigma/{sigma:g}_nogate"] = predict(model, test)
                if not o.gate:
                    # No gate: fine-tune on every local row + the kept matched rows.
                    buf_model = self._fresh()
                    self._fit(buf_model, CTRDataset.concat([local, kept]), "coda_ctr", g(3))
                    out[f"sigma/{sigma:g}"] = predict(buf_model, test)
                elif n_val == 0:
                    model = self._fresh()
                    train_epochs(model, local, self.train_config, generator=g(1))
                    out[f"sigma/{sigma:g}"] = predict(model, test)
                    continue
                else:
                    train = CTRDataset.concat([fit, kept])
                    buf_model = self._fresh()
                    res_g = gated_train(buf_model, train, val, self.train_config, generator=g(3))
                    out[f"sigma/{sigma:g}"] = predict(buf_model, test)
                    out[f"accepted/{sigma:g}"] = res_g.accepted
                    out[f"rejected/{sigma:g}"] = res_g.rejected
                if i == 0:
                    self.models.buffer()[:] = flat_parameters(buf_model)
                    self.models.commit()
        return out
