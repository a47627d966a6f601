"""libFM / libSVM loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocols.errors import DataFormatError, InvalidParameterError
from secrelay.data import FieldMap, FieldMapEntry, load_libfm, read_libfm


def fmap() -> FieldMap:
    return FieldMap.from_fields(
        {"user_id": ("user", 0), "item_id": ("item", 1), "tags": ("item", [2, 3])},
        user_field="user_id",
        item_field="item_id",
    )


LIBFM = """1 0:17:1 1:40:1 2:50:1
-1 0:9:1 1:41:1 2:51:1 3:52:1

0 0:17:1 1:41:1
1 0:9:1 1:40:1.0 3:50:1
"""


def write(tmp_path: Path, text: str, name: str = "f.libfm") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_libfm_format(tmp_path: Path) -> None:
    res = read_libfm(write(tmp_path, LIBFM), fmap())
    ds, v = res.dataset, res.vocabularies
    assert ds.schema.names == ("user_id", "item_id", "tags")
    assert ds.schema.timestamp is None
    assert ds.schema["tags"].max_len == 2  # inferred
    assert v["user_id"].values == (9, 17)
    assert v["tags"].values == (50, 51, 52)
    assert ds.y.tolist() == [1.0, 0.0, 0.0, 1.0]  # -1 read as 0
    assert ds.x.tolist() == [[2, 1, 1, 0], [1, 2, 2, 3], [2, 2, 0, 0], [1, 1, 1, 0]]
    assert ds.user.tolist() == [2, 1, 2, 1]  # user_id codes
    assert ds.timestamp.tolist() == [0, 1, 2, 3]  # data-line order, blank line skipped


def test_libsvm_format(tmp_path: Path) -> None:
    fm = FieldMap.from_fields(
        {"user_id": ("user", range(0, 10)), "item_id": ("item", range(10, 20))},
        user_field="user_id",
    )
    p = write(tmp_path, "1 3:1 12:1\n0 5:1 12:1\n+1 3:1 11:1\n", "f.svm")
    ds = load_libfm(p, fm)
    assert ds.x.tolist() == [[1, 2], [2, 2], [1, 1]]
    assert ds.y.tolist() == [1.0, 0.0, 1.0]
    assert load_libfm(p, fm, format="libsvm").x.tolist() == ds.x.tolist()


def test_explicit_max_len_and_min_rows(tmp_path: Path) -> None:
    fm = FieldMap(
        (
            FieldMapEntry("user_id", "user", (0,)),
            FieldMapEntry("item_id", "item", (1,)),
            FieldMapEntry("tags", "item", (2, 3), max_len=3),
        ),
        user_field="user_id",
    )
    ds = load_libfm(write(tmp_path, LIBFM), fm, min_rows_per_user=1)
    assert ds.schema["tags"].max_len == 3
    rep = ds.reports[-1]
    assert (rep.step, rep.rows_removed, rep.users_removed) == ("min_rows_per_user", 0, 0)
    text = LIBFM + "1 0:5:1 1:40:1\n"
    ds2 = load_libfm(write(tmp_path, text), fmap(), min_rows_per_user=2)
    assert (ds2.reports[-1].rows_removed, ds2.reports[-1].users_removed) == (1, 1)
    assert len(ds2) == 4


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("1 0:1:1\nyes 0:1:1\n", 2, "label 'yes' is not numeric"),
        ("2 0:1:1\n", 1, "label '2' must be 1, 0 or -1"),
        ("1 0:1:1\n1 0:1:1 7:3:1\n", 2, "unknown field: field index 7"),
        ("1 0:1:1 1:2\n", 1, "is not of the form field:feat:val"),
        ("1 0:1:1 1-2-1\n", 1, "is not of the form field:feat:val"),
        ("1 0:a:1\n", 1, "token '0:a:1' is not numeric"),
        ("1 0:1:0.5\n", 1, "feature value '0.5' in '0:1:0.5' is not 1"),
        ("1 1:4:1\n", 1, "user field 'user_id' must have exactly one value; got 0"),
        ("1 0:1:1 0:2:1\n", 1, "must have exactly one value; got 2"),
        ("1 0:1:1\n\n1\t0:1:1 1:2:1 :\n", 3, "token ':' is not of the form field:feat:val"),
    ],
)
def test_malformed_lines(tmp_path: Path, text: str, line: int, reason: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(DataFormatError) as e:
        load_libfm(p, fmap())
    assert f"{p}, line {line}: " in str(e.value)
    assert reason in str(e.value)


def test_auto_format_is_decided_once(tmp_path: Path) -> None:
    p = write(tmp_path, "1 0:1:1\n1 0:1\n")
    with pytest.raises(DataFormatError, match=r"line 2: token '0:1' is not of the form field:"):
        load_libfm(p, fmap())
    p = write(tmp_path, "1 0:a:b:c\n")
    with pytest.raises(DataFormatError, match=r"line 1: token '0:a:b:c' is neither"):
        load_libfm(p, fmap())


def test_max_len_exceeded(tmp_path: Path) -> None:
    fm = FieldMap(
        (FieldMapEntry("user_id", "user", (0,)), FieldMapEntry("tags", "item", (2,), max_len=1)),
        user_field="user_id",
    )
    p = write(tmp_path, "1 0:1:1 2:5:1\n0 0:1:1 2:5:1 2:6:1\n")
    with pytest.raises(DataFormatError, match=r"line 2: field 'tags' has 2 values but max_len=1"):
        load_libfm(p, fm)


def test_empty_file_and_bad_encoding(tmp_path: Path) -> None:
    p = write(tmp_path, "\n\n")
    with pytest.raises(DataFormatError, match=r"f\.libfm, line 1: empty"):
        load_libfm(p, fmap())
    p.write_bytes(b"1 0:1:1\n0 0:2:1 1:\xff:1\n")
    with pytest.raises(DataFormatError, match=r"line 2: bad encoding: byte 0xff"):
        load_libfm(p, fmap())
    with pytest.raises(DataFormatError, match="not found"):
        load_libfm(tmp_path / "missing.libfm", fmap())


def test_field_map_validation() -> None:
    with pytest.raises(InvalidParameterError, match="key 1 is claimed by both"):
        FieldMap.from_fields({"user_id": ("user", [0, 1]), "b": ("item", 1)}, user_field="user_id")
    with pytest.raises(InvalidParameterError, match="must have role 'user'"):
        FieldMap.from_fields({"user_id": ("item", 0)}, user_field="user_id")
    with pytest.raises(InvalidParameterError, match="is not a field"):
        FieldMap.from_fields({"u": ("user", 0)}, user_field="user_id")
    with pytest.raises(InvalidParameterError, match="role"):
        FieldMapEntry("x", "device", (0,))  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="`keys` is empty"):
        FieldMapEntry("x", "user", ())
    assert fmap().field_of(3) == "tags" and fmap().field_of(99) is None


def test_bad_format_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="`format`"):
        load_libfm(write(tmp_path, LIBFM), fmap(), format="csv")  # type: ignore[arg-type]


def test_vocabulary_is_independent_of_row_order(tmp_path: Path) -> None:
    lines = [ln for ln in LIBFM.splitlines() if ln.strip()]
    a = load_libfm(write(tmp_path, "\n".join(lines)), fmap())
    b = load_libfm(write(tmp_path, "\n".join(lines[::-1])), fmap())
    np.testing.assert_array_equal(a.x, b.x[::-1])
