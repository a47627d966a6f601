"""CoDA's device phase as executor programs: what each device runs, in two steps.

A round's device work runs through the run's
:class:`~secrelay.federated.executor.Executor`, like every other method's, with the
device data placed on the workers once (:meth:`Executor.start`):

1. :class:`UserVectorProgram` — the device computes its user vector from its own
   samples; the server wraps it in the match request
   (:func:`~secrelay.relay.coda.payload.match_request`) and
   answers with the matched batches (:class:`~secrelay.relay.coda.cloud.CoDACloud`,
   on the server);
2. :class:`CoDAProgram` — the device decodes the batches it received, day by day,
   filters them, fine-tunes M0 for every σ and scores each variant on its test
   rows (:meth:`CoDADevice.learn`), carrying its DP-SGD ledger records back.

Every task carries its own seed and training runs on one torch thread, so results
do not depend on the executor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.federated.client import ClientProgram, DeviceData, DeviceOutput, DeviceTask, ModelSpec
from secrelay.federated.messages import ReplyMessage
from secrelay.relay.coda.device import CoDADevice, device_user_vector
from secrelay.relay.coda.matching import VectorMode
from secrelay.relay.coda.options import CoDAOptions
from secrelay.relay.coda.privacy import DPUse
from secrelay.relay.coda.training import DPSGDSettings
from secrelay.training import TrainConfig

__all__ = ["M0_KEY", "CoDAProgram", "CoDATask", "UserVectorProgram"]

# The downloaded cloud model M0 in a task's ``models``.
M0_KEY = "m0"
# The counters a device reports besides the scalars of :meth:`CoDADevice.learn`.
_BYTE_COUNTERS = ("payload_bytes", "raw_bytes", "memory_bytes")


@dataclass(frozen=True, eq=False)
class UserVectorProgram(ClientProgram):
    """Step 1: the device's user vector (``contribution["user_vector"]``), the mean
    of ``feature`` over its train rows; ``embedding`` is the feature's rows of the
    cloud model's embedding table (``mode = "embedding"`` only)."""

    feature: str
    mode: VectorMode = "onehot"
    embedding: np.ndarray | None = None

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        vec = device_user_vector(data.train, self.feature, mode=self.mode, embedding=self.embedding)
        return DeviceOutput({"user_vector": vec})


@dataclass(frozen=True)
class CoDATask(DeviceTask):
    """Step 2's task: M0 in ``models[M0_KEY]``, the batches delivered on each day
    (``replies[d]``: day ``d``), and the device's DP-SGD settings and planned
    trainings (``dp = None``: no DP)."""

    replies: tuple[tuple[ReplyMessage, ...], ...] = ()
    dp: DPSGDSettings | None = None
    dp_uses: tuple[DPUse, ...] = ()


@dataclass(frozen=True)
class CoDAProgram(ClientProgram):
    """Step 2: receive, filter, fine-tune and score (one :class:`CoDADevice`).

    The output's ``private["predictions"]`` maps each variant (``"local"``,
    ``"sigma/<σ>"``, …) to the predictions on the device's test rows; ``stats``
    holds the byte counters and the scalars of :meth:`CoDADevice.learn`. If a step
    fails, the records of the trainings that ran still come back, with the
    exception in ``private["error"]`` (what a device trained is released).
    """

    options: CoDAOptions
    model: ModelSpec
    train_config: TrainConfig
    sigmas: tuple[float, ...]

    def run(self, data: DeviceData, task: DeviceTask) -> DeviceOutput:
        if not isinstance(task, CoDATask):
            raise InvalidParameterError(f"CoDAProgram needs a CoDATask; got {type(task).__name__}")
        device: CoDADevice | None = None
        try:
            device = CoDADevice(
                data,
                task.models[M0_KEY],
                self.options,
                model_builder=self.model.build,
                train_config=self.train_config,
                seed=task.seed,
                dp=task.dp,
                dp_uses=task.dp_uses,
                round=task.round,
            )
            for day, replies in enumerate(task.replies):
                for r in replies:
                    device.receive(r, day=day)
                device.matched.expire(day)
            out = device.learn(self.sigmas)
        except Exception as exc:  # re-raised by the method once the records are kept
            spent = () if device is None else tuple(device.privacy_records)
            return DeviceOutput({}, private={"error": exc}, privacy_records=spent)
        preds = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
        stats: dict[str, float] = {k: getattr(device, k) for k in _BYTE_COUNTERS}
        stats.update({k: float(v) for k, v in out.items() if not isinstance(v, np.ndarray)})
        return DeviceOutput(
            {},
            private={"predictions": preds},
            stats=stats,
            privacy_records=tuple(device.privacy_records),
        )
