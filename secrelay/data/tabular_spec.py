"""What a CSV / Parquet file's columns mean: :class:`ColumnField` and :class:`TabularSpec`.

A spec maps source columns to categorical fields with roles, names the label
column (0/1, or any number turned into a click by ``value >= label_threshold``),
the user column (the device identity) and optionally a timestamp column.
Multi-valued columns hold several values joined by a separator (CSV, or string
columns in Parquet) or a list (Parquet list columns).

The spec is checked on its own, before any file is opened; the readers that apply
it are in :mod:`secrelay.data.tabular` (which re-exports both names).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data.schema import FIELD_ROLES, FieldRole

__all__ = ["ColumnField", "TabularSpec"]


@dataclass(frozen=True)
class ColumnField:
    """A source column that becomes a categorical field.

    Parameters
    ----------
    column:
        Column name in the file.
    role:
        ``"user"``, ``"item"`` or ``"context"``.
    name:
        Field name in the schema (default: ``column``).
    separator:
        Set for a multi-valued column: the string that separates its values
        (e.g. ``"|"``). Parquet list columns need no separator but must set one
        of ``separator`` / ``max_len`` to be read as multi-valued.
    max_len:
        Columns for a multi-valued field; ``None`` infers the most values in one
        cell. A cell with more values than an explicit ``max_len`` is an error.
    """

    column: str
    role: FieldRole
    name: str | None = None
    separator: str | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.role not in FIELD_ROLES:
            raise InvalidParameterError(
                f"column {self.column!r}: `role` must be one of {FIELD_ROLES}; got {self.role!r}"
            )
        if self.separator == "":
            raise InvalidParameterError(f"column {self.column!r}: `separator` must not be empty")
        if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len < 1):
            raise InvalidParameterError(
                f"column {self.column!r}: `max_len` must be None or an int >= 1; "
                f"got {self.max_len!r}"
            )

    @property
    def field_name(self) -> str:
        return self.name if self.name is not None else self.column

    @property
    def multi_valued(self) -> bool:
        return self.separator is not None or self.max_len is not None


@dataclass(frozen=True)
class TabularSpec:
    """How the columns of a CSV/Parquet file become a :class:`CTRDataset`.

    Parameters
    ----------
    fields:
        The feature columns, in schema column order.
    user_column:
        Column with the user (device) identity. One of ``fields`` must read this
        column with role ``"user"``: it becomes the schema's ``user_id_field``.
    label_column:
        Column with the label.
    label_threshold:
        ``None``: the label column must hold 0 or 1. Otherwise click =
        ``value >= label_threshold`` (MovieLens-style ratings: 4).
    timestamp_column:
        Column with integer or ISO-8601 times, or ``None`` (row order).
    item_id_field:
        Name of the item-id field (an ``"item"`` field), or ``None``.

    Examples
    --------
    >>> spec = TabularSpec(
    ...     (ColumnField("uid", "user", name="user_id"), ColumnField("movie", "item"),
    ...      ColumnField("genres", "item", separator="|")),
    ...     user_column="uid", label_column="rating", label_threshold=4,
    ...     timestamp_column="ts", item_id_field="movie")
    >>> spec.user_id_field
    'user_id'
    """

    fields: tuple[ColumnField, ...]
    user_column: str
    label_column: str
    label_threshold: float | None = None
    timestamp_column: str | None = None
    item_id_field: str | None = None

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        object.__setattr__(self, "fields", fields)
        problems: list[str] = []
        if not fields:
            problems.append("`fields` is empty")
        names = [f.field_name for f in fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate field names {dupes}")
        users = [f for f in fields if f.column == self.user_column and f.role == "user"]
        if not users:
            problems.append(
                f"no field reads `user_column` {self.user_column!r} with role 'user'; add "
                f"ColumnField({self.user_column!r}, 'user')"
            )
        elif users[0].multi_valued:
            problems.append(f"the user field {users[0].field_name!r} cannot be multi-valued")
        if self.item_id_field is not None and self.item_id_field not in names:
            problems.append(f"`item_id_field` {self.item_id_field!r} is not a field ({names})")
        for what, col in (
            ("label_column", self.label_column),
            ("timestamp_column", self.timestamp_column),
        ):
            if col is not None and any(f.column == col for f in fields):
                problems.append(f"`{what}` {col!r} is also a feature column")
        if self.label_threshold is not None and not np.isfinite(float(self.label_threshold)):
            problems.append(f"`label_threshold` must be finite; got {self.label_threshold!r}")
        if problems:
            raise InvalidParameterError("invalid tabular spec: " + "; ".join(problems))

    @property
    def user_id_field(self) -> str:
        """Name of the field that reads :attr:`user_column`."""
        return next(
            f.field_name for f in self.fields if f.column == self.user_column and f.role == "user"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """Every source column the spec reads."""
        cols = [f.column for f in self.fields]
        for c in (self.label_column, self.timestamp_column):
            if c is not None and c not in cols:
                cols.append(c)
        return tuple(dict.fromkeys(cols))
