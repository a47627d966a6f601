""" "Protected by" comes from what the run shows (issue 16 items 3 and 4): every flow of
a small run of each method, with its protection read from the transcript and the
ledger — or, without a saved transcript, from the traffic counts, the HE metrics and
the ledger, saying so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from secrelay.audit import audit
from secrelay.auditing import AuditReport, Flow
from secrelay.cli import app
from secrelay.config import RunConfig
from secrelay.experiment import run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_BASE: dict[str, Any] = {
    "data": {
        "name": "synthetic",
        "options": {"n_users": 30, "samples_per_user": 24, "n_items": 60},
    },
    "model": {"name": "lr", "embedding_dim": 4},
    "cloud": {"epochs": 1, "batch_size": 64},
    "local": {"epochs": 1, "batch_size": 16},
}
_RELAYREC = {
    "name": "relayrec",
    "options": {
        "server_model_options": {"cin_layer_sizes": [4], "hidden_units": [8]},
        "meta_epochs": 1,
        "selector_epochs": 50,
        "selector_hidden": 8,
    },
}
_LCFT = {
    "name": "lcft",
    "options": {
        "corrections": ["hard", "soft1"],
        "hard_min_rows": 5,
        "hard_max_users": 4,
        "hard_alphas": [0.75, 1.0],
        "hard_betas": [0.0, 0.2],
    },
}
_CODA = {"name": "coda", "options": {"k": 4, "sigma_sweep": [0.0], "max_devices": 4}}


def _audit(tmp_path: Path, transcript: bool = True, **sections: Any) -> AuditReport:
    cfg = RunConfig.from_dict(
        {
            **_BASE,
            "run": {"name": "flows", "seed": 1, "progress": False, "record_transcript": transcript},
            **sections,
        }
    )
    rd = tmp_path / "r"
    run(cfg, rd, progress=False, log=lambda s: None)
    return audit(rd, comparison=None)


def _flow(report: AuditReport, name: str, direction: str = "up") -> Flow:
    found = [f for f in report.flows if f.name == name and f.direction == direction]
    assert len(found) == 1, [f.name for f in report.flows]
    return found[0]


def test_lcft_never_claims_secure_aggregation(tmp_path: Path) -> None:
    """LCFT uploads no model update, so secure aggregation in its config protects
    nothing: the audit must not say it does."""
    report = _audit(
        tmp_path, split={"alpha": 0.3}, method=_LCFT, privacy={"secure_aggregation": True}
    )
    assert not report.secure_aggregation
    assert not any("secure aggregation" in t for f in report.flows for t in (f.protection,))
    assert not any("secure aggregation" in n for n in report.notes)
    assert {f.name for f in report.flows} == {"LCFT correction table", "model download"}
    assert all(f.status == "public" for f in report.flows)
    md = (tmp_path / "r" / "audit.md").read_text()
    assert "| LCFT correction table | down |" in md and "secure aggregation: not observed" in md


def test_lcft_ldp_query_is_protected_by_its_ledger_record(tmp_path: Path) -> None:
    method = {**_LCFT, "options": {**_LCFT["options"], "correction_path": "query"}}
    report = _audit(
        tmp_path,
        split={"alpha": 0.3},
        method=method,
        privacy={"query_ldp": "randomized_response", "query_ldp_epsilon": 2.0},
    )
    query = _flow(report, "LCFT correction query")
    assert (
        query.status == "protected" and "ε-LDP (lcft_query[randomized_response]" in query.protection
    )
    assert query.messages == 30 and query.rounds == (1,)


def test_relayrec_selector_query_is_plaintext_and_updates_too(tmp_path: Path) -> None:
    report = _audit(
        tmp_path,
        split={"alpha": 0.25},
        federated={"rounds": 1, "clients_per_round": 8},
        method=_RELAYREC,
    )
    assert _flow(report, "selector query").status == "plaintext"
    assert _flow(report, "selector answer", "down").status == "plaintext"
    update = _flow(report, "model update upload")
    assert update.status == "plaintext" and update.messages == 8
    assert "all 2 cluster models" in _flow(report, "model download", "down").content
    assert "transcript" in report.flow_evidence
    md = (tmp_path / "r" / "audit.md").read_text()
    assert "| selector query | up | preference vector p_u | 30 | **plaintext** |" in md
    cli = CliRunner().invoke(app, ["audit", str(tmp_path / "r")])
    assert cli.exit_code == 0
    assert "up selector query (preference vector p_u, 30 messages): [PLAINTEXT]" in " ".join(
        cli.output.split()
    )


def test_relayrec_he_selector_without_a_transcript_says_which_evidence(tmp_path: Path) -> None:
    report = _audit(
        tmp_path,
        transcript=False,
        split={"alpha": 0.25},
        federated={"rounds": 1, "clients_per_round": 8},
        method=_RELAYREC,
        privacy={"he_selector": True},
    )
    assert "no saved transcript" in report.flow_evidence and "he/*" in report.flow_evidence
    query = _flow(report, "selector query")
    assert query.status == "protected" and query.protection.startswith("CKKS")
    assert query.messages is None  # the counts do not split contexts from queries
    assert _flow(report, "model update upload").status == "plaintext"


def test_coda_he_and_privatized_flows(tmp_path: Path) -> None:
    report = _audit(
        tmp_path,
        split={"alpha": 0.3},
        method={
            **_CODA,
            "options": {**_CODA["options"], "privatize_samples": True, "sample_epsilon": 2.0},
        },
        privacy={"randomness": "reproducible", "he_matching": True},
    )
    assert _flow(report, "CoDA match request").protection.startswith("CKKS")
    assert _flow(report, "HE public context").status == "public"
    assert _flow(report, "CoDA pick").status == "plaintext"
    batch = _flow(report, "CoDA batch fetch", "down")
    assert batch.status == "protected" and "ε per pool user" in batch.protection
    assert f"over {report.pool_user.subjects} pool users" in batch.protection
    assert [f.name for f in report.plaintext_flows] == ["CoDA pick"]


def test_coda_plain_without_a_transcript(tmp_path: Path) -> None:
    report = _audit(tmp_path, transcript=False, split={"alpha": 0.3}, method=_CODA)
    match = _flow(report, "CoDA match request")
    assert match.status == "plaintext" and match.messages == 4
    batch = _flow(report, "CoDA batch fetch", "down")
    assert batch.status == "plaintext" and "user fields in the clear" in batch.protection
    assert "summary.json" in report.flow_evidence


def test_secure_aggregation_is_read_from_the_masked_uploads(tmp_path: Path) -> None:
    report = _audit(
        tmp_path,
        federated={"rounds": 1, "sampling": "poisson", "sample_rate": 0.3},
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy={
            "secure_aggregation": True,
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "noise_multiplier": 1.0,
            "randomness": "reproducible",
        },
    )
    update = _flow(report, "model update upload")
    assert update.status == "protected" and "distributed discrete Gaussian" in update.protection
    assert report.secure_aggregation and report.to_dict()["secure_aggregation"] is True
