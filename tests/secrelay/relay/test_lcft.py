"""LCFT: label-correction maths, the published table, the device program and a
tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ConfigError
from secrelay.config import load_config
from secrelay.experiment import run
from secrelay.relay.lcft import (
    CorrectionTable,
    LCFTOptions,
    corrected_labels,
    correction_pair,
    equivalent_ctr,
    improvement_by_drift,
    soft_correction_1,
    soft_correction_2,
)
from secrelay.training import soft_bce_with_logits

# A device's local CTR is a share of its rows: k / n with n >= 1 rows.
ctr = st.integers(min_value=1, max_value=10**6).flatmap(
    lambda n: st.integers(min_value=0, max_value=n).map(lambda k: k / n)
)
global_ctr = st.floats(min_value=0.01, max_value=0.99, allow_nan=False)


@given(w_i=ctr, w_g=global_ctr)
def test_both_soft_corrections_give_the_global_ctr(w_i: float, w_g: float) -> None:
    for fn in (soft_correction_1, soft_correction_2):
        a, b = fn(w_i, w_g)
        assert np.isfinite(a) and np.isfinite(b)
        assert equivalent_ctr(w_i, a, b) == pytest.approx(w_g, abs=1e-9)
        # Only one class's label changes.
        assert a == 1.0 or b == 0.0


@given(w_i=ctr, w_g=global_ctr)
def test_soft1_labels_stay_in_unit_interval_and_keep_order(w_i: float, w_g: float) -> None:
    a, b = soft_correction_1(w_i, w_g)
    assert 0.0 <= b <= a <= 1.0


@pytest.mark.parametrize("w_g", [0.2, 0.55, 0.9])
@pytest.mark.parametrize("w_i", [0.0, 1.0])
def test_degenerate_devices_do_not_divide_by_zero(w_i: float, w_g: float) -> None:
    for fn in (soft_correction_1, soft_correction_2):
        a, b = fn(w_i, w_g)
        assert equivalent_ctr(w_i, a, b) == pytest.approx(w_g)
    # All-positive device: positives get w_g; all-negative device: negatives get w_g.
    assert soft_correction_2(1.0, w_g) == (w_g, 0.0)
    assert soft_correction_2(0.0, w_g) == (1.0, w_g)


def test_soft2_is_the_opposite_choice() -> None:
    # w_i > w_g: soft1 lowers the positives, soft2 pushes the negatives below 0.
    assert soft_correction_1(0.8, 0.4) == pytest.approx((0.5, 0.0))
    assert soft_correction_2(0.8, 0.4) == pytest.approx((1.0, -2.0))
    # w_i < w_g: soft1 lifts the negatives, soft2 pushes the positives above 1.
    assert soft_correction_1(0.2, 0.5) == pytest.approx((1.0, 0.375))
    assert soft_correction_2(0.2, 0.5) == pytest.approx((2.5, 0.0))
    assert soft_correction_1(0.4, 0.4) == soft_correction_2(0.4, 0.4) == (1.0, 0.0)
    with pytest.raises(ValueError, match="local_ctr"):
        soft_correction_1(1.5, 0.4)


def test_corrected_labels_mean_is_the_global_ctr() -> None:
    y = np.array([1, 1, 1, 0, 0], dtype=np.float32)  # w_i = 0.6
    for fn in (soft_correction_1, soft_correction_2):
        a, b = fn(0.6, 0.3)
        assert corrected_labels(y, a, b).mean() == pytest.approx(0.3, abs=1e-6)


def test_soft_bce_with_labels_outside_unit_interval() -> None:
    # softplus(z) − t·z = t·BCE(z, 1) − (t − 1)·BCE(z, 0): the documented reading
    # of a corrected label t > 1 (and t < 0).
    z = torch.linspace(-3, 3, 7)
    for t in (2.5, -0.7):
        target = torch.full_like(z, t)
        bce1 = torch.nn.functional.softplus(z) - z
        bce0 = torch.nn.functional.softplus(z)
        expected = (t * bce1 - (t - 1) * bce0).mean()
        assert soft_bce_with_logits(z, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_correction_table_lookup_and_validation() -> None:
    table = CorrectionTable(np.array([0, 0.5, 1.0]), np.array([0.8, 1.2]), np.array([0.1, -0.1]))
    assert table.lookup(0.0) == (0.8, 0.1)
    assert table.lookup(0.4999) == (0.8, 0.1)
    assert table.lookup(0.5) == (1.2, -0.1)
    assert table.lookup(1.0) == (1.2, -0.1)
    again = CorrectionTable.from_arrays(table.arrays())
    assert again.lookup(0.7) == table.lookup(0.7)
    with pytest.raises(ValueError, match="edges"):
        CorrectionTable(np.array([0.1, 1.0]), np.array([1.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="one entry per interval"):
        CorrectionTable(np.array([0, 0.5, 1.0]), np.array([1.0]), np.array([0.0]))
    assert correction_pair("hard", 0.7, 0.5, table) == (1.2, -0.1)
    assert correction_pair("none", 0.7, 0.5) == (1.0, 0.0)
    with pytest.raises(ValueError, match="CorrectionTable"):
        correction_pair("hard", 0.7, 0.5)


def test_options_are_validated_with_their_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.options\.corrections"):
        LCFTOptions.from_mapping({"corrections": ["soft3"]})
    with pytest.raises(ConfigError, match=r"method\.options\.hard_edges"):
        LCFTOptions.from_mapping({"hard_edges": [0.0, 0.7, 0.5, 1.0]})
    with pytest.raises(ConfigError, match=r"method\.options\.nope"):
        LCFTOptions.from_mapping({"nope": 1})
    assert LCFTOptions.from_mapping({"corrections": ["hard", "none"]}).corrections == (
        "hard",
        "none",
    )


def test_improvement_by_drift_buckets() -> None:
    from secrelay.data import Field, Schema
    from secrelay.data.dataset import CTRDataset
    from secrelay.federated.client import DeviceData

    schema = Schema(
        (Field("user_id", "user", 5), Field("item_id", "item", 5)), user_id_field="user_id"
    )

    def dev(d: int) -> DeviceData:
        x = np.array([[d + 1, 1], [d + 1, 2], [d + 1, 3], [d + 1, 4]])
        ds = CTRDataset(schema, x, np.array([0, 1, 0, 1]), np.full(4, d), np.arange(4))
        return DeviceData(d, ds, ds)

    devices = {0: dev(0), 1: dev(1)}
    good = np.array([0.1, 0.9, 0.2, 0.8])  # AUC 1
    bad = np.array([0.9, 0.1, 0.8, 0.2])  # AUC 0
    preds = {"cloud": {0: bad, 1: bad}, "soft1": {0: good, 1: bad}}
    rows = improvement_by_drift(devices, {0: 0.52, 1: 0.9}, preds, 0.5, [0.0, 0.1, 1.0])
    assert rows[0]["devices"] == 1 and rows[0]["soft1/auc_gain"] == pytest.approx(1.0)
    assert rows[1]["devices"] == 1 and rows[1]["soft1/auc_gain"] == pytest.approx(0.0)


def test_lcft_end_to_end_on_tiny_synthetic_data(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        run={"name": "lcft-tiny", "seed": 1, "progress": False, "record_transcript": True},
        data={
            "name": "synthetic",
            "options": {"n_users": 30, "samples_per_user": 40, "n_items": 50},
        },
        split={"alpha": 0.3},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 2, "batch_size": 64},
        local={"epochs": 1, "batch_size": 16},
        method={
            "name": "lcft",
            "options": {
                "corrections": ["soft1", "soft2", "hard", "none"],
                "hard_min_rows": 5,
                "hard_max_users": 4,
                "hard_alphas": [0.75, 1.0],
                "hard_betas": [0.0, 0.2],
            },
        },
    )
    result = run(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    final = result.final["final"]
    assert result.final["complete"] and final["round"] == 1
    for c in ("cloud", "soft1", "soft2", "hard", "none"):
        assert 0.0 < final[f"{c}/auc"] < 1.0
    # The headline metrics are the first correction's.
    assert final["gauc"] == final["soft1/gauc"]
    # Round 0 is the cloud model on every device's test rows.
    assert result.records[0]["gauc"] == pytest.approx(final["cloud/gauc"])
    # Corrections change the fine-tuned models.
    assert final["soft1/logloss"] != final["none/logloss"]
    report = json.loads((tmp_path / "run" / "lcft_report.json").read_text())
    assert set(report["table"]) == {"edges", "alpha", "beta"}
    for a, b in zip(report["table"]["alpha"], report["table"]["beta"]):
        assert a in (0.75, 1.0) and b in (0.0, 0.2)
    # Nothing goes up: no device message reaches the server (w_i never leaves a device).
    counts = result.final["traffic"]["count"]
    assert not any(k.startswith("up:") for k in counts)
    assert counts["down:reply"] == final["gauc_users"] + final["gauc_users_skipped"]
