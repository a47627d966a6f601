"""MovieLens-100K loader: real data (skipped when absent) and small hand-written files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocols.errors import DataFormatError, InvalidParameterError
from secrelay.data import CTRDataset, load_movielens100k, read_movielens100k
from secrelay.data.movielens import ML100K_GENRES

# --- real data ------------------------------------------------------------------------------


@pytest.mark.movielens
def test_real_shape_users_items_ctr(ml100k: CTRDataset) -> None:
    assert len(ml100k) == 100_000
    assert ml100k.n_users == 943
    assert np.unique(ml100k.column("item_id")).size == 1682
    assert int(ml100k.y.sum()) == 55_375
    assert ml100k.ctr == pytest.approx(0.554, abs=5e-4)
    assert ml100k.schema.user_id_field == "user_id"
    assert ml100k.schema.item_id_field == "item_id"


@pytest.mark.movielens
def test_real_fields_and_vocab_sizes(ml100k: CTRDataset) -> None:
    got = [(f.name, f.role, f.vocab_size, f.max_len) for f in ml100k.schema.fields]
    assert got == [
        ("user_id", "user", 944, 1),
        ("age", "user", 8, 1),
        ("gender", "user", 3, 1),
        ("occupation", "user", 22, 1),
        ("zip", "user", 20, 1),
        ("item_id", "item", 1683, 1),
        ("genres", "item", 20, 6),
        ("year", "item", 9, 1),
    ]


@pytest.mark.movielens
def test_real_labels_and_times_match_the_raw_file(ml100k: CTRDataset, ml100k_path: Path) -> None:
    raw = np.loadtxt(ml100k_path / "u.data", dtype=np.int64)
    np.testing.assert_array_equal(ml100k.y, (raw[:, 2] >= 4).astype(np.float32))
    np.testing.assert_array_equal(ml100k.timestamp, raw[:, 3])
    # Official ids run 1..n, so codes equal raw ids; the identity is the user_id code.
    np.testing.assert_array_equal(ml100k.user, raw[:, 0])
    np.testing.assert_array_equal(ml100k.column("user_id"), raw[:, 0])
    np.testing.assert_array_equal(ml100k.column("item_id"), raw[:, 1])


@pytest.mark.movielens
def test_real_item_features(ml100k_path: Path) -> None:
    res = read_movielens100k(ml100k_path)
    ds = res.dataset
    genres = ds.column("genres")
    assert (genres[:, 0] > 0).all(), "every movie has at least one genre flag"
    year = ds.column("year")
    items_without_year = np.unique(ds.column("item_id")[year == 0])
    assert items_without_year.tolist() == [267]  # the one movie without a release date
    assert res.vocabularies["year"].values == (1920, 1930, 1940, 1950, 1960, 1970, 1980, 1990)
    assert res.vocabularies["genres"].values == ML100K_GENRES
    assert res.vocabularies["gender"].values == ("F", "M")
    # Toy Story (item 1): Animation, Children's, Comedy; 1990s.
    row = np.flatnonzero(ds.column("item_id") == 1)[0]
    names = [res.vocabularies["genres"].decode(int(c)) for c in genres[row] if c]
    assert names == ["Animation", "Children's", "Comedy"]
    assert res.vocabularies["year"].decode(int(year[row])) == 1990


@pytest.mark.movielens
def test_real_loading_is_deterministic(ml100k: CTRDataset, ml100k_path: Path) -> None:
    again = load_movielens100k(ml100k_path)
    np.testing.assert_array_equal(again.x, ml100k.x)
    np.testing.assert_array_equal(again.y, ml100k.y)


@pytest.mark.movielens
def test_real_zip_prefix_two_characters(ml100k_path: Path) -> None:
    res = read_movielens100k(ml100k_path, zip_prefix_len=2)
    assert all(len(str(v)) <= 2 for v in res.vocabularies["zip"].values)
    assert res.dataset.schema["zip"].vocab_size > 20


# --- small files --------------------------------------------------------------------------------

USERS = "5|17|M|student|12345\n2|30|F|writer|T8H1N\n9|60|M|retired|99999\n"
ITEMS = "\n".join(
    [
        "10|A (1995)|01-Jan-1995||http://a|" + "|".join(["0", "1", "1"] + ["0"] * 16),
        "3|B (1968)|15-Mar-1968||http://b|" + "|".join(["0"] * 18 + ["1"]),
        "7|unknown||||" + "|".join(["1"] + ["0"] * 18),
    ]
)
DATA = "5\t10\t4\t100\n2\t3\t3\t90\n5\t7\t5\t110\n2\t10\t1\t120\n9\t3\t4\t80\n"


def write_ml(tmp_path: Path, data: str = DATA, users: str = USERS, items: str = ITEMS) -> Path:
    (tmp_path / "u.data").write_text(data, encoding="latin-1")
    (tmp_path / "u.user").write_text(users, encoding="latin-1")
    (tmp_path / "u.item").write_text(items + "\n", encoding="latin-1")
    return tmp_path


def test_small_files_coding(tmp_path: Path) -> None:
    res = read_movielens100k(write_ml(tmp_path))
    ds, v = res.dataset, res.vocabularies
    assert v["user_id"].values == (2, 5, 9)  # sorted numerically
    assert v["item_id"].values == (3, 7, 10)
    assert v["occupation"].values == ("retired", "student", "writer")
    assert v["zip"].values == ("1", "9", "T")
    assert v["year"].values == (1960, 1990)
    assert ds.y.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert ds.timestamp.tolist() == [100, 90, 110, 120, 80]
    assert ds.user.tolist() == [2, 1, 2, 1, 3]  # the user_id codes
    assert ds.schema["genres"].max_len == 2
    first = dict(zip(ds.schema.names, [ds.column(n)[0] for n in ds.schema.names]))
    assert v["age"].decode(int(first["age"])) == "<18"
    assert v["gender"].decode(int(first["gender"])) == "M"
    assert v["year"].decode(int(first["year"])) == 1990
    assert [v["genres"].decode(int(c)) for c in first["genres"]] == ["Action", "Adventure"]
    ages = {
        v["user_id"].decode(int(u)): v["age"].decode(int(a))
        for u, a in zip(ds.column("user_id"), ds.column("age"))
    }
    assert ages == {5: "<18", 2: "25-34", 9: "56+"}
    # item 7 has no date -> year 0; its only flag is "unknown" (a genre value, not padding)
    row = int(np.flatnonzero(ds.column("item_id") == v["item_id"].code(7))[0])
    assert ds.column("year")[row] == 0
    assert ds.column("genres")[row].tolist() == [1, 0]


def test_users_without_ratings_are_reported(tmp_path: Path) -> None:
    users = USERS + "4|40|F|artist|55555\n"
    ds = load_movielens100k(write_ml(tmp_path, users=users))
    rep = [r for r in ds.reports if "without ratings" in r.step]
    assert rep and rep[0].users_removed == 1 and rep[0].rows_removed == 0
    assert ds.n_users == 3
    assert ds.schema["user_id"].vocab_size == 5  # kept in the vocabulary


def test_min_rows_per_user_filter_report(tmp_path: Path) -> None:
    ds = load_movielens100k(write_ml(tmp_path), min_rows_per_user=2)
    rep = ds.reports[-1]
    assert rep.step == "min_rows_per_user"
    assert (rep.rows_removed, rep.users_removed) == (1, 1)  # user 9 has a single row
    assert len(ds) == 4 and ds.n_users == 2


def test_filter_that_removes_every_user_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"u\.data: no rows left after filtering"):
        load_movielens100k(write_ml(tmp_path), min_rows_per_user=3)


@pytest.mark.parametrize(
    ("file", "content", "line", "reason"),
    [
        ("u.data", DATA + "5\t10\t4\n", 6, "expected 4 tab-separated columns"),
        ("u.data", "5\t10\t4\t100\n2\t3\tx\t90\n", 2, "rating 'x' is not an integer"),
        ("u.data", "5\t10\t4\t1.5e9\n", 1, "timestamp '1.5e9' is not an integer"),
        ("u.data", "5\t10\t9\t100\n", 1, "rating 9 is outside 1..5"),
        ("u.data", "5\t10\t4\t100\n\n8\t10\t4\t100\n", 3, "user 8 is not in u.user"),
        ("u.data", "5\t10\t4\t100\n5\t11\t4\t100\n", 2, "item 11 is not in u.item"),
        ("u.data", "", 1, "empty u.data"),
        ("u.data", "\n  \n", 1, "empty u.data"),
        ("u.user", USERS + "7|33|M|writer\n", 4, "expected 5 '|'-separated columns"),
        ("u.user", "5|old|M|student|12345\n", 1, "age 'old' is not an integer"),
        ("u.user", USERS + "5|20|M|student|1\n", 4, "duplicate user id 5"),
        ("u.item", "10|A|01-Jan-1995||u|0|1\n", 1, "expected 24 '|'-separated columns"),
        ("u.item", "10|A|1995||u|" + "|".join(["0"] * 19), 1, "not of the form dd-Mon-yyyy"),
        ("u.item", "10|A|||u|" + "|".join(["2"] * 19), 1, "genre flag '2' is not 0 or 1"),
    ],
)
def test_malformed_files(tmp_path: Path, file: str, content: str, line: int, reason: str) -> None:
    write_ml(tmp_path)
    (tmp_path / file).write_text(content, encoding="latin-1")
    with pytest.raises(DataFormatError) as e:
        load_movielens100k(tmp_path)
    msg = str(e.value)
    assert f"{tmp_path / file}, line {line}: " in msg
    assert reason in msg


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="directory not found"):
        load_movielens100k(tmp_path / "nope")
    write_ml(tmp_path)
    (tmp_path / "u.item").unlink()
    with pytest.raises(DataFormatError, match=r"u\.item: u\.item not found"):
        load_movielens100k(tmp_path)


def test_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ml(tmp_path)
    monkeypatch.setenv("SECRELAY_ML100K", str(tmp_path))
    assert len(load_movielens100k()) == 5
    monkeypatch.delenv("SECRELAY_ML100K")
    with pytest.raises(InvalidParameterError, match="SECRELAY_ML100K"):
        load_movielens100k()


def test_bad_zip_prefix_len(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="zip_prefix_len"):
        load_movielens100k(write_ml(tmp_path), zip_prefix_len=3)
