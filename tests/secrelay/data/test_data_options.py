"""Every file loader works from plain options (TOML and the CLI): libFM with an
inferred or declared field map, CSV/Parquet with their columns described."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from protocols.errors import ConfigError, DataFormatError
from secrelay.cli import app
from secrelay.config import load_config
from secrelay.data import load_dataset
from secrelay.data.options import infer_field_map
from secrelay.experiment import run

runner = CliRunner()


def _libfm(tmp_path: Path, n_users: int = 12, rows: int = 10) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(n_users):
        for _ in range(rows):
            item, ctx = int(rng.integers(30)), int(rng.integers(3))
            lines.append(f"{int(rng.random() < 0.3)} 0:{u}:1 1:{100 + item}:1 2:{200 + ctx}:1")
    p = tmp_path / "clicks.libfm"
    p.write_text("\n".join(lines) + "\n")
    return p


def _csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = ["uid,movie,genres,rating,ts"]
    for u in range(12):
        for t in range(10):
            rows.append(f"u{u},m{int(rng.integers(20))},a|b,{int(rng.integers(1, 6))},{t}")
    p = tmp_path / "ratings.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


CSV_OPTIONS = {
    "user_column": "uid",
    "label_column": "rating",
    "label_threshold": 4,
    "timestamp_column": "ts",
    "item_id_field": "movie",
    "fields": [
        {"column": "uid", "role": "user", "name": "user_id"},
        {"column": "movie", "role": "item"},
        {"column": "genres", "role": "item", "separator": "|"},
    ],
}


def test_libfm_field_map_is_inferred_one_field_per_index(tmp_path):
    fmap = infer_field_map(_libfm(tmp_path))
    assert [(e.name, e.role) for e in fmap.entries] == [
        ("field_0", "user"),
        ("field_1", "item"),
        ("field_2", "context"),
    ]
    ds = load_dataset("libfm", _libfm(tmp_path))
    assert ds.n_users == 12 and len(ds) == 120


def test_libfm_declared_field_map_from_options(tmp_path):
    ds = load_dataset(
        "libfm",
        _libfm(tmp_path),
        fields={
            "user_id": {"role": "user", "keys": [0]},
            "item_id": {"role": "item", "keys": [1]},
            "hour": {"role": "context", "keys": [2]},
        },
        user_field="user_id",
        item_field="item_id",
    )
    assert ds.schema.user_id_field == "user_id"
    with pytest.raises(ConfigError, match=r"data\.options\.fields\.user_id\.role"):
        load_dataset(
            "libfm",
            _libfm(tmp_path),
            fields={"user_id": {"role": "usr", "keys": [0]}},
            user_field="user_id",
        )


def test_libsvm_needs_a_declared_map(tmp_path):
    p = tmp_path / "x.svm"
    p.write_text("1 3:1 7:1\n")
    with pytest.raises(DataFormatError, match=r"declare data\.options\.fields"):
        load_dataset("libfm", p)


def test_csv_columns_from_options_and_a_clear_error_without(tmp_path):
    ds = load_dataset("csv", _csv(tmp_path), **CSV_OPTIONS)
    assert ds.schema.user_id_field == "user_id" and len(ds) == 120
    with pytest.raises(ConfigError, match=r"data\.options\.fields"):
        load_dataset("csv", _csv(tmp_path))


def test_a_run_reads_csv_columns_from_the_toml(tmp_path):
    cfg = load_config(
        run={"progress": False},
        data={"name": "csv", "path": str(_csv(tmp_path)), "options": CSV_OPTIONS},
        model={"name": "lr"},
        cloud={"epochs": 1},
        local={"epochs": 1},
        federated={"rounds": 1, "clients_per_round": 3},
    )
    res = run(cfg, tmp_path / "r", progress=False, log=lambda _: None)
    assert res.records[-1]["round"] == 1


@pytest.mark.parametrize("kind", ["libfm", "csv"])
def test_cli_train_reads_files_without_a_traceback(tmp_path, kind):
    args = [
        "train",
        "--model",
        "lr",
        "--epochs",
        "1",
        "--data",
        kind,
        "--json",
        str(tmp_path / "m.json"),
    ]
    if kind == "libfm":
        args += ["--path", str(_libfm(tmp_path, n_users=30))]
    else:
        opts = tmp_path / "cols.toml"
        opts.write_text(
            'user_column = "uid"\nlabel_column = "rating"\nlabel_threshold = 4\n'
            'timestamp_column = "ts"\n'
            'fields = [{column = "uid", role = "user"}, {column = "movie", role = "item"}]\n'
        )
        args += ["--path", str(_csv(tmp_path)), "--data-options", str(opts)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "test" in json.loads((tmp_path / "m.json").read_text())


def test_cli_train_csv_without_columns_exits_2_with_the_keys(tmp_path):
    res = runner.invoke(app, ["train", "--data", "csv", "--path", str(_csv(tmp_path))])
    assert res.exit_code == 2
    assert "data.options.fields" in " ".join(res.output.split())
    assert "Traceback" not in res.output
