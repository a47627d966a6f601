"""The privacy ledger: an append-only, crash-safe record of every DP release.

Each :class:`LedgerRecord` says which mechanism ran in which round of which run,
with which parameters, at which privacy unit, covering which devices, and carries
the exact :class:`~protocols.dp.events.DpEvent` it spent. An accountant composes
the events that cover a device (per-device ε) or all events of a unit (global ε).

Privacy units
-------------
``"example"``
    One training example of one device (local DP-SGD). Budgets are per device:
    a device's example-level ε composes only the records that list it.
``"user"``
    A device's whole contribution (clipped update + aggregation noise, LDP
    reports). The *global* user-level ε composes every user-level record — the
    guarantee for a user who took part in every round.
``"pool_user"``
    A user of the cloud's pre-regulation pool (not a device) whose samples the
    cloud released — CoDA's privatized samples. The records name the pool user as
    their subject (``devices = ("pool/<id>",)``); ε composes **per pool user** only
    (:meth:`PrivacyLedger.epsilon_by_subject`; the reported figure is the largest),
    never across pool users, and never into the device users' ε.

Per-subject units (:data:`PER_SUBJECT_UNITS`: ``"example"``, ``"pool_user"``) are
accounted per id in :attr:`LedgerRecord.devices`; ``"user"`` is accounted globally.

File format
-----------
JSON lines, UTF-8, one record per line, keys sorted::

    {"delta": 1e-05, "devices": ["d1"], "event": {...}, "mechanism": "dp_sgd",
     "noise_multiplier": 1.1, "round": 3, "run_id": "r0", "sample_rate": 0.01,
     "sensitivity": 1.0, "seq": 0, "sigma": null, "steps": 500, "unit": "example",
     "v": 1}

``seq`` is the 0-based line number; ``adjacency`` is the neighbouring relation the
record's event is accounted under (:data:`Adjacency`; format 1 ledgers, written before
it was recorded, load with ``adjacency = None``).

Versions. ``v`` is per line: the oldest format that can express the record. Format 2
added ``adjacency``; format 3 added the unit ``"pool_user"``. A ledger without
pool-user records is therefore written exactly as before (``"v": 2``) and stays
readable by older versions of the library; every version 1–3 loads here, and a
format-1 or -2 line naming a unit its format did not have is refused.

Writers. Every write rewrites the whole file to a temporary file in the same
directory, fsyncs it and renames it over the ledger (:func:`os.replace`, then fsyncs
the directory), so a crash leaves either the old or the new ledger, never a
half-written one. The check that the file is still the one this object last saw, the
write and the rename happen under an exclusive advisory lock (:func:`fcntl.flock` on
the ledger's directory, so no lock file is left behind), so two processes spending
on one ledger either both land, in some order, or one gets
:class:`LedgerConflictError` — a record is never lost silently. Stray
``.<name>.*.tmp`` files of a crashed writer are ignored by :meth:`PrivacyLedger.load`
and removed by the next write (under the lock, no other writer can own them). A
rewrite keeps the ledger's file mode; a new ledger gets the mode a plain
:func:`open` would give it (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from protocols.dp._validation import check_int, check_real
from protocols.dp.accountants import make_accountant
from protocols.dp.events import DpEvent, event_from_dict
from protocols.errors import (
    BudgetExceededError,
    DataFormatError,
    InvalidParameterError,
    SecrelayError,
)

__all__ = [
    "ADJACENCIES",
    "LEDGER_FORMAT_VERSION",
    "PER_SUBJECT_UNITS",
    "Adjacency",
    "BudgetReport",
    "EpsilonPoint",
    "LedgerConflictError",
    "LedgerRecord",
    "PrivacyBudget",
    "PrivacyLedger",
    "PrivacyUnit",
]

LEDGER_FORMAT_VERSION = 3
"""The newest ledger format (the ``v`` of a line holding a ``"pool_user"`` record)."""
_READABLE_VERSIONS = (1, 2, 3)
PrivacyUnit = Literal["example", "user", "pool_user"]
_UNITS: tuple[str, ...] = ("example", "user", "pool_user")
_UNITS_SINCE: dict[str, int] = {"example": 1, "user": 1, "pool_user": 3}
PER_SUBJECT_UNITS: tuple[str, ...] = ("example", "pool_user")
"""Units whose ε is accounted per subject (device / pool user), never summed across
subjects; ``"user"`` is accounted globally."""

Adjacency = Literal["add_remove", "replace_one", "zero_out"]
"""The neighbouring relation a record's ε is stated under, for its unit:

``"add_remove"``
    one unit (example or user) added to or removed from the data; with Poisson
    sampling the membership of the sample stays hidden (amplification).
``"replace_one"``
    one unit's data replaced by another's, the number of units fixed (fixed-size
    sampling; local randomizers). The sensitivity is that of a replacement (2C for
    a sum of vectors clipped to C).
``"zero_out"``
    one unit's contribution replaced by zero while its participation stays public
    (secure aggregation: the server sees who takes part).
"""
ADJACENCIES: tuple[str, ...] = ("add_remove", "replace_one", "zero_out")

LOCK_TIMEOUT_S = 30.0
"""How long a writer waits for another process's lock on the ledger before it gives up
with :class:`LedgerConflictError`."""


class LedgerConflictError(SecrelayError, RuntimeError):
    """The ledger file changed on disk since this process loaded or wrote it."""


def _check_unit(unit: object) -> PrivacyUnit:
    if unit not in _UNITS:
        raise InvalidParameterError(f"`unit` must be one of {list(_UNITS)}; got {unit!r}")
    return cast(PrivacyUnit, unit)


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParameterError(f"`{name}` must be a non-empty string; got {value!r}")
    return value


def _optional_real(name: str, value: object, **bounds: Any) -> float | None:
    return None if value is None else check_real(name, value, **bounds)


@dataclass(frozen=True, kw_only=True)
class LedgerRecord:
    """One DP release, as written to the ledger.

    Parameters
    ----------
    run_id:
        Identifier of the run (non-empty).
    round:
        Round index, >= 0.
    mechanism:
        Mechanism name, e.g. ``"dp_sgd"``, ``"distributed_discrete_gaussian"``.
    event:
        The exact privacy event spent; the only field the accountants read.
    unit:
        ``"example"``, ``"user"`` or ``"pool_user"`` (see module doc).
    devices:
        Ids of the subjects whose data the release covers (non-empty, unique):
        devices, or pool users (``"pool/<id>"``) for ``unit = "pool_user"``.
    delta:
        The δ the mechanism was configured for, in [0, 1) (0 for pure-ε).
    adjacency:
        The neighbouring relation ``event`` is accounted under (:data:`Adjacency`);
        ``None`` only for records read from a format-1 ledger, which did not state it.
    noise_multiplier, sigma, sensitivity, sample_rate, steps:
        Audit fields: noise multiplier z, absolute noise standard deviation σ,
        clipping norm / L2 sensitivity, sampling rate q in (0, 1], number of steps.
    """

    run_id: str
    round: int
    mechanism: str
    event: DpEvent
    unit: PrivacyUnit
    devices: tuple[str, ...]
    delta: float
    adjacency: Adjacency | None
    noise_multiplier: float | None = None
    sigma: float | None = None
    sensitivity: float | None = None
    sample_rate: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_text("run_id", self.run_id)
        object.__setattr__(self, "round", check_int("round", self.round, low=0))
        _check_text("mechanism", self.mechanism)
        if not isinstance(self.event, DpEvent):
            raise InvalidParameterError(f"`event` must be a DpEvent; got {self.event!r}")
        _check_unit(self.unit)
        raw = self.devices
        if isinstance(raw, str) or not isinstance(raw, Iterable):
            raise InvalidParameterError(f"`devices` must be a sequence of ids; got {raw!r}")
        devices = tuple(raw)
        if not devices:
            raise InvalidParameterError("`devices` must not be empty")
        for d in devices:
            _check_text("devices[...]", d)
        if len(set(devices)) != len(devices):
            dupes = sorted({d for d in devices if devices.count(d) > 1})
            raise InvalidParameterError(f"`devices` must be unique; got duplicates {dupes}")
        object.__setattr__(self, "devices", devices)
        object.__setattr__(
            self, "delta", check_real("delta", self.delta, low=0.0, high=1.0, high_open=True)
        )
        if self.adjacency is not None and self.adjacency not in ADJACENCIES:
            raise InvalidParameterError(
                f"`adjacency` must be one of {list(ADJACENCIES)}; got {self.adjacency!r}"
            )
        for name, kw in (
            ("noise_multiplier", {"low": 0.0, "low_open": True}),
            ("sigma", {"low": 0.0}),
            ("sensitivity", {"low": 0.0, "low_open": True}),
            ("sample_rate", {"low": 0.0, "high": 1.0, "low_open": True}),
        ):
            object.__setattr__(self, name, _optional_real(name, getattr(self, name), **kw))
        if self.steps is not None:
            object.__setattr__(self, "steps", check_int("steps", self.steps, low=0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {
            "run_id": self.run_id,
            "round": self.round,
            "mechanism": self.mechanism,
            "event": self.event.to_dict(),
            "unit": self.unit,
            "devices": list(self.devices),
            "delta": self.delta,
            "adjacency": self.adjacency,
            "noise_multiplier": self.noise_multiplier,
            "sigma": self.sigma,
            "sensitivity": self.sensitivity,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, version: int = LEDGER_FORMAT_VERSION
    ) -> LedgerRecord:
        """Rebuild and validate a record; unknown or missing keys are errors.

        ``version`` is the ledger format the record was written in: a format-1
        record has no ``adjacency`` key and gets ``adjacency = None``; a unit newer
        than ``version`` (``"pool_user"`` before format 3) is refused.
        """
        if not isinstance(data, Mapping):
            raise InvalidParameterError(
                f"a record must be a JSON object; got {type(data).__name__}"
            )
        if version == 1:
            expected = set(_RECORD_KEYS) - {"adjacency"}
            if set(data) == expected:
                data = {**data, "adjacency": None}
            keys = set(data) - {"adjacency"}
        else:
            expected = set(_RECORD_KEYS)
            keys = set(data)
        if keys != expected:
            raise InvalidParameterError(
                f"record has missing keys {sorted(expected - keys)} / "
                f"unexpected keys {sorted(keys - expected)}"
            )
        since = _UNITS_SINCE.get(str(data["unit"]))
        if since is not None and since > version:
            raise InvalidParameterError(
                f"unit {data['unit']!r} needs ledger format {since}; the line says {version}"
            )
        devices = data["devices"]
        if not isinstance(devices, list):
            raise InvalidParameterError(f"`devices` must be a list; got {devices!r}")
        params = {k: data[k] for k in _RECORD_KEYS if k not in ("event", "devices")}
        return cls(event=event_from_dict(data["event"]), devices=tuple(devices), **params)

    def covers(self, device: str) -> bool:
        """Whether ``device`` is among :attr:`devices`."""
        return device in self.devices


_RECORD_KEYS: tuple[str, ...] = (
    "run_id",
    "round",
    "mechanism",
    "event",
    "unit",
    "devices",
    "delta",
    "adjacency",
    "noise_multiplier",
    "sigma",
    "sensitivity",
    "sample_rate",
    "steps",
)


@dataclass(frozen=True)
class EpsilonPoint:
    """Cumulative ε after the last record of ``(run_id, round)`` (for plots)."""

    run_id: str
    round: int
    epsilon: float


@dataclass(frozen=True)
class BudgetReport:
    """ε that the ledger *would* reach with the proposed records, per checked scope.

    ``example_epsilon`` maps each device covered by a proposed example-level
    record to its example-level ε; ``user_epsilon`` is the global user-level ε
    (``None`` when not checked).
    """

    delta: float
    example_epsilon: Mapping[str, float] = field(default_factory=dict)
    user_epsilon: float | None = None


@dataclass(frozen=True, kw_only=True)
class PrivacyBudget:
    """Limits a run must not exceed, at a common δ.

    Parameters
    ----------
    delta:
        δ at which every ε is evaluated, in (0, 1).
    example_epsilon:
        Maximum example-level ε of any single device (``None``: unchecked).
    user_epsilon:
        Maximum global user-level ε (``None``: unchecked).
    accountant:
        Registered accountant name.
    """

    delta: float
    example_epsilon: float | None = None
    user_epsilon: float | None = None
    accountant: str = "prv"

    def __post_init__(self) -> None:
        check_real("delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        _optional_real("example_epsilon", self.example_epsilon, low=0.0)
        _optional_real("user_epsilon", self.user_epsilon, low=0.0)
        make_accountant(self.accountant)

    def check(self, proposed: Sequence[LedgerRecord], *, ledger: PrivacyLedger) -> BudgetReport:
        """Dry run: the ε's the ledger would reach with ``proposed`` appended.

        Nothing is appended. Every violation is collected and reported at once.

        Raises
        ------
        BudgetExceededError
            If any device's example-level ε or the global user-level ε would
            exceed its limit.
        """
        records = _check_records(proposed)
        existing = ledger.records
        per_device: dict[str, float] = {}
        problems: list[str] = []
        if self.example_epsilon is not None:
            cache: dict[tuple[int, ...], float] = {}
            combined = list(existing) + list(records)
            covered = sorted({d for r in records if r.unit == "example" for d in r.devices})
            for device in covered:
                key = tuple(
                    i for i, r in enumerate(combined) if r.unit == "example" and r.covers(device)
                )
                if key not in cache:
                    cache[key] = _epsilon_of(
                        [combined[i].event for i in key], self.delta, self.accountant
                    )
                per_device[device] = cache[key]
                if cache[key] > self.example_epsilon:
                    problems.append(
                        f"device {device!r}: example-level ε would be {cache[key]:.6g} "
                        f"> budget {self.example_epsilon:.6g}"
                    )
        user_eps: float | None = None
        if self.user_epsilon is not None and any(r.unit == "user" for r in records):
            events = [r.event for r in (*existing, *records) if r.unit == "user"]
            user_eps = _epsilon_of(events, self.delta, self.accountant)
            if user_eps > self.user_epsilon:
                problems.append(
                    f"global user-level ε would be {user_eps:.6g} > budget {self.user_epsilon:.6g}"
                )
        if problems:
            raise BudgetExceededError(
                f"refused {len(records)} record(s) at δ = {self.delta:g} "
                f"({self.accountant} accountant): " + "; ".join(problems)
            )
        return BudgetReport(delta=self.delta, example_epsilon=per_device, user_epsilon=user_eps)


def _check_records(records: Iterable[LedgerRecord]) -> tuple[LedgerRecord, ...]:
    if isinstance(records, LedgerRecord):
        records = (records,)
    out = tuple(records)
    for i, r in enumerate(out):
        if not isinstance(r, LedgerRecord):
            raise InvalidParameterError(
                f"`records[{i}]` must be a LedgerRecord; got {type(r).__name__}"
            )
    if not out:
        raise InvalidParameterError("`records` must not be empty")
    return out


def _epsilon_of(events: Sequence[DpEvent], delta: float, accountant: str) -> float:
    acc = make_accountant(accountant)
    for e in events:
        acc.compose(e)
    return acc.get_epsilon(delta=delta)


def _line_version(record: LedgerRecord) -> int:
    """The format a record is written in: the oldest that can express it (module doc)."""
    return max(2, _UNITS_SINCE[record.unit])


def _encode_line(seq: int, record: LedgerRecord) -> bytes:
    obj = {"v": _line_version(record), "seq": seq, **record.to_dict()}
    return (
        json.dumps(obj, sort_keys=True, separators=(", ", ": "), allow_nan=False) + "\n"
    ).encode()


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def _writer_lock(path: Path, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive advisory lock of ``path``'s writers: :func:`fcntl.flock` on
    its directory (no lock file to leave behind). Waits up to ``timeout`` seconds
    (default :data:`LOCK_TIMEOUT_S`) for another writer, then raises
    :class:`LedgerConflictError`. Without ``fcntl`` (not POSIX) it only relies on the
    on-disk digest check."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerConflictError(
                        f"ledger file {str(path)!r} is locked by another writer (waited "
                        f"{wait:g} s); try again when it has finished"
                    ) from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.<name>.*.tmp`` files of crashed writers (call under the lock: no live
    writer of this ledger can own one then)."""
    prefix = _temp_prefix(path)
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, os.replace, fsync dir.

    The temp file is created like a plain new file (mode 0666 less the umask) and
    then given the mode of the file it replaces, so a rewrite keeps the ledger's mode.
    """
    tmp = path.parent / f"{_temp_prefix(path)}{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                with contextlib.suppress(FileNotFoundError):
                    os.fchmod(f.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PrivacyLedger:
    """Append-only ledger of :class:`LedgerRecord`, optionally persisted to ``path``.

    Use :meth:`open` to continue a run (loads the file if it exists), :meth:`load`
    to read an existing one, or the constructor for a new one.

    Examples
    --------
    >>> from protocols.dp.events import GaussianEvent
    >>> ledger = PrivacyLedger()
    >>> rec = LedgerRecord(run_id="r", round=0, mechanism="gaussian",
    ...     event=GaussianEvent(noise_multiplier=2.0), unit="user", devices=("a", "b"),
    ...     delta=1e-5, adjacency="add_remove")
    >>> budget = PrivacyBudget(delta=1e-5, user_epsilon=2.5)
    >>> _ = ledger.spend([rec], budget=budget)
    >>> round(ledger.epsilon(delta=1e-5, unit="user"), 1)
    2.0
    >>> ledger.spend([rec], budget=budget)  # a second release would overspend
    Traceback (most recent call last):
    ...
    protocols.errors.BudgetExceededError: refused 1 record(s) at δ = 1e-05 (prv accountant): global user-level ε would be 2.94... > budget 2.5
    >>> len(ledger)
    1
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = None if path is None else Path(path)
        if self._path is not None and self._path.exists():
            raise InvalidParameterError(
                f"`path` {str(self._path)!r} already exists; use PrivacyLedger.load or .open"
            )
        self._records: list[LedgerRecord] = []
        self._lines: list[bytes] = []
        self._disk_digest: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Read and validate every line of an existing ledger file.

        Raises
        ------
        DataFormatError
            Naming the file and 1-based line of the first invalid record.
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise InvalidParameterError(f"`path` {str(p)!r} does not exist") from None
        ledger = cls.__new__(cls)
        ledger._path = p
        ledger._records = []
        ledger._lines = []
        ledger._disk_digest = _digest(data)
        if data and not data.endswith(b"\n"):
            raise DataFormatError(f"{p}: last line is not newline-terminated (truncated?)")
        for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise InvalidParameterError("line is not a JSON object")
                version, seq = obj.pop("v", None), obj.pop("seq", None)
                if version not in _READABLE_VERSIONS:
                    raise InvalidParameterError(
                        f"`v` must be one of {list(_READABLE_VERSIONS)}; got {version!r}"
                    )
                if seq != lineno - 1:
                    raise InvalidParameterError(f"`seq` must be {lineno - 1}; got {seq!r}")
                record = LedgerRecord.from_dict(obj, version=version)
            except (ValueError, TypeError) as exc:  # JSON, Unicode and validation errors
                raise DataFormatError(f"{p}:{lineno}: invalid ledger record: {exc}") from exc
            ledger._records.append(record)
            ledger._lines.append(raw)
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """:meth:`load` ``path`` if it exists, else start an empty ledger there."""
        return cls.load(path) if Path(path).exists() else cls(path)

    @property
    def path(self) -> Path | None:
        """Where the ledger is persisted (``None``: in memory only)."""
        return self._path

    @property
    def records(self) -> tuple[LedgerRecord, ...]:
        """All records, oldest first."""
        return tuple(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[LedgerRecord]:
        return iter(tuple(self._records))

    def devices(self, *, unit: PrivacyUnit | None = None) -> tuple[str, ...]:
        """Sorted ids of every device covered by a record (of ``unit`` if given)."""
        u = None if unit is None else _check_unit(unit)
        return tuple(
            sorted({d for r in self._records if u is None or r.unit == u for d in r.devices})
        )

    def _select(self, device: str | None, unit: PrivacyUnit) -> list[LedgerRecord]:
        u = _check_unit(unit)
        if device is not None:
            _check_text("device", device)
        return [r for r in self._records if r.unit == u and (device is None or r.covers(device))]

    def epsilon(
        self,
        *,
        delta: float,
        device: str | None = None,
        unit: PrivacyUnit = "example",
        accountant: str = "prv",
    ) -> float:
        """ε spent at ``delta``: by ``device`` (records covering it) or, with ``None``,
        globally — except for ``unit = "pool_user"``, whose records are never composed
        across pool users: there ``None`` gives the largest pool user's ε (0 without
        records)."""
        if device is None and unit == "pool_user":
            by = self.epsilon_by_subject(delta=delta, unit=unit, accountant=accountant)
            return max(by.values(), default=0.0)
        return _epsilon_of([r.event for r in self._select(device, unit)], delta, accountant)

    def epsilon_by_subject(
        self, *, delta: float, unit: PrivacyUnit, accountant: str = "prv"
    ) -> dict[str, float]:
        """ε at ``delta`` of every subject (device or pool user) covered by a record of
        ``unit``, each composing only the records that cover it."""
        events: dict[str, list[DpEvent]] = {}
        for r in self._select(None, unit):
            for d in r.devices:
                events.setdefault(d, []).append(r.event)
        return {d: _epsilon_of(evs, delta, accountant) for d, evs in sorted(events.items())}

    def epsilon_series(
        self,
        *,
        delta: float,
        device: str | None = None,
        unit: PrivacyUnit = "example",
        accountant: str = "prv",
    ) -> list[EpsilonPoint]:
        """Cumulative ε after each ``(run_id, round)`` with a matching record, in ledger order.

        ``unit = "pool_user"`` needs a ``device`` (a pool user): its records are never
        composed across pool users."""
        if device is None and unit == "pool_user":
            raise InvalidParameterError(
                "`device` must name a pool user for unit 'pool_user': pool users' records "
                "are never composed across pool users"
            )
        selected = self._select(device, unit)
        acc = make_accountant(accountant)
        points: list[EpsilonPoint] = []
        for i, r in enumerate(selected):
            acc.compose(r.event)
            last = i + 1 == len(selected)
            if last or (selected[i + 1].run_id, selected[i + 1].round) != (r.run_id, r.round):
                points.append(EpsilonPoint(r.run_id, r.round, acc.get_epsilon(delta=delta)))
        return points

    def check(self, records: Sequence[LedgerRecord], *, budget: PrivacyBudget) -> BudgetReport:
        """Dry run of :meth:`spend`: raises :class:`BudgetExceededError`, appends nothing."""
        return budget.check(records, ledger=self)

    def spend(
        self, records: Sequence[LedgerRecord], *, budget: PrivacyBudget | None = None
    ) -> BudgetReport | None:
        """Check ``records`` against ``budget`` (if given), then append them atomically.

        On any error — budget exceeded, invalid record, conflicting file, I/O —
        neither the in-memory ledger nor the file changes.

        Returns
        -------
        The budget report, or ``None`` without a budget.
        """
        recs = _check_records(records)
        report = None if budget is None else budget.check(recs, ledger=self)
        start = len(self._records)
        new_lines = [_encode_line(start + i, r) for i, r in enumerate(recs)]
        if self._path is not None:
            self._write(b"".join(self._lines + new_lines))
        self._records.extend(recs)
        self._lines.extend(new_lines)
        return report

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` records, on disk and in memory (atomic, under
        the writers' lock).

        Only for resuming a run whose interrupted round is replayed *identically*
        (reproducible randomness): its records are spent again by the replay. A
        ledger that changed on disk since this object last saw it is refused.
        """
        n = check_int("count", count, low=0)
        if n > len(self._records):
            raise InvalidParameterError(
                f"`count` must be at most the {len(self._records)} records; got {n}"
            )
        if self._path is not None:
            self._write(b"".join(self._lines[:n]))
        del self._records[n:]
        del self._lines[n:]

    def _write(self, data: bytes) -> None:
        """Replace the file by ``data`` under the writers' lock, if it is still the file
        this object last saw; clean up crashed writers' temp files."""
        assert self._path is not None
        with _writer_lock(self._path):
            self._verify_unchanged_on_disk()
            _remove_stale_temps(self._path)
            _atomic_write(self._path, data)
            self._disk_digest = _digest(data)

    def _verify_unchanged_on_disk(self) -> None:
        assert self._path is not None
        try:
            current: str | None = _digest(self._path.read_bytes())
        except FileNotFoundError:
            current = None
        if current != self._disk_digest:
            raise LedgerConflictError(
                f"ledger file {str(self._path)!r} changed on disk since it was loaded; "
                f"reload it before spending"
            )
