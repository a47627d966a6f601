"""Feature schema: which fields describe the user, the item and the context.

Every CTR model in :mod:`secrelay.models` and every relay method reads the same
*embedding layout* from a :class:`Schema`: each field owns a contiguous block of
one shared embedding table, and each field owns one or more columns of the integer
feature matrix (several for multi-valued fields such as genres, padded with 0).

Index 0 of every field is reserved for "padding / unknown", so a field with ``n``
distinct values has ``vocab_size = n + 1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from protocols.errors import InvalidParameterError

__all__ = ["FIELD_ROLES", "Field", "FieldRole", "Schema"]

FieldRole = Literal["user", "item", "context"]
FIELD_ROLES: tuple[FieldRole, ...] = ("user", "item", "context")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Field:
    """One categorical feature field.

    Parameters
    ----------
    name:
        Identifier (letters, digits, underscore).
    role:
        ``"user"``, ``"item"`` or ``"context"``. RelayRec builds user embeddings
        from the user fields and item embeddings from the item fields.
    vocab_size:
        Number of indices including the reserved index 0; must be >= 2.
    max_len:
        1 for a single-valued field; ``L > 1`` for a multi-valued field stored in
        ``L`` columns padded with 0 (the models mean-pool its embeddings).
    """

    name: str
    role: FieldRole
    vocab_size: int
    max_len: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidParameterError(
                f"field `name` must be an identifier (letters, digits, _); got {self.name!r}"
            )
        if self.role not in FIELD_ROLES:
            raise InvalidParameterError(
                f"field {self.name!r}: `role` must be one of {FIELD_ROLES}; got {self.role!r}"
            )
        if not isinstance(self.vocab_size, int) or self.vocab_size < 2:
            raise InvalidParameterError(
                f"field {self.name!r}: `vocab_size` must be an int >= 2 "
                f"(index 0 is reserved); got {self.vocab_size!r}"
            )
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise InvalidParameterError(
                f"field {self.name!r}: `max_len` must be an int >= 1; got {self.max_len!r}"
            )

    @property
    def multi_valued(self) -> bool:
        return self.max_len > 1


@dataclass(frozen=True)
class Schema:
    """The fields of a CTR data set, in column order.

    Parameters
    ----------
    fields:
        The categorical fields, in the order of the feature matrix's columns.
    user_id_field:
        Name of the user-id *feature* field (a user field). It is a feature, not
        the device identity: the ``random`` regulation split shuffles it on device
        data, while :attr:`secrelay.data.CTRDataset.user` keeps the identity.
    label:
        Name of the binary label (click = 1).
    timestamp:
        Name of the timestamp column, or ``None`` if the data has none.
    item_id_field:
        Name of the item-id field (an item field), or ``None``.

    Examples
    --------
    >>> s = Schema((Field("user_id", "user", 11), Field("item_id", "item", 21),
    ...             Field("genres", "item", 6, max_len=3)), user_id_field="user_id")
    >>> s.n_columns, s.total_vocab, s.column_slice("genres")
    (5, 38, slice(2, 5, None))
    """

    fields: tuple[Field, ...]
    user_id_field: str
    label: str = "click"
    timestamp: str | None = "timestamp"
    item_id_field: str | None = None
    _by_name: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        object.__setattr__(self, "fields", fields)
        problems: list[str] = []
        if not fields:
            problems.append("`fields` is empty; a schema needs at least one field")
        names = [f.name for f in fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate field names {dupes}")
        by_name = {f.name: i for i, f in enumerate(fields)}
        if self.user_id_field not in by_name:
            problems.append(
                f"`user_id_field` {self.user_id_field!r} is not a field (fields: {names})"
            )
        elif fields[by_name[self.user_id_field]].role != "user":
            problems.append(f"`user_id_field` {self.user_id_field!r} must have role 'user'")
        if self.item_id_field is not None:
            if self.item_id_field not in by_name:
                problems.append(
                    f"`item_id_field` {self.item_id_field!r} is not a field (fields: {names})"
                )
            elif fields[by_name[self.item_id_field]].role != "item":
                problems.append(f"`item_id_field` {self.item_id_field!r} must have role 'item'")
        for reserved in (self.label, self.timestamp):
            if reserved is not None and reserved in by_name:
                problems.append(f"{reserved!r} is both a feature field and the label/timestamp")
        if problems:
            raise InvalidParameterError("invalid schema: " + "; ".join(problems))
        object.__setattr__(self, "_by_name", by_name)

    # --- lookup -------------------------------------------------------------
    def __getitem__(self, name: str) -> Field:
        return self.fields[self.index(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def index(self, name: str) -> int:
        """Position of field ``name`` in :attr:`fields`."""
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidParameterError(
                f"unknown field {name!r}; the schema has {list(self._by_name)}"
            ) from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def fields_with_role(self, role: FieldRole) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.role == role)

    def field_indices(self, role: FieldRole) -> tuple[int, ...]:
        """Positions (in :attr:`fields`) of the fields with ``role``."""
        return tuple(i for i, f in enumerate(self.fields) if f.role == role)

    # --- layout ---------------------------------------------------------------
    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def n_columns(self) -> int:
        """Number of columns of the integer feature matrix."""
        return sum(f.max_len for f in self.fields)

    @property
    def total_vocab(self) -> int:
        """Rows of the shared embedding table (sum of the fields' vocabularies)."""
        return sum(f.vocab_size for f in self.fields)

    def column_slice(self, name: str) -> slice:
        """Columns of the feature matrix that hold field ``name``."""
        start = 0
        for f in self.fields:
            if f.name == name:
                return slice(start, start + f.max_len)
            start += f.max_len
        raise InvalidParameterError(f"unknown field {name!r}; the schema has {list(self.names)}")

    def column_offsets(self) -> tuple[int, ...]:
        """First column of each field."""
        out, start = [], 0
        for f in self.fields:
            out.append(start)
            start += f.max_len
        return tuple(out)

    def vocab_offsets(self) -> tuple[int, ...]:
        """First row of each field's block in the shared embedding table."""
        out, start = [], 0
        for f in self.fields:
            out.append(start)
            start += f.vocab_size
        return tuple(out)

    def column_vocab_offsets(self) -> list[int]:
        """For every column, the embedding-table offset of its field."""
        out: list[int] = []
        for f, off in zip(self.fields, self.vocab_offsets()):
            out.extend([off] * f.max_len)
        return out

    def column_field_index(self) -> list[int]:
        """For every column, the position of its field."""
        out: list[int] = []
        for i, f in enumerate(self.fields):
            out.extend([i] * f.max_len)
        return out

    # --- derivation -----------------------------------------------------------
    def select(self, names: Iterable[str]) -> Schema:
        """A schema with only the fields ``names`` (in the given order)."""
        chosen = [self[n] for n in names]
        keep = {f.name for f in chosen}
        if self.user_id_field not in keep:
            raise InvalidParameterError(
                f"select(): the user-id field {self.user_id_field!r} must be kept"
            )
        return Schema(
            tuple(chosen),
            user_id_field=self.user_id_field,
            label=self.label,
            timestamp=self.timestamp,
            item_id_field=self.item_id_field if self.item_id_field in keep else None,
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (round-trips through :meth:`from_dict`)."""
        return {
            "fields": [
                {"name": f.name, "role": f.role, "vocab_size": f.vocab_size, "max_len": f.max_len}
                for f in self.fields
            ],
            "user_id_field": self.user_id_field,
            "label": self.label,
            "timestamp": self.timestamp,
            "item_id_field": self.item_id_field,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Schema:
        raw = d.get("fields")
        if not isinstance(raw, Sequence):
            raise InvalidParameterError("schema dict needs a list under 'fields'")
        fields = []
        for i, fd in enumerate(raw):
            if not isinstance(fd, dict):
                raise InvalidParameterError(f"schema field #{i} must be a table/dict; got {fd!r}")
            unknown = set(fd) - {"name", "role", "vocab_size", "max_len"}
            if unknown:
                raise InvalidParameterError(f"schema field #{i}: unknown keys {sorted(unknown)}")
            fields.append(Field(**fd))
        return cls(
            tuple(fields),
            user_id_field=str(d["user_id_field"]),
            label=str(d.get("label", "click")),
            timestamp=None if d.get("timestamp") is None else str(d.get("timestamp")),
            item_id_field=None if d.get("item_id_field") is None else str(d.get("item_id_field")),
        )
