"""`secrelay demo`: the compliance demo's configurations and one tiny end-to-end run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from protocols.errors import ConfigError
from secrelay.demo import DEMO_DATA, demo_configs, run_demo
from secrelay.experiment import check_config
from secrelay.report import REPORT_HTML


def test_the_protected_pipeline_has_every_protection_on() -> None:
    cfgs = demo_configs(epsilon=4.0)
    assert set(cfgs) == {"baselines", "relayrec", "protected"}
    p = cfgs["protected"].privacy
    assert p.secure_aggregation and p.user_level_dp and p.he_selector
    assert p.target_epsilon == p.user_epsilon == 4.0  # the stated ε is also the budget
    assert p.randomness == "secure"  # a compliance run never derives noise from the seed
    assert not p.dp_sgd and demo_configs(dp_sgd=True)["protected"].privacy.dp_sgd
    # the non-private reference differs only by [privacy]
    a, b = cfgs["relayrec"].to_dict(), cfgs["protected"].to_dict()
    assert {k for k in a if a[k] != b[k]} == {"run", "privacy"}
    assert not cfgs["relayrec"].privacy.differential_privacy
    assert cfgs["baselines"].strategy.name == "standalone"
    assert cfgs["protected"].data.options == DEMO_DATA
    for cfg in cfgs.values():  # every privacy problem is found before any data loads
        check_config(cfg)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_epsilon_is_one_clear_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        demo_configs(epsilon=bad)


def test_bad_epsilon_through_the_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "secrelay"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "secrelay.cli"]
    res = subprocess.run(
        [*cmd, "demo", "--epsilon", "0", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "epsilon" in res.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    res = run_demo(
        out_dir=tmp_path / "demo",
        rounds=2,
        data_options={"n_users": 40, "samples_per_user": 30, "n_items": 60},
        console=console,
    )
    text = console.export_text()
    assert [r["pipeline"] for r in res.rows] == [
        "cloud model only",
        "standalone fine-tuning",
        "RelayRec, non-private",
        "RelayRec, protected",
    ]
    assert all(r["gauc"] is not None for r in res.rows)
    # ε per unit with its adjacency, within the stated budget
    user = res.audit["user_level"]
    assert 0 < user["epsilon"][res.audit["accountant"]] <= 8.0
    assert user["adjacency"] == "zero_out"
    assert "zero_out" in text
    # every flow labelled; the protected run sent neither updates nor p_u in the clear
    assert res.flows and not [f for f in res.flows if f.plaintext]
    names = " | ".join(f.name for f in res.flows)
    assert "update" in names and "selector" in names
    assert "plaintext" not in text.split("what the server saw", 1)[1]
    assert res.report == tmp_path / "demo" / "protected" / REPORT_HTML and res.report.is_file()
    assert f"report: {res.report}" in text
    html = res.report.read_text(encoding="utf-8")
    assert 'id="comparison"' in html and "standalone fine-tuning" in html
