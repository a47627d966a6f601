"""CSV / Parquet loader driven by a TabularSpec."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from protocols.errors import DataFormatError, InvalidParameterError
from secrelay.data import ColumnField, TabularSpec, load_csv, load_parquet, read_csv

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


def test_csv_basic(tmp_path: Path) -> None:
    res = read_csv(write(tmp_path, CSV), spec())
    ds, v = res.dataset, res.vocabularies
    assert ds.schema.names == ("user_id", "city", "item_id", "genres")
    assert ds.schema["genres"].max_len == 3
    assert v["user_id"].values == ("u10", "u7", "u9")
    assert v["genres"].values == ("Comedy", "Drama", "War")
    assert ds.y.tolist() == [1.0, 0.0, 1.0, 0.0]  # rating >= 4
    assert ds.timestamp.tolist() == [1000, 900, 1100, 1200]
    assert ds.user.tolist() == [2, 1, 2, 3]
    assert ds.column("city").tolist() == [2, 1, 0, 2]  # empty cell -> 0 (unknown)
    assert ds.column("genres").tolist() == [[2, 1, 0], [0, 0, 0], [2, 0, 0], [1, 2, 3]]
    assert ds.schema.user_id_field == "user_id" and ds.schema.item_id_field == "item_id"


def test_integer_strings_sort_numerically_and_01_labels(tmp_path: Path) -> None:
    text = "user,item,click\n10,1,1\n9,2,0\n100,1,1\n"
    s = TabularSpec(
        (ColumnField("user", "user"), ColumnField("item", "item")),
        user_column="user",
        label_column="click",
    )
    res = read_csv(write(tmp_path, text), s)
    assert res.vocabularies["user"].values == ("9", "10", "100")
    assert res.dataset.y.tolist() == [1.0, 0.0, 1.0]
    assert res.dataset.timestamp.tolist() == [0, 1, 2]  # no timestamp column: row order
    assert res.dataset.schema.timestamp is None


def test_iso_timestamps_and_delimiter(tmp_path: Path) -> None:
    text = "user;item;click;when\na;x;1;2024-01-01T00:00:10\nb;y;0;2024-01-01\n"
    s = TabularSpec(
        (ColumnField("user", "user"), ColumnField("item", "item")),
        user_column="user",
        label_column="click",
        timestamp_column="when",
    )
    ds = load_csv(write(tmp_path, text), s, delimiter=";")
    assert ds.timestamp.tolist() == [1_704_067_210, 1_704_067_200]


def test_explicit_max_len(tmp_path: Path) -> None:
    fields = (
        ColumnField("uid", "user", name="user_id"),
        ColumnField("genres", "item", separator="|", max_len=2),
    )
    with pytest.raises(
        DataFormatError, match=r"line 5: column 'genres' has 3 values but max_len=2"
    ):
        load_csv(write(tmp_path, CSV), spec(fields=fields, item_id_field=None))


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (CSV + "u1,m1,Drama,Paris,5\n", 6, "expected 6 columns (as the header); got 5"),
        (CSV.replace(",5,1000", ",five,1000"), 2, "label 'five' in column 'rating' is not numeric"),
        (CSV.replace(",3,900", ",,900"), 3, "empty label in column 'rating'"),
        (CSV.replace(",1100", ",yesterday"), 4, "timestamp 'yesterday' in column 'ts'"),
        (CSV.replace(",1100", ",11.5"), 4, "timestamp '11.5' in column 'ts'"),
        (CSV.replace("u9,", ","), 5, "empty user id in column 'uid'"),
        (CSV.replace("rating", "stars"), 1, "unknown field: column(s) ['rating']"),
        ("", 1, "empty CSV file"),
        ("uid,movie,genres,city,rating,ts\n", 2, "a header but no data lines"),
    ],
)
def test_malformed_csv(tmp_path: Path, text: str, line: int, reason: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(DataFormatError) as e:
        load_csv(p, spec())
    assert f"{p}, line {line}: " in str(e.value)
    assert reason in str(e.value)


def test_label_must_be_binary_without_threshold(tmp_path: Path) -> None:
    p = write(tmp_path, CSV)
    with pytest.raises(DataFormatError, match=r"line 2: label '5' must be 0 or 1"):
        load_csv(p, spec(label_threshold=None))


def test_bad_encoding(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(CSV.encode() + b"u1,m1,Dr\xe9ma,Paris,5,1\n")
    with pytest.raises(DataFormatError, match=r"line 6: bad encoding"):
        load_csv(p, spec())
    assert len(load_csv(p, spec(), encoding="latin-1")) == 5


def test_min_rows_per_user(tmp_path: Path) -> None:
    ds = load_csv(write(tmp_path, CSV), spec(), min_rows_per_user=2)
    rep = ds.reports[-1]
    assert (rep.rows_removed, rep.users_removed) == (2, 2)
    assert ds.n_users == 1 and len(ds) == 2
    with pytest.raises(DataFormatError, match="no rows left after filtering"):
        load_csv(write(tmp_path, CSV), spec(), min_rows_per_user=3)


def test_spec_validation() -> None:
    with pytest.raises(InvalidParameterError, match="no field reads `user_column`"):
        spec(user_column="nobody")
    with pytest.raises(InvalidParameterError, match="duplicate field names"):
        spec(fields=(ColumnField("uid", "user"), ColumnField("city", "user", name="uid")))
    with pytest.raises(InvalidParameterError, match="also a feature column"):
        spec(label_column="city")
    with pytest.raises(InvalidParameterError, match="`item_id_field`"):
        spec(item_id_field="movie")
    with pytest.raises(InvalidParameterError, match="separator"):
        ColumnField("g", "item", separator="")
    with pytest.raises(InvalidParameterError, match="cannot be multi-valued"):
        spec(fields=(ColumnField("uid", "user", separator="|"),), item_id_field=None)


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install secrelay\[parquet\]"):
        load_parquet(tmp_path / "d.parquet", spec())
