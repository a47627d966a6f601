"""Executors run the sampled devices' programs, sequentially or in parallel.

The interface is one method, :meth:`Executor.map`, over picklable
:class:`~secrelay.federated.client.DeviceTask` objects; device data is shipped to
workers once, by :meth:`Executor.start`. A distributed engine (Ray actors, one per
shard of devices) can implement the same two methods without any change to
strategies or the round loop.

Results do not depend on the executor: every task carries its own seed and local
training runs on one torch thread (:func:`secrelay.federated.client.single_thread`).
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from typing import Literal

from protocols.errors import InvalidParameterError
from secrelay.federated.client import ClientProgram, DeviceData, DeviceOutput, DeviceTask

__all__ = [
    "Executor",
    "ProcessPoolExecutor",
    "SequentialExecutor",
    "in_worker_bootstrap",
    "make_executor",
]


class Executor(abc.ABC):
    """Runs a :class:`ClientProgram` on many devices."""

    def start(self, devices: Mapping[int, DeviceData]) -> None:
        """Make ``devices`` available to the workers (called once per run)."""
        self._devices = dict(devices)

    @abc.abstractmethod
    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        """Run ``program`` for every task; outputs in task order."""

    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Runs devices one after another in this process."""

    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        return [program.run(self._devices[t.device_id], t) for t in tasks]


_WORKER_DEVICES: dict[int, DeviceData] = {}


def in_worker_bootstrap() -> bool:
    """Whether this process is a spawned worker still importing its parent's
    ``__main__`` (an unguarded script re-running its top level in the worker)."""
    return bool(getattr(mp.process.current_process(), "_inheriting", False))


def _init_worker(devices: dict[int, DeviceData]) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER_DEVICES.clear()
    _WORKER_DEVICES.update(devices)


def _run_one(program: ClientProgram, task: DeviceTask) -> DeviceOutput:
    return program.run(_WORKER_DEVICES[task.device_id], task)


class ProcessPoolExecutor(Executor):
    """Runs devices in a pool of worker processes (one torch thread each).

    Parameters
    ----------
    workers:
        Number of processes (default: the machine's CPU count).
    start_method:
        ``"spawn"`` (default, safe with torch) or ``"fork"`` / ``"forkserver"``.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        start_method: Literal["spawn", "fork", "forkserver"] = "spawn",
    ) -> None:
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise InvalidParameterError(f"`workers` must be >= 1; got {workers!r}")
        self.workers = n
        self.start_method = start_method
        self._pool: cf.ProcessPoolExecutor | None = None

    def start(self, devices: Mapping[int, DeviceData]) -> None:
        self.close()
        self._pool = cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context(self.start_method),
            initializer=_init_worker,
            initargs=(dict(devices),),
        )

    def map(self, program: ClientProgram, tasks: Sequence[DeviceTask]) -> list[DeviceOutput]:
        if self._pool is None:
            raise InvalidParameterError("ProcessPoolExecutor.map() called before start()")
        futures = [self._pool.submit(_run_one, program, t) for t in tasks]
        try:
            return [f.result() for f in futures]
        except cf.process.BrokenProcessPool:
            self._pool = None
            raise InvalidParameterError(
                "a device worker process died before finishing its task. With the process "
                "executor, a script that calls secrelay must guard its entry point with "
                '`if __name__ == "__main__":` (workers re-import the script when they '
                "start); otherwise check the worker's error above, or use "
                "run.executor = 'sequential'"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_executor(kind: str, workers: int | None = None) -> Executor:
    """``"sequential"`` or ``"process"`` (a :class:`ProcessPoolExecutor`)."""
    if kind == "sequential":
        return SequentialExecutor()
    if kind == "process":
        return ProcessPoolExecutor(workers)
    raise InvalidParameterError(f"`executor` must be 'sequential' or 'process'; got {kind!r}")
