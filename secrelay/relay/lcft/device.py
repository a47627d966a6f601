"""The device's part of LCFT: fine-tuning the cloud model with corrected labels.

Everything here runs on the device; its local CTR, (α, β), fine-tuned models and
predictions stay in its private state and nothing is uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protocols.dp import LedgerRecord
from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset
from secrelay.federated.client import (
    ClientProgram,
    DeviceData,
    DeviceOutput,
    DeviceTask,
    ModelSpec,
    load_flat_parameters,
    single_thread,
)
from secrelay.privacy.dpsgd import DPSGDTrainer
from secrelay.relay.lcft.corrections import (
    CorrectionPath,
    CorrectionTable,
    corrected_labels,
    correction_pair,
)
from secrelay.training import TrainConfig, predict, train_epochs

__all__ = ["LCFTProgram", "fine_tune"]


def fine_tune(
    spec: ModelSpec,
    start: np.ndarray,
    train: CTRDataset,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
) -> torch.nn.Module:
    """The model ``spec`` from ``start``, fine-tuned on ``train`` with ``labels``
    (the corrected labels) under ``config``; deterministic by ``seed``."""
    torch.manual_seed(seed)  # dropout inside the model, as LocalTrainingProgram does
    model = spec.build()
    load_flat_parameters(model, start)
    train_epochs(model, train, config, generator=torch.Generator().manual_seed(seed), labels=labels)
    return model


@dataclass(frozen=True)
class LCFTProgram(ClientProgram):
    """What a device does: fine-tune the downloaded cloud model on its train data
    with each listed correction's labels and keep the results.

    The device's local CTR, its (α, β) and its predictions stay in its private
    state; nothing is uploaded. On the query path (``correction_path = "query"``)
    the hard correction's (α, β) is the server's answer to the device's query,
    which :class:`~secrelay.relay.lcft.method.LCFTMethod` stored in the device's private state
    (``"query/hard"``) before the round; the device holds no table.
    """

    model: ModelSpec
    train: TrainConfig
    global_ctr: float
    corrections: tuple[str, ...]
    table: CorrectionTable | None = None
    correction_path: CorrectionPath = "table"
    dp_trainer: DPSGDTrainer | None = None

    def _pair(self, correction: str, local_ctr: float, task: DeviceTask) -> tuple[float, float]:
        if correction == "hard" and self.correction_path == "query":
            if "query/hard" not in task.private:
                raise InvalidParameterError(
                    f"device {task.device_id}: the hard correction on the query path needs the "
                    "server's answer (`query/hard` in the device's state); none was received"
                )
            a, b = task.private["query/hard"]
            return float(a), float(b)
        return correction_pair(correction, local_ctr, self.global_ctr, self.table)

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        """Fine-tune once per correction; keep local CTR, pairs and predictions private."""
        start = np.asarray(task.models["global"], dtype=np.float32)
        w_i = data.train.ctr
        private: dict[str, Any] = {"local_ctr": w_i}
        with single_thread():
            cloud_model = self.model.build()
            load_flat_parameters(cloud_model, start)
            private["predictions/cloud"] = predict(cloud_model, data.test)
            records: list[LedgerRecord] = []
            for c in self.corrections:
                a, b = self._pair(c, w_i, task)
                labels = corrected_labels(data.train.y, a, b)
                if self.dp_trainer is None:
                    model = fine_tune(
                        self.model, start, data.train, labels, self.train, seed=task.seed
                    )
                else:  # example-level DP-SGD; its record is spent for every correction
                    torch.manual_seed(task.seed)
                    model = self.model.build()
                    load_flat_parameters(model, start)
                    out = self.dp_trainer.train_round(
                        model,
                        data,
                        generator=torch.Generator().manual_seed(task.seed),
                        reference=None,
                        task=task,
                        labels=labels,
                    )
                    records.extend(out.privacy_records)
                private[f"predictions/{c}"] = predict(model, data.test)
                private[f"pair/{c}"] = (a, b)
        private["predictions"] = private[f"predictions/{self.corrections[0]}"]
        return DeviceOutput(
            {},
            private=private,
            stats={"loss": float("nan"), "steps": 0.0},
            privacy_records=tuple(records),
        )
