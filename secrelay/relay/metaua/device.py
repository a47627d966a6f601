"""The MetaUA device program: query gradient, local training, attributes, the sums.

Runs on the device with its own data; only the named sums of
:func:`~secrelay.relay.metaua.attributes.client_contribution` leave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    ClientProgram,
    DeviceData,
    DeviceOutput,
    DeviceTask,
    LocalTrainer,
    ModelSpec,
    UpdateTransform,
    flat_parameters,
    load_flat_parameters,
    single_thread,
)
from secrelay.relay.metaua.attributes import Weighting, client_contribution, normalise_attributes
from secrelay.relay.metaua.layers import LayerPartition
from secrelay.training import soft_bce_with_logits

__all__ = ["GLOBAL_KEY", "THETA_ALPHA_KEY", "MetaUAProgram"]

GLOBAL_KEY = "global"
"""Download key of the global model w."""

THETA_ALPHA_KEY = "metaua/theta_alpha"
"""Download key of θ_α (flattened ``(L, m)``): the device needs it to compute e_k."""


def _loss_and_grad(
    model: torch.nn.Module, data: CTRDataset, *, need_grad: bool
) -> tuple[float, np.ndarray | None]:
    """Mean BCE of ``model`` on ``data`` and (optionally) its flat gradient."""
    model.eval()
    x = torch.from_numpy(np.array(data.x))
    y = torch.from_numpy(np.array(data.y, dtype=np.float32))
    model.zero_grad(set_to_none=True)
    if need_grad:
        loss = soft_bce_with_logits(model(x), y)
        params = list(model.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        g = torch.cat(
            [
                (gr if gr is not None else torch.zeros_like(p)).reshape(-1)
                for gr, p in zip(grads, params)
            ]
        )
        return float(loss.detach()), g.numpy().astype(np.float64)
    with torch.no_grad():
        return float(soft_bce_with_logits(model(x), y)), None


@dataclass(frozen=True)
class MetaUAProgram(ClientProgram):
    """The MetaUA device: query gradient, local training, attributes, the sums.

    Per round, on the device: split the training rows once (fixed per device) into
    a query part (``query_fraction``) and a support part; compute
    ``g_k = ∂L_k(query)/∂w`` at the downloaded ``w``; train locally (on all rows or
    on the support part, ``train_on``); compute the attributes ``z_k`` and
    ``e_k = b_k · exp(θ_α z_k)`` from the downloaded θ_α; contribute
    :func:`~secrelay.relay.metaua.attributes.client_contribution`. Only the sums
    leave the device.
    """

    model: ModelSpec
    trainer: LocalTrainer
    partition: LayerPartition
    attributes: tuple[str, ...]
    query_fraction: float = 0.2
    train_on: Literal["all", "support"] = "all"
    weighting: Weighting = "samples"
    split_seed: int = 0
    transforms: tuple[UpdateTransform, ...] = ()

    def split(self, data: DeviceData) -> tuple[CTRDataset, CTRDataset]:
        """(support, query) of the device's training rows; the same every round."""
        n = len(data.train)
        rng = np.random.default_rng(np.random.SeedSequence([self.split_seed, data.device_id, 71]))
        k = min(max(round(self.query_fraction * n), 1), n - 1) if n >= 2 else 0
        perm = rng.permutation(n)
        query = data.train.subset(np.sort(perm[:k])) if k else data.train
        support = data.train.subset(np.sort(perm[k:])) if k else data.train
        return support, query

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        """One round on the device; returns its sums (and loss/step stats)."""
        if GLOBAL_KEY not in task.models or THETA_ALPHA_KEY not in task.models:
            raise InvalidParameterError(
                f"MetaUA needs models {GLOBAL_KEY!r} and {THETA_ALPHA_KEY!r}; "
                f"got {sorted(task.models)}"
            )
        m = len(self.attributes)
        theta_alpha = np.asarray(task.models[THETA_ALPHA_KEY], dtype=np.float64).reshape(
            self.partition.num_layers, m
        )
        start = np.asarray(task.models[GLOBAL_KEY], dtype=np.float32)
        support, query = self.split(data)
        train_rows = data.train if self.train_on == "all" else support
        local = DeviceData(data.device_id, train_rows, data.test)
        need = set(self.attributes)
        with single_thread():
            torch.manual_seed(task.seed)
            generator = torch.Generator().manual_seed(task.seed)
            model = self.model.build()
            load_flat_parameters(model, start)
            _, g_query = _loss_and_grad(model, query, need_grad=True)
            raw: dict[str, float] = {
                "sample_count": float(len(train_rows)),
                "positive_rate": train_rows.ctr,
                "unique_features": float(np.unique(train_rows.x[train_rows.x != 0]).size),
            }
            if need & {"local_loss", "grad_norm", "loss_ratio"}:
                before, g_train = _loss_and_grad(model, train_rows, need_grad="grad_norm" in need)
                raw["local_loss"] = before
                if g_train is not None:
                    raw["grad_norm"] = float(np.linalg.norm(g_train))
            reference = None
            if self.trainer.prox_mu > 0:
                reference = [p.detach().clone() for p in model.parameters()]
            outcome = self.trainer.train_round(
                model, local, generator=generator, reference=reference, task=task
            )
            steps, loss = outcome.steps, outcome.loss
            if "loss_ratio" in need:
                after, _ = _loss_and_grad(model, train_rows, need_grad=False)
                raw["loss_ratio"] = after / max(raw["local_loss"], 1e-12)
            delta = (flat_parameters(model) - start).astype(np.float32)
        rng = np.random.default_rng(np.random.SeedSequence([task.seed, 1]))
        for t in self.transforms:
            delta = t.apply(delta, rng=rng)
        z = normalise_attributes(raw, self.attributes)
        base = float(len(train_rows)) if self.weighting == "samples" else 1.0
        assert g_query is not None
        contribution = client_contribution(
            delta, g_query, z, theta_alpha, base, self.partition.layer_of()
        )
        return DeviceOutput(
            contribution,
            private={"model_key": GLOBAL_KEY},
            stats={"loss": loss, "steps": float(steps)},
            privacy_records=outcome.privacy_records,
        )
