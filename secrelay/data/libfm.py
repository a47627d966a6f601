"""libFM / libSVM loader driven by a field map.

Two line formats are read (blank lines are skipped)::

    label feat:val feat:val ...               # libSVM
    label field:feat:val field:feat:val ...   # libFM, as in the BARS Frappe files

``label`` is 1 (click) or 0; -1 is read as 0. ``feat`` is a global feature index
and ``val`` must be 1: secrelay's CTR models are embedding models over
categorical features, so a real-valued feature is rejected rather than silently
binarised.

A :class:`FieldMap` says which field each *key* belongs to: in libFM files the
key is the ``field`` index of each token, in libSVM files the feature index. The
feature indices that occur in a field are coded 1..n in sorted order (index 0
stays padding / unknown). A field whose tokens may repeat on a line is
multi-valued (``max_len`` columns; inferred from the data when not given).

The files have no time column: the timestamp of a row is its 0-based position
among the data lines, so "earlier" means "earlier in the file", and the schema's
``timestamp`` is ``None``. The device identity (:attr:`CTRDataset.user`) is the
code of the designated user field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data._io import LoadResult, PathLike, Vocabulary, data_error, read_lines
from secrelay.data.dataset import CTRDataset
from secrelay.data.filters import apply_min_rows
from secrelay.data.schema import FIELD_ROLES, Field, FieldRole, Schema

__all__ = ["FieldMap", "FieldMapEntry", "LibFMFormat", "load_libfm", "read_libfm"]

LibFMFormat = Literal["auto", "libfm", "libsvm"]


@dataclass(frozen=True)
class FieldMapEntry:
    """One field of a :class:`FieldMap`.

    Parameters
    ----------
    name:
        Field name in the resulting :class:`Schema`.
    role:
        ``"user"``, ``"item"`` or ``"context"``.
    keys:
        The libFM field indices (libFM files) or feature indices (libSVM files)
        that belong to this field.
    max_len:
        Columns for the field; ``None`` infers the largest number of the field's
        tokens on one line (1 for a single-valued field). A line with more tokens
        than an explicit ``max_len`` is an error.
    """

    name: str
    role: FieldRole
    keys: tuple[int, ...]
    max_len: int | None = None

    def __post_init__(self) -> None:
        keys = tuple(self.keys)
        object.__setattr__(self, "keys", keys)
        if self.role not in FIELD_ROLES:
            raise InvalidParameterError(
                f"field map entry {self.name!r}: `role` must be one of {FIELD_ROLES}; "
                f"got {self.role!r}"
            )
        if not keys:
            raise InvalidParameterError(f"field map entry {self.name!r}: `keys` is empty")
        if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in keys):
            raise InvalidParameterError(
                f"field map entry {self.name!r}: `keys` must be ints; got {keys[:5]!r}"
            )
        if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len < 1):
            raise InvalidParameterError(
                f"field map entry {self.name!r}: `max_len` must be None or an int >= 1; "
                f"got {self.max_len!r}"
            )


@dataclass(frozen=True)
class FieldMap:
    """Which field each key of a libFM/libSVM file belongs to, and each field's role.

    Parameters
    ----------
    entries:
        The fields, in the column order of the resulting schema.
    user_field:
        The field that identifies users (a ``"user"`` field): its code is the
        device identity and it is the schema's ``user_id_field``.
    item_field:
        The item-id field, or ``None``.

    Examples
    --------
    >>> fm = FieldMap.from_fields(
    ...     {"user_id": ("user", 0), "item_id": ("item", 1), "tags": ("item", [2, 3])},
    ...     user_field="user_id", item_field="item_id")
    >>> fm.field_of(3)
    'tags'
    """

    entries: tuple[FieldMapEntry, ...]
    user_field: str
    item_field: str | None = None
    _key_to_entry: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = tuple(self.entries)
        object.__setattr__(self, "entries", entries)
        problems: list[str] = []
        names = [e.name for e in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate field names {dupes}")
        key_to_entry: dict[int, int] = {}
        for i, e in enumerate(entries):
            for k in e.keys:
                if int(k) in key_to_entry:
                    problems.append(
                        f"key {int(k)} is claimed by both {entries[key_to_entry[int(k)]].name!r} "
                        f"and {e.name!r}"
                    )
                key_to_entry[int(k)] = i
        by_name = {e.name: e for e in entries}
        if self.user_field not in by_name:
            problems.append(f"`user_field` {self.user_field!r} is not a field (fields: {names})")
        elif by_name[self.user_field].role != "user":
            problems.append(f"`user_field` {self.user_field!r} must have role 'user'")
        if self.item_field is not None and self.item_field not in by_name:
            problems.append(f"`item_field` {self.item_field!r} is not a field (fields: {names})")
        if problems:
            raise InvalidParameterError("invalid field map: " + "; ".join(problems))
        object.__setattr__(self, "_key_to_entry", key_to_entry)

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[str, tuple[FieldRole, int | Iterable[int]]],
        *,
        user_field: str,
        item_field: str | None = None,
    ) -> FieldMap:
        """Build from ``{name: (role, key or keys)}`` (keys may be a ``range``)."""
        entries = []
        for name, spec in fields.items():
            if not isinstance(spec, tuple) or len(spec) != 2:
                raise InvalidParameterError(
                    f"field map {name!r}: expected (role, keys); got {spec!r}"
                )
            role, keys = spec
            key_tuple = (keys,) if isinstance(keys, (int, np.integer)) else tuple(keys)
            entries.append(FieldMapEntry(name, role, key_tuple))
        return cls(tuple(entries), user_field=user_field, item_field=item_field)

    def field_of(self, key: int) -> str | None:
        """Name of the field that owns ``key`` (``None`` if no field does)."""
        i = self._key_to_entry.get(int(key))
        return None if i is None else self.entries[i].name

    def entry_index(self, key: int) -> int | None:
        """Position in :attr:`entries` of the field that owns ``key``."""
        return self._key_to_entry.get(int(key))


def _parse_label(text: str, path: PathLike, line: int) -> float:
    try:
        v = float(text)
    except ValueError:
        raise data_error(path, line, f"label {text!r} is not numeric") from None
    if v == 1.0:
        return 1.0
    if v in (0.0, -1.0):
        return 0.0
    raise data_error(path, line, f"label {text!r} must be 1, 0 or -1")


def read_libfm(
    path: PathLike,
    field_map: FieldMap,
    *,
    format: LibFMFormat = "auto",
    min_rows_per_user: int = 1,
    encoding: str = "utf-8",
) -> LoadResult:
    """Load a libFM or libSVM file with the raw feature index behind every code.

    Parameters
    ----------
    path:
        The file.
    field_map:
        Which field each key belongs to (see the module docstring).
    format:
        ``"libfm"`` (``field:feat:val`` tokens), ``"libsvm"`` (``feat:val``) or
        ``"auto"`` (decided by the first token of the first data line; every
        later token must then have the same form).
    min_rows_per_user:
        Users with fewer rows are removed and reported in ``dataset.reports``.
    encoding:
        Text encoding of the file.

    Returns
    -------
    LoadResult
        The data set and, per field, the vocabulary of raw feature indices.

    Raises
    ------
    DataFormatError
        Empty file, bad encoding, a non-numeric or non-binary label, a malformed
        token, a key the field map does not know, a feature value other than 1,
        more tokens of a field than its ``max_len``, or a line without the user
        field; the message names the file, the 1-based line and the reason.
    """
    if format not in ("auto", "libfm", "libsvm"):
        raise InvalidParameterError(f"`format` must be 'auto', 'libfm' or 'libsvm'; got {format!r}")
    lines = read_lines(path, encoding=encoding, what="libFM/libSVM file")
    n_fields = len(field_map.entries)
    user_entry = next(i for i, e in enumerate(field_map.entries) if e.name == field_map.user_field)
    labels: list[float] = []
    rows: list[list[list[int]]] = []
    fmt = format
    for lineno, raw in enumerate(lines, start=1):
        tokens = raw.split()
        if not tokens:
            continue
        label = _parse_label(tokens[0], path, lineno)
        values: list[list[int]] = [[] for _ in range(n_fields)]
        for tok in tokens[1:]:
            parts = tok.split(":")
            if fmt == "auto":
                if len(parts) not in (2, 3):
                    raise data_error(
                        path, lineno, f"token {tok!r} is neither feat:val nor field:feat:val"
                    )
                fmt = "libfm" if len(parts) == 3 else "libsvm"
            want = 3 if fmt == "libfm" else 2
            if len(parts) != want:
                form = "field:feat:val" if fmt == "libfm" else "feat:val"
                raise data_error(
                    path, lineno, f"token {tok!r} is not of the form {form} ({fmt} format)"
                )
            try:
                nums = [int(p) for p in parts[:-1]]
                val = float(parts[-1])
            except ValueError:
                raise data_error(path, lineno, f"token {tok!r} is not numeric") from None
            if val != 1.0:
                raise data_error(
                    path,
                    lineno,
                    f"feature value {parts[-1]!r} in {tok!r} is not 1: only categorical "
                    "(one-hot) features are supported",
                )
            key, feat = (nums[0], nums[1]) if fmt == "libfm" else (nums[0], nums[0])
            entry = field_map.entry_index(key)
            if entry is None:
                what = "field index" if fmt == "libfm" else "feature index"
                raise data_error(
                    path, lineno, f"unknown field: {what} {key} in {tok!r} is not in the field map"
                )
            values[entry].append(feat)
        for i, e in enumerate(field_map.entries):
            if e.max_len is not None and len(values[i]) > e.max_len:
                raise data_error(
                    path,
                    lineno,
                    f"field {e.name!r} has {len(values[i])} values but max_len={e.max_len}",
                )
        if len(values[user_entry]) != 1:
            raise data_error(
                path,
                lineno,
                f"user field {field_map.user_field!r} must have exactly one value; "
                f"got {len(values[user_entry])}",
            )
        labels.append(label)
        rows.append(values)

    vocabs: dict[str, Vocabulary] = {}
    fields: list[Field] = []
    blocks: list[np.ndarray] = []
    n = len(rows)
    for i, e in enumerate(field_map.entries):
        vocab = Vocabulary.from_values(e.name, (f for r in rows for f in r[i]))
        width = e.max_len if e.max_len is not None else max(1, max(len(r[i]) for r in rows))
        block = np.zeros((n, width), dtype=np.int64)
        for k, r in enumerate(rows):
            if r[i]:
                block[k, : len(r[i])] = vocab.encode(r[i])
        vocabs[e.name] = vocab
        fields.append(Field(e.name, e.role, vocab.size, max_len=width))
        blocks.append(block)
    schema = Schema(
        tuple(fields),
        user_id_field=field_map.user_field,
        label="click",
        timestamp=None,
        item_id_field=field_map.item_field,
    )
    x = np.concatenate(blocks, axis=1)
    user_col = schema.column_slice(field_map.user_field).start
    ds = CTRDataset(
        schema,
        x,
        np.asarray(labels, dtype=np.float32),
        x[:, user_col].copy(),
        np.arange(n, dtype=np.int64),
    )
    return LoadResult(apply_min_rows(ds, min_rows_per_user, path), vocabs)


def load_libfm(
    path: PathLike,
    field_map: FieldMap,
    *,
    format: LibFMFormat = "auto",
    min_rows_per_user: int = 1,
    encoding: str = "utf-8",
) -> CTRDataset:
    """Load a libFM or libSVM file as a :class:`CTRDataset`.

    See :func:`read_libfm` for the parameters and errors; this returns only the
    data set.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.libfm")
    >>> _ = open(p, "w").write("1 0:7:1 1:20:1\\n-1 0:8:1 1:21:1\\n0 0:7:1 1:21:1\\n")
    >>> fm = FieldMap.from_fields({"user_id": ("user", 0), "item_id": ("item", 1)},
    ...                           user_field="user_id", item_field="item_id")
    >>> ds = load_libfm(p, fm)
    >>> ds.x.tolist(), ds.y.tolist()
    ([[1, 1], [2, 2], [1, 2]], [1.0, 0.0, 0.0])
    """
    return read_libfm(
        path, field_map, format=format, min_rows_per_user=min_rows_per_user, encoding=encoding
    ).dataset
