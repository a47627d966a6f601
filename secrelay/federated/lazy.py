"""Device data that is materialized where it is read, not where the run starts.

A :class:`LazyDeviceData` stands in for a device's :class:`DeviceData`: it holds the
device id and a picklable :class:`DeviceSource`, and loads the rows on first access
to ``train`` / ``test`` / ``extra``. Handed to any executor, the rows are therefore
built in the worker that runs the device's task — a process-pool worker, a Ray
actor — and the server holds a few hundred bytes per device instead of its rows.
Each source keeps the last few devices it loaded (per process), so one task reads
its device's rows once.

The loop reads the ``test`` split of the devices it evaluates: every device, or a
fixed sample of ``[federated] eval_devices`` of them, which a run at scale sets
(``secrelay run`` with ``[data] name = "population"``, :mod:`secrelay.methods.data`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from secrelay.data.dataset import CTRDataset
from secrelay.data.population import SyntheticPopulation
from secrelay.federated.client import DeviceData

__all__ = [
    "DeviceSource",
    "LazyDeviceData",
    "PopulationSource",
    "lazy_devices",
]


@runtime_checkable
class DeviceSource(Protocol):
    """Loads one device's data (picklable; called in the worker)."""

    def load(self, device_id: int) -> DeviceData: ...


@dataclass(frozen=True, eq=False)
class PopulationSource:
    """A :class:`DeviceSource` over a :class:`SyntheticPopulation` (each device's rows
    drawn from its own stream); keeps the ``cache_size`` devices it loaded last."""

    population: SyntheticPopulation
    cache_size: int = 8
    _cache: OrderedDict[int, DeviceData] = field(
        default_factory=OrderedDict, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        return {"population": self.population, "cache_size": self.cache_size}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        object.__setattr__(self, "population", state["population"])
        object.__setattr__(self, "cache_size", state["cache_size"])
        object.__setattr__(self, "_cache", OrderedDict())

    @property
    def cached_ids(self) -> tuple[int, ...]:
        """The devices whose rows this process holds now (oldest first)."""
        return tuple(self._cache)

    def load(self, device_id: int) -> DeviceData:
        dev = int(device_id)
        hit = self._cache.get(dev)
        if hit is not None:
            self._cache.move_to_end(dev)
            return hit
        train, test = self.population.device(dev)
        data = DeviceData(device_id=dev, train=train, test=test)
        self._cache[dev] = data
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data


class LazyDeviceData(DeviceData):
    """A device's data, loaded from ``source`` on first read (see the module doc)."""

    def __init__(self, device_id: int, source: DeviceSource) -> None:
        object.__setattr__(self, "device_id", int(device_id))
        object.__setattr__(self, "source", source)

    def _data(self) -> DeviceData:
        src: DeviceSource = self.__dict__["source"]
        return src.load(self.device_id)

    @property
    def train(self) -> CTRDataset:
        return self._data().train

    @property
    def test(self) -> CTRDataset:
        return self._data().test

    @property
    def extra(self) -> Mapping[str, CTRDataset]:
        return self._data().extra

    def __repr__(self) -> str:
        return f"LazyDeviceData(device_id={self.device_id})"


def lazy_devices(source: DeviceSource, device_ids: Iterable[int]) -> dict[int, DeviceData]:
    """``{id: LazyDeviceData(id, source)}`` for a loop or an executor."""
    return {int(d): LazyDeviceData(int(d), source) for d in device_ids}
