"""The in-memory CTR data set every loader produces and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data.schema import Schema

__all__ = ["CTRDataset", "FilterReport"]


@dataclass(frozen=True)
class FilterReport:
    """What a filter or loader removed; nothing is dropped silently."""

    step: str
    rows_removed: int = 0
    users_removed: int = 0
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.step}: removed {self.rows_removed} rows and {self.users_removed} users" + (
            f" ({self.reason})" if self.reason else ""
        )


@dataclass(frozen=True, eq=False)
class CTRDataset:
    """Integer-coded CTR samples.

    Attributes
    ----------
    schema:
        The fields and their embedding layout.
    x:
        ``int64`` array of shape ``(n, schema.n_columns)``; column block of each
        field per :meth:`Schema.column_slice`; 0 = padding/unknown.
    y:
        ``float32`` labels in {0, 1}, shape ``(n,)``.
    user:
        ``int64`` device/user identity per row, shape ``(n,)``. This is who *owns*
        the row (the device it lives on), independent of the user-id feature
        column, which the ``random`` regulation split shuffles.
    timestamp:
        ``int64`` seconds (or any monotone time), shape ``(n,)``.
    reports:
        The filters applied so far, oldest first.
    """

    schema: Schema
    x: np.ndarray
    y: np.ndarray
    user: np.ndarray
    timestamp: np.ndarray
    reports: tuple[FilterReport, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        x = np.ascontiguousarray(self.x, dtype=np.int64)
        y = np.ascontiguousarray(self.y, dtype=np.float32)
        user = np.ascontiguousarray(self.user, dtype=np.int64)
        ts = np.ascontiguousarray(self.timestamp, dtype=np.int64)
        n = len(y)
        problems = []
        if x.ndim != 2 or x.shape != (n, self.schema.n_columns):
            problems.append(f"`x` must have shape ({n}, {self.schema.n_columns}); got {x.shape}")
        if user.shape != (n,):
            problems.append(f"`user` must have shape ({n},); got {user.shape}")
        if ts.shape != (n,):
            problems.append(f"`timestamp` must have shape ({n},); got {ts.shape}")
        if n and not np.isin(y, (0.0, 1.0)).all():
            problems.append("`y` must hold only 0 and 1")
        if not problems and n:
            vocab = np.array(
                [self.schema.fields[i].vocab_size for i in self.schema.column_field_index()]
            )
            bad = (x < 0) | (x >= vocab[None, :])
            if bad.any():
                r, c = np.argwhere(bad)[0]
                fname = self.schema.fields[self.schema.column_field_index()[c]].name
                problems.append(
                    f"`x` row {r} field {fname!r} holds index {x[r, c]} outside [0, {vocab[c]})"
                )
        if problems:
            raise InvalidParameterError("invalid CTRDataset: " + "; ".join(problems))
        for name, arr in (("x", x), ("y", y), ("user", user), ("timestamp", ts)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # --- basics ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (
            f"CTRDataset(n={len(self)}, users={self.n_users}, fields={list(self.schema.names)}, "
            f"ctr={self.ctr:.3f})"
        )

    @property
    def n_users(self) -> int:
        return int(np.unique(self.user).size)

    @property
    def ctr(self) -> float:
        """Mean label (0.0 for an empty set)."""
        return float(self.y.mean()) if len(self) else 0.0

    def users(self) -> np.ndarray:
        """Sorted distinct user identities."""
        return np.unique(self.user)

    def column(self, name: str) -> np.ndarray:
        """The columns of field ``name`` (shape ``(n,)`` or ``(n, max_len)``)."""
        sl = self.schema.column_slice(name)
        col = self.x[:, sl]
        return col[:, 0] if sl.stop - sl.start == 1 else col

    # --- derivation -----------------------------------------------------------
    def subset(self, index: np.ndarray) -> CTRDataset:
        """Rows ``index`` (an integer index array or a boolean mask), same schema."""
        index = np.asarray(index)
        return CTRDataset(
            self.schema,
            self.x[index],
            self.y[index],
            self.user[index],
            self.timestamp[index],
            self.reports,
        )

    def with_x(self, x: np.ndarray) -> CTRDataset:
        """Same rows with a replaced feature matrix (e.g. a shuffled user-id column)."""
        return CTRDataset(self.schema, x, self.y, self.user, self.timestamp, self.reports)

    def with_report(self, report: FilterReport) -> CTRDataset:
        return CTRDataset(
            self.schema, self.x, self.y, self.user, self.timestamp, (*self.reports, report)
        )

    def by_user(self) -> dict[int, np.ndarray]:
        """Map user identity → row indices (in time order, ties by row order)."""
        order = np.lexsort((np.arange(len(self)), self.timestamp, self.user))
        users, starts = np.unique(self.user[order], return_index=True)
        bounds = [*starts[1:], len(order)]
        return {int(u): order[s:e] for u, s, e in zip(users, starts, bounds)}

    def split_by_user(self) -> dict[int, CTRDataset]:
        """One data set per user (its rows in time order)."""
        return {u: self.subset(idx) for u, idx in self.by_user().items()}

    @staticmethod
    def concat(parts: list[CTRDataset]) -> CTRDataset:
        """Rows of ``parts`` stacked; all must share one schema."""
        if not parts:
            raise InvalidParameterError("concat() needs at least one data set")
        schema = parts[0].schema
        if any(p.schema != schema for p in parts):
            raise InvalidParameterError("concat(): all data sets must share one schema")
        return CTRDataset(
            schema,
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.user for p in parts]),
            np.concatenate([p.timestamp for p in parts]),
            parts[0].reports,
        )

    def to_npz(self, path: str) -> None:
        """Save to a ``.npz`` file (schema as JSON); see :meth:`from_npz`."""
        import json

        np.savez_compressed(
            path,
            x=self.x,
            y=self.y,
            user=self.user,
            timestamp=self.timestamp,
            schema=np.array(json.dumps(self.schema.to_dict())),
        )

    @classmethod
    def from_npz(cls, path: str) -> CTRDataset:
        import json

        with np.load(path, allow_pickle=False) as z:
            schema = Schema.from_dict(json.loads(str(z["schema"])))
            return cls(schema, z["x"], z["y"], z["user"], z["timestamp"])
