"""Generic CSV / Parquet loader driven by a :class:`TabularSpec`.

The spec (:mod:`secrelay.data.tabular_spec`, re-exported here) says which source
columns become which categorical fields, and names the label, user and timestamp
columns; this module reads a file and applies it.

Coding: the distinct raw values of each field are sorted (integers — including
strings that spell integers — numerically, everything else as text) and coded
1..n; an empty cell (CSV) or null (Parquet) in a *feature* column is coded 0
(unknown). An empty label, user or timestamp cell is an error. The device
identity is the code of the user field. Timestamps are integers (e.g. Unix
seconds) or ISO-8601 date-times (converted to Unix seconds); without a
timestamp column the row position is used and the schema's ``timestamp`` is
``None``.

Parquet needs :mod:`pyarrow`, an optional extra: ``pip install secrelay[parquet]``.
"""

from __future__ import annotations

import csv
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data._io import LoadResult, PathLike, Vocabulary, data_error, read_lines
from secrelay.data.dataset import CTRDataset
from secrelay.data.filters import apply_min_rows
from secrelay.data.schema import Field, Schema
from secrelay.data.tabular_spec import ColumnField, TabularSpec

__all__ = [
    "ColumnField",
    "TabularSpec",
    "load_csv",
    "load_parquet",
    "read_csv",
    "read_parquet",
]


def _missing(v: object) -> bool:
    return (
        v is None
        or (isinstance(v, str) and not v.strip())
        or (isinstance(v, float) and np.isnan(v))
    )


def _norm(v: Any) -> Hashable:
    """A hashable raw value: stripped strings, Python ints for integral numbers."""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return str(v)


def _to_number(v: object) -> float:
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return float(str(v).strip())


def _to_timestamp(v: object) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if not float(v).is_integer():
            raise ValueError("not an integer")
        return int(v)
    if isinstance(v, np.datetime64):
        return int(v.astype("datetime64[s]").astype(np.int64))
    if hasattr(v, "timestamp") and callable(v.timestamp):  # datetime / pandas Timestamp
        return int(v.timestamp())
    s = str(v).strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        f = None
    if f is not None:
        if not f.is_integer():
            raise ValueError("not an integer")
        return int(f)
    return int(np.datetime64(s, "s").astype(np.int64))


def _build(
    source: PathLike,
    unit: str,
    data: Mapping[str, Sequence[object]],
    line_of: Sequence[int],
    spec: TabularSpec,
    min_rows_per_user: int,
) -> LoadResult:
    """Turn raw columns into a data set (shared by the CSV and Parquet readers)."""
    n = len(line_of)
    labels = np.empty(n, dtype=np.float32)
    for k, v in enumerate(data[spec.label_column]):
        if _missing(v):
            raise data_error(
                source, line_of[k], f"empty label in column {spec.label_column!r}", unit=unit
            )
        try:
            num = _to_number(v)
        except ValueError:
            raise data_error(
                source,
                line_of[k],
                f"label {v!r} in column {spec.label_column!r} is not numeric",
                unit=unit,
            ) from None
        if not np.isfinite(num):
            raise data_error(source, line_of[k], f"label {v!r} is not finite", unit=unit)
        if spec.label_threshold is None:
            if num not in (0.0, 1.0):
                raise data_error(
                    source,
                    line_of[k],
                    f"label {v!r} must be 0 or 1 (set `label_threshold` for a rating column)",
                    unit=unit,
                )
            labels[k] = num
        else:
            labels[k] = float(num >= float(spec.label_threshold))

    if spec.timestamp_column is None:
        ts = np.arange(n, dtype=np.int64)
    else:
        ts = np.empty(n, dtype=np.int64)
        for k, v in enumerate(data[spec.timestamp_column]):
            if _missing(v):
                raise data_error(
                    source,
                    line_of[k],
                    f"empty timestamp in column {spec.timestamp_column!r}",
                    unit=unit,
                )
            try:
                ts[k] = _to_timestamp(v)
            except (ValueError, TypeError, OverflowError):
                raise data_error(
                    source,
                    line_of[k],
                    f"timestamp {v!r} in column {spec.timestamp_column!r} is neither an integer "
                    "nor an ISO-8601 date-time",
                    unit=unit,
                ) from None

    vocabs: dict[str, Vocabulary] = {}
    fields: list[Field] = []
    blocks: list[np.ndarray] = []
    for cf in spec.fields:
        col = data[cf.column]
        if cf.column == spec.user_column:
            for k, v in enumerate(col):
                if _missing(v):
                    raise data_error(
                        source, line_of[k], f"empty user id in column {cf.column!r}", unit=unit
                    )
        if cf.multi_valued:
            cells: list[list[Hashable]] = []
            for k, v in enumerate(col):
                vals: list[Hashable]
                if isinstance(v, (list, tuple, np.ndarray)):
                    vals = [_norm(e) for e in v if not _missing(e)]
                elif _missing(v):
                    vals = []
                elif cf.separator is not None:
                    vals = [_norm(e) for e in str(v).split(cf.separator) if e.strip()]
                else:
                    vals = [_norm(v)]
                if cf.max_len is not None and len(vals) > cf.max_len:
                    raise data_error(
                        source,
                        line_of[k],
                        f"column {cf.column!r} has {len(vals)} values but max_len={cf.max_len}",
                        unit=unit,
                    )
                cells.append(vals)
            vocab = Vocabulary.from_values(cf.field_name, (e for c in cells for e in c))
            width = cf.max_len or max(1, max((len(c) for c in cells), default=1))
            block = np.zeros((n, width), dtype=np.int64)
            for k, c in enumerate(cells):
                if c:
                    block[k, : len(c)] = vocab.encode(c)
        else:
            raw = [None if _missing(v) else _norm(v) for v in col]
            vocab = Vocabulary.from_values(cf.field_name, (v for v in raw if v is not None))
            width = 1
            block = vocab.encode(raw).reshape(n, 1)
        vocabs[cf.field_name] = vocab
        fields.append(Field(cf.field_name, cf.role, vocab.size, max_len=width))
        blocks.append(block)

    try:
        schema = Schema(
            tuple(fields),
            user_id_field=spec.user_id_field,
            label="click",
            timestamp=None if spec.timestamp_column is None else "timestamp",
            item_id_field=spec.item_id_field,
        )
    except InvalidParameterError as e:
        raise InvalidParameterError(f"{source}: {e}") from None
    x = np.concatenate(blocks, axis=1) if n else np.zeros((0, schema.n_columns), np.int64)
    user = x[:, schema.column_slice(spec.user_id_field).start].copy()
    ds = CTRDataset(schema, x, labels, user, ts)
    return LoadResult(apply_min_rows(ds, min_rows_per_user, source), vocabs)


def read_csv(
    path: PathLike,
    spec: TabularSpec,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    min_rows_per_user: int = 1,
) -> LoadResult:
    """Load a CSV file with a header line, keeping the raw value behind every code.

    Parameters
    ----------
    path:
        The file; line 1 is the header.
    spec:
        Column → field mapping, label, user and timestamp columns.
    delimiter:
        Column separator (one character).
    encoding:
        Text encoding.
    min_rows_per_user:
        Users with fewer rows are removed and reported in ``dataset.reports``.

    Raises
    ------
    DataFormatError
        Empty file, bad encoding, a header without a column the spec names, a
        line with the wrong number of columns, an empty or non-numeric label, a
        label other than 0/1 without a threshold, a bad timestamp, an empty user
        id, too many values in a multi-valued cell; the message names the file,
        the 1-based line and the reason.
    """
    lines = read_lines(path, encoding=encoding, what="CSV file")
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    missing = [c for c in spec.columns if c not in header]
    if missing:
        raise data_error(
            path,
            1,
            f"unknown field: column(s) {missing} named in the spec are not in the header {header}",
        )
    pos = {c: header.index(c) for c in spec.columns}
    data: dict[str, list[object]] = {c: [] for c in spec.columns}
    line_of: list[int] = []
    for row in reader:
        lineno = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise data_error(
                path, lineno, f"expected {len(header)} columns (as the header); got {len(row)}"
            )
        for c, i in pos.items():
            data[c].append(row[i])
        line_of.append(lineno)
    if not line_of:
        raise data_error(path, 2, "empty CSV file: a header but no data lines")
    return _build(path, "line", data, line_of, spec, min_rows_per_user)


def load_csv(
    path: PathLike,
    spec: TabularSpec,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    min_rows_per_user: int = 1,
) -> CTRDataset:
    """Load a CSV file as a :class:`CTRDataset`; see :func:`read_csv`.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> _ = open(p, "w").write("uid,item,tags,rating,ts\\n7,a,x|y,5,10\\n7,b,y,2,11\\n9,a,,4,12\\n")
    >>> spec = TabularSpec((ColumnField("uid", "user"), ColumnField("item", "item"),
    ...                     ColumnField("tags", "item", separator="|")),
    ...                    user_column="uid", label_column="rating", label_threshold=4,
    ...                    timestamp_column="ts")
    >>> ds = load_csv(p, spec)
    >>> ds.x.tolist(), ds.y.tolist(), ds.user.tolist()
    ([[1, 1, 1, 2], [1, 2, 2, 0], [2, 1, 0, 0]], [1.0, 0.0, 1.0], [1, 1, 2])
    """
    return read_csv(
        path, spec, delimiter=delimiter, encoding=encoding, min_rows_per_user=min_rows_per_user
    ).dataset


def _import_pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "reading Parquet files needs pyarrow, an optional dependency: "
            "pip install secrelay[parquet]"
        ) from None
    return pq


def read_parquet(path: PathLike, spec: TabularSpec, *, min_rows_per_user: int = 1) -> LoadResult:
    """Load a Parquet file, keeping the raw value behind every code.

    Errors name the 1-based *row* instead of a line. Needs ``pyarrow``
    (``pip install secrelay[parquet]``).

    Raises
    ------
    ImportError
        pyarrow is not installed.
    DataFormatError
        The file is missing, not Parquet, empty, lacks a column the spec names,
        or holds a bad label / timestamp / user cell (see :func:`read_csv`).
    """
    pq = _import_pyarrow_parquet()
    p = Path(path)
    if not p.is_file():
        raise data_error(p, None, "Parquet file not found (expected a file at this path)")
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a non-Parquet file
        raise data_error(
            p, None, f"not a readable Parquet file ({type(e).__name__}: {e})"
        ) from None
    names = list(pf.schema_arrow.names)
    missing = [c for c in spec.columns if c not in names]
    if missing:
        raise data_error(
            p,
            None,
            f"unknown field: column(s) {missing} named in the spec are not in the "
            f"file's columns {names}",
        )
    table = pf.read(columns=list(spec.columns))
    if table.num_rows == 0:
        raise data_error(p, 1, "empty Parquet file: no rows")
    data = {c: table.column(c).to_pylist() for c in spec.columns}
    return _build(p, "row", data, range(1, table.num_rows + 1), spec, min_rows_per_user)


def load_parquet(path: PathLike, spec: TabularSpec, *, min_rows_per_user: int = 1) -> CTRDataset:
    """Load a Parquet file as a :class:`CTRDataset`; see :func:`read_parquet`."""
    return read_parquet(path, spec, min_rows_per_user=min_rows_per_user).dataset
