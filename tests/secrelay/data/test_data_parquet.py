"""Parquet loader (skipped when pyarrow, the optional extra, is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocols.errors import DataFormatError
from secrelay.data import ColumnField, TabularSpec, load_csv, load_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# The same data as test_data_tabular.py, kept here so each module stands alone.
CSV = """uid,movie,genres,city,rating,ts
u7,m2,Drama|Comedy,Paris,5,1000
u10,m1,,Lyon,3,900
u7,m1,Drama,,4,1100
u9,m3,Comedy|Drama|War,Paris,1,1200
"""


def spec(**kw: object) -> TabularSpec:
    base: dict[str, object] = dict(
        fields=(
            ColumnField("uid", "user", name="user_id"),
            ColumnField("city", "user"),
            ColumnField("movie", "item", name="item_id"),
            ColumnField("genres", "item", separator="|"),
        ),
        user_column="uid",
        label_column="rating",
        label_threshold=4,
        timestamp_column="ts",
        item_id_field="item_id",
    )
    base.update(kw)
    return TabularSpec(**base)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _table() -> object:
    return pa.table(
        {
            "uid": ["u7", "u10", "u7", "u9"],
            "movie": ["m2", "m1", "m1", "m3"],
            "genres": ["Drama|Comedy", None, "Drama", "Comedy|Drama|War"],
            "city": ["Paris", "Lyon", None, "Paris"],
            "rating": [5, 3, 4, 1],
            "ts": [1000, 900, 1100, 1200],
        }
    )


def test_parquet_matches_csv(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(_table(), p)
    a = load_parquet(p, spec())
    b = load_csv(write(tmp_path, CSV), spec())
    for name in ("x", "y", "user", "timestamp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.schema == b.schema


def test_parquet_list_column(tmp_path: Path) -> None:
    t = _table().set_column(  # type: ignore[attr-defined]
        2, "genres", pa.array([["Drama", "Comedy"], [], ["Drama"], ["Comedy", "Drama", "War"]])
    )
    p = tmp_path / "l.parquet"
    pq.write_table(t, p)
    ds = load_parquet(p, spec())
    assert ds.column("genres").tolist() == [[2, 1, 0], [0, 0, 0], [2, 0, 0], [1, 2, 3]]


def test_parquet_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(_table().drop(["rating"]), p)  # type: ignore[attr-defined]
    with pytest.raises(DataFormatError, match=r"unknown field: column\(s\) \['rating'\]"):
        load_parquet(p, spec())
    t = _table().set_column(4, "rating", pa.array([5, None, 4, 1]))  # type: ignore[attr-defined]
    pq.write_table(t, p)
    with pytest.raises(DataFormatError, match=r"d\.parquet, row 2: empty label"):
        load_parquet(p, spec())
    bad = write(tmp_path, CSV, "fake.parquet")
    with pytest.raises(DataFormatError, match="not a readable Parquet file"):
        load_parquet(bad, spec())
    with pytest.raises(DataFormatError, match="not found"):
        load_parquet(tmp_path / "none.parquet", spec())
