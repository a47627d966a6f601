"""load_dataset / register_dataset, the public surface and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest

import secrelay.data as data
from protocols.errors import InvalidParameterError
from secrelay.data import (
    DATASET_LOADERS,
    CTRDataset,
    FieldMap,
    load_dataset,
    make_synthetic,
    register_dataset,
)


def test_synthetic_by_name() -> None:
    ds = load_dataset("synthetic", n_users=10, samples_per_user=5, seed=2)
    np.testing.assert_array_equal(ds.x, make_synthetic(n_users=10, samples_per_user=5, seed=2).x)
    with pytest.raises(InvalidParameterError, match="`path` must be None"):
        load_dataset("synthetic", "some/dir")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InvalidParameterError) as e:
        load_dataset("movielens1m")
    msg = str(e.value)
    assert "unknown data set 'movielens1m'" in msg
    for name in ("synthetic", "movielens100k", "libfm", "csv", "parquet"):
        assert name in msg


def test_file_loaders_need_a_path() -> None:
    for name in ("libfm", "csv", "parquet"):
        with pytest.raises(InvalidParameterError, match=r"is read from a file: set data\.path"):
            load_dataset(name)


def test_libfm_and_csv_by_name(tmp_path: Path) -> None:
    p = tmp_path / "a.libfm"
    p.write_text("1 0:3:1 1:4:1\n0 0:5:1 1:4:1\n")
    fm = FieldMap.from_fields({"user_id": ("user", 0), "item": ("item", 1)}, user_field="user_id")
    assert len(load_dataset("libfm", p, field_map=fm)) == 2
    c = tmp_path / "a.csv"
    c.write_text("u,i,y\n1,2,1\n")
    spec = data.TabularSpec(
        (data.ColumnField("u", "user"), data.ColumnField("i", "item")),
        user_column="u",
        label_column="y",
    )
    assert load_dataset("csv", c, spec=spec).y.tolist() == [1.0]


@pytest.mark.movielens
def test_movielens_by_name(ml100k_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(load_dataset("movielens100k", ml100k_path)) == 100_000
    monkeypatch.setenv("SECRELAY_ML100K", str(ml100k_path))
    assert load_dataset("movielens100k").n_users == 943


def test_register_dataset_refuses_silent_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASET_LOADERS, "synthetic", DATASET_LOADERS["synthetic"])

    def tiny(path: object, **kw: object) -> CTRDataset:
        return make_synthetic(n_users=2, samples_per_user=2)

    with pytest.raises(InvalidParameterError, match="already registered"):
        register_dataset("synthetic", tiny)
    register_dataset("synthetic", tiny, force=True)
    assert len(load_dataset("synthetic")) == 4
    monkeypatch.delitem(DATASET_LOADERS, "mine", raising=False)
    register_dataset("mine", tiny)
    assert load_dataset("mine").n_users == 2
    del DATASET_LOADERS["mine"]


def test_existing_exports_are_kept() -> None:
    for name in ("FIELD_ROLES", "CTRDataset", "Field", "FieldRole", "FilterReport", "Schema"):
        assert name in data.__all__ and hasattr(data, name)
    for name in data.__all__:
        assert hasattr(data, name), name


@pytest.mark.parametrize(
    "module",
    [
        "secrelay.data.libfm",
        "secrelay.data.tabular",
        "secrelay.data.synthetic",
        "secrelay.data.factory",
        "secrelay.data.schema",
    ],
)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
