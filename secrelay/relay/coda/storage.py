"""CoDA, device side: bounded sample tables and model versions.

- :class:`SampleTable` — a bounded on-device table (local samples, matched
  samples) with a lifecycle: rows expire ``ttl_days`` after insertion, and an
  insert into a full table first forces a clean-up that evicts the **oldest rows
  first** (by insertion day, then insertion order), so fresh data always fits
  and the table never exceeds its capacity.
- :class:`ModelStore` — the model versions M0 (the downloaded initial model,
  never overwritten), M (the serving model) and Mbuf (the training buffer).
  Training writes only Mbuf; :meth:`ModelStore.commit` publishes it as M by one
  reference swap under a lock, keeping the replaced M for
  :meth:`ModelStore.rollback`; inference reads an immutable snapshot, so it
  never sees a half-written model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from protocols.errors import InvalidParameterError

__all__ = ["ModelStore", "SampleTable"]


@dataclass(frozen=True)
class _Row:
    x: np.ndarray
    y: float
    day: int


class SampleTable:
    """A bounded table of samples keyed by sample ID.

    Parameters
    ----------
    capacity:
        Maximum rows (>= 1).
    ttl_days:
        Rows older than this many days are removed by :meth:`expire` (``None``:
        no expiry).

    Examples
    --------
    >>> t = SampleTable(capacity=2)
    >>> t.insert([1, 2, 3], np.zeros((3, 1), dtype=np.int64), np.zeros(3), day=0)
    [1]
    >>> t.ids()
    [2, 3]
    """

    def __init__(self, *, capacity: int, ttl_days: int | None = None) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise InvalidParameterError(f"`capacity` must be an int >= 1; got {capacity!r}")
        if ttl_days is not None and (not isinstance(ttl_days, int) or ttl_days < 1):
            raise InvalidParameterError(f"`ttl_days` must be an int >= 1 or None; got {ttl_days!r}")
        self.capacity = capacity
        self.ttl_days = ttl_days
        self._rows: OrderedDict[int, _Row] = OrderedDict()  # insertion order = age order
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[int]:
        """Sample IDs, oldest first."""
        return list(self._rows)

    def insert(
        self, ids: list[int] | np.ndarray, x: np.ndarray, y: np.ndarray, *, day: int
    ) -> list[int]:
        """Insert (or refresh) rows; returns the IDs evicted by the forced clean-up.

        A refreshed ID moves to the young end. If the batch alone exceeds the
        capacity, only its newest ``capacity`` rows (the last ones) are kept.
        """
        ids = [int(i) for i in np.asarray(ids).ravel()]
        if len(ids) != len(x) or len(ids) != len(y):
            raise InvalidParameterError(f"ids, x and y disagree: {len(ids)}, {len(x)}, {len(y)}")
        evicted: list[int] = []
        if len(ids) > self.capacity:
            evicted.extend(ids[: len(ids) - self.capacity])
            cut = len(ids) - self.capacity
            ids, x, y = ids[cut:], x[cut:], y[cut:]
        for i in ids:
            self._rows.pop(i, None)
        overflow = len(self._rows) + len(ids) - self.capacity
        for _ in range(max(0, overflow)):
            old, _row = self._rows.popitem(last=False)
            evicted.append(old)
        for i, xi, yi in zip(ids, x, y):
            self._rows[i] = _Row(np.array(xi, dtype=np.int64), float(yi), int(day))
        self.evicted += len(evicted)
        return evicted

    def expire(self, today: int) -> list[int]:
        """Remove rows inserted more than ``ttl_days`` before ``today``."""
        if self.ttl_days is None:
            return []
        gone = [i for i, r in self._rows.items() if today - r.day > self.ttl_days]
        for i in gone:
            del self._rows[i]
        return gone

    def remove(self, ids: list[int]) -> None:
        for i in ids:
            self._rows.pop(int(i), None)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, x, y) of every row, oldest first."""
        if not self._rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.int64), np.zeros(0, np.float32)
        ids = np.fromiter(self._rows, dtype=np.int64)
        x = np.stack([r.x for r in self._rows.values()])
        y = np.array([r.y for r in self._rows.values()], dtype=np.float32)
        return ids, x, y


class ModelStore:
    """M0 / M / Mbuf with atomic commit and rollback (flat parameter vectors).

    Readers call :meth:`serving` and get a read-only snapshot; the writer fills
    :meth:`buffer` (a private copy) and :meth:`commit` swaps it in under a lock.
    A reader therefore sees either the old or the new model, never a mix.
    """

    def __init__(self, initial: np.ndarray) -> None:
        m0 = np.array(initial, dtype=np.float32)
        m0.setflags(write=False)
        self._m0 = m0
        self._m = m0
        self._previous: list[np.ndarray] = []
        self._buf: np.ndarray | None = None
        self._lock = threading.Lock()
        self.version = 0

    @property
    def m0(self) -> np.ndarray:
        return self._m0

    def serving(self) -> np.ndarray:
        """The current model M (read-only; never modified after publication)."""
        with self._lock:
            return self._m

    def buffer(self) -> np.ndarray:
        """Mbuf: a writable copy of M for training (created on first call)."""
        if self._buf is None:
            self._buf = np.array(self.serving(), dtype=np.float32)
        return self._buf

    def commit(self) -> int:
        """Publish Mbuf as M; the old M becomes the rollback target. Returns the version."""
        if self._buf is None:
            raise InvalidParameterError("commit() without a buffer; call buffer() and train first")
        new = self._buf
        new.setflags(write=False)
        self._buf = None
        with self._lock:
            self._previous.append(self._m)
            self._m = new
            self.version += 1
            return self.version

    def discard(self) -> None:
        """Drop Mbuf without publishing it."""
        self._buf = None

    def rollback(self) -> np.ndarray:
        """Restore the previous M (M0 when there is none left); returns it."""
        with self._lock:
            self._m = self._previous.pop() if self._previous else self._m0
            self.version += 1
            return self._m
