"""The empirical ε column (issue 15 item 8): ``secrelay audit`` shows the attack grid's
lower bound (``RUN_DIR/attack_audit.json``, read as JSON — that ``secrelay`` never
imports ``attacks`` is tests/test_layering.py's) next to the accountant's upper bound,
or "not audited"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocols.dp import PrivacyLedger
from secrelay.audit import audit
from secrelay.cli import app
from secrelay.config import load_config
from secrelay.experiment import run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rd = tmp_path_factory.mktemp("empirical") / "run"
    cfg = load_config(
        run={"name": "emp", "seed": 5, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 30, "samples_per_user": 24}},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": 2, "sampling": "poisson", "sample_rate": 0.2},
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy={"user_level_dp": True, "clipping_norm": 0.5, "noise_multiplier": 1.0},
    )
    run(cfg, rd, progress=False, log=lambda s: None)
    return rd


def _write(rd: Path, **overrides: object) -> None:
    """An attack_audit.json as the attack grid writes it (attacks/report.py)."""
    run_eps = PrivacyLedger.load(rd / "privacy_ledger.jsonl").epsilon(delta=1e-5, unit="user")
    entry = {
        "attack": "audit:user",
        "epsilon_lower": 0.8456,
        "epsilon_upper": 1.9673,
        "ceiling": 7.2222,
        "delta": 1e-05,
        "confidence": 0.95,
        "unit": "user",
        "design": "many-runs",
        "regime": "sensitive",
        "trials": 20000,
        "run_user_epsilon": run_eps,
        "mechanism": "dp_fedavg[central_gaussian]",
        **overrides,
    }
    (rd / "attack_audit.json").write_text(json.dumps([entry], indent=2))


def _cli(rd: Path) -> str:
    res = CliRunner().invoke(app, ["audit", str(rd), "--compare", ""])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_not_audited_without_the_file(dp_run: Path) -> None:
    (dp_run / "attack_audit.json").unlink(missing_ok=True)
    report = audit(dp_run, comparison=None)
    assert report.empirical == () and report.to_dict()["empirical"]["status"] == "not audited"
    assert "| not audited |" in (dp_run / "audit.md").read_text()
    assert "empirical lower bound: not audited" in _cli(dp_run)


def test_the_lower_bound_is_shown_next_to_the_upper_bound(dp_run: Path) -> None:
    _write(dp_run)
    report = audit(dp_run, comparison=None)
    (bound,) = report.empirical
    assert bound.epsilon_lower == 0.8456 and bound.epsilon_upper == 1.9673
    assert bound.run_epsilon == report.user.epsilon() and not bound.violation
    assert report.to_dict()["empirical"]["status"] == "audited"
    md = (dp_run / "audit.md").read_text()
    assert "≥ 0.846 (many-runs, sensitive; audited release ≤ 1.967, ceiling 7.222)" in md
    out = _cli(dp_run)
    assert "empirical (audit:user, many-runs, sensitive): user-level ε ≥ 0.846" in out
    assert not report.warnings


def test_a_violated_or_stale_bound_is_a_warning(dp_run: Path) -> None:
    _write(dp_run, epsilon_lower=2.5, regime="violation", run_user_epsilon=99.0)
    report = audit(dp_run, comparison=None, write=False)
    assert report.empirical[0].violation
    assert any("exceeds the accountant's upper bound" in w for w in report.warnings)
    assert any("earlier run in this directory" in w for w in report.warnings)
    (dp_run / "attack_audit.json").write_text("{not json")
    report = audit(dp_run, comparison=None, write=False)
    assert report.empirical == () and any("unreadable" in w for w in report.warnings)
    (dp_run / "attack_audit.json").unlink()
