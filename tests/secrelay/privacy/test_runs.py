"""DP in whole runs: the ledger in RUN_DIR, budgets refuse a round before it runs
(state unchanged, CLI exit 5), resume never double counts, calibration to a target
ε over the planned rounds, config validation, and the audit report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import secrelay.experiment as experiment
from protocols.dp import PrivacyLedger
from protocols.errors import BudgetExceededError, ConfigError, DataFormatError
from secrelay.audit import audit
from secrelay.cli import app
from secrelay.config import load_config
from secrelay.experiment import resume, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(rounds: int = 3, **privacy):
    return load_config(
        run={"name": "dp-test", "seed": 5, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 30, "samples_per_user": 24}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": rounds, "sampling": "poisson", "sample_rate": 0.2},
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy=privacy,
    )


CENTRAL = {"user_level_dp": True, "clipping_norm": 0.5, "noise_multiplier": 1.0}
BOTH = {**CENTRAL, "dp_sgd": True, "local_noise_multiplier": 1.0}


def _quiet(_: str) -> None:
    pass


def _ledger(rd: Path) -> PrivacyLedger:
    return PrivacyLedger.load(rd / "privacy_ledger.jsonl")


def test_every_release_is_in_the_run_ledger(tmp_path: Path) -> None:
    res = run(_config(**BOTH), tmp_path / "r", progress=False, log=_quiet)
    ledger = _ledger(tmp_path / "r")
    user = [r for r in ledger.records if r.unit == "user"]
    example = [r for r in ledger.records if r.unit == "example"]
    assert [r.round for r in user] == [1, 2, 3]
    assert all(r.mechanism == "dp_fedavg[central_gaussian]" for r in user)
    assert sum(rec["sampled"] - rec["dropped"] for rec in res.records[1:]) == len(example)
    assert {r.run_id for r in ledger.records} == {"dp-test"}


def test_budget_refuses_the_round_before_it_runs(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    # Each central round costs ε ≈ 0.8 at δ = 1e-5 after amplification; cap below 3 rounds.
    run(_config(rounds=2, **CENTRAL), rd, progress=False, log=_quiet)
    eps2 = _ledger(rd).epsilon(delta=1e-5, unit="user")
    cfg = _config(rounds=3, **CENTRAL, user_epsilon=eps2 * 1.05)
    with pytest.raises(
        BudgetExceededError, match=r"refused round 3 before it ran.*privacy\.user_epsilon"
    ):
        run(cfg, rd, overwrite=True, progress=False, log=_quiet)
    checkpoint = (rd / "checkpoint.pt").read_bytes()
    ledger_bytes = (rd / "privacy_ledger.jsonl").read_bytes()
    metrics = (rd / "metrics.jsonl").read_text()
    assert [json.loads(s)["round"] for s in metrics.splitlines()] == [0, 1, 2]
    assert len(_ledger(rd)) == 2
    # Resuming refuses again and changes nothing.
    with pytest.raises(BudgetExceededError):
        resume(rd, progress=False, log=_quiet)
    assert (rd / "checkpoint.pt").read_bytes() == checkpoint
    assert (rd / "privacy_ledger.jsonl").read_bytes() == ledger_bytes
    # The CLI maps it to exit code 5.
    cli = CliRunner().invoke(app, ["resume", str(rd)])
    assert cli.exit_code == 5, cli.output
    assert "privacy.user_epsilon" in cli.output


def test_example_budget_refuses_a_device_before_it_trains(tmp_path: Path) -> None:
    cfg = _config(
        rounds=4,
        dp_sgd=True,
        local_noise_multiplier=0.7,
        example_epsilon=0.5,
        randomness="reproducible",  # round 1 samples someone (a secure draw may not)
    )
    with pytest.raises(BudgetExceededError, match=r"device '\d+': example-level ε would be"):
        run(cfg, tmp_path / "r", progress=False, log=_quiet)
    assert (
        not (tmp_path / "r" / "privacy_ledger.jsonl").exists() or len(_ledger(tmp_path / "r")) == 0
    )


def test_resume_after_a_crash_between_ledger_and_checkpoint_does_not_double_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The identical replay of the interrupted round is a property of reproducible
    # randomness (the secure counterpart is tested in test_dp_guarantees.py).
    cfg = _config(rounds=4, **BOTH, randomness="reproducible")
    full = run(cfg, tmp_path / "full", progress=False, log=_quiet)
    original = experiment.save_checkpoint
    calls = {"n": 0}

    def crash_on_round_2(path, state):
        if state["round"] == 2:
            raise KeyboardInterrupt("killed after the ledger write, before the checkpoint")
        calls["n"] += 1
        original(path, state)

    monkeypatch.setattr(experiment, "save_checkpoint", crash_on_round_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "part", progress=False, log=_quiet)
    monkeypatch.setattr(experiment, "save_checkpoint", original)
    part = _ledger(tmp_path / "part")
    assert max(r.round for r in part.records) == 2  # round 2's records are on disk
    messages: list[str] = []
    resumed = resume(tmp_path / "part", progress=False, log=messages.append)
    assert any("dropped" in m and "interrupted round" in m for m in messages)
    assert resumed.records == full.records
    assert (tmp_path / "part" / "privacy_ledger.jsonl").read_bytes() == (
        tmp_path / "full" / "privacy_ledger.jsonl"
    ).read_bytes()


def test_resume_refuses_a_ledger_that_does_not_match_the_checkpoint(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    run(_config(rounds=3, **CENTRAL), rd, progress=False, log=_quiet, stop_after=2)
    path = rd / "privacy_ledger.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0])  # lost a record
    with pytest.raises(DataFormatError, match="truncated privacy ledger"):
        resume(rd, progress=False, log=_quiet)


def test_calibrate_to_target_hits_the_target(tmp_path: Path) -> None:
    for privacy in (
        {"user_level_dp": True, "clipping_norm": 0.5, "target_epsilon": 3.0},
        {
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "target_epsilon": 3.0,
            "secure_aggregation": True,
        },
    ):
        rd = tmp_path / str(len(list(tmp_path.iterdir())))
        # Reproducible: a secure sample of nobody would abort the SecAgg run.
        run(_config(rounds=3, **privacy, randomness="reproducible"), rd, log=_quiet)
        eps = _ledger(rd).epsilon(delta=1e-5, unit="user")
        assert 3.0 * 0.98 <= eps <= 3.0, (privacy, eps)


def test_privacy_config_is_validated_with_key_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(privacy={"user_level_dp": True, "delta": 0.0, "local_target_epsilon": 1.0})
    msg = str(info.value)
    for key in (
        "privacy.delta",
        "privacy.clipping_norm",
        "privacy.noise_multiplier",
        "privacy.local_target_epsilon",
    ):
        assert key in msg
    with pytest.raises(ConfigError, match=r"strategy\.params\.weighting = 'uniform'"):
        cfg = _config(**CENTRAL).replace(strategy={"params": {}})
        run(cfg, tmp_path / "a", progress=False, log=_quiet)
    with pytest.raises(
        ConfigError, match=r"privacy\.secure_noise was replaced by privacy\.randomness"
    ):
        _config(**BOTH, secure_noise=True)
    with pytest.raises(ConfigError, match=r"'lcft' does not apply privacy\.user_level_dp"):
        cfg = _config(**BOTH).replace(method={"name": "lcft"})
        run(cfg, tmp_path / "b", progress=False, log=_quiet)


def test_audit_reports_every_unit_and_writes_its_files(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    run(_config(rounds=3, **BOTH, user_epsilon=50.0), rd, progress=False, log=_quiet)
    report = audit(rd).to_dict()
    ledger = _ledger(rd)
    assert report["delta"] == 1e-5 and report["accountants"] == ["prv", "rdp"]
    user = report["user_level"]
    assert user["epsilon"]["prv"] == pytest.approx(ledger.epsilon(delta=1e-5, unit="user"))
    assert user["epsilon"]["rdp"] >= user["epsilon"]["prv"] * 0.99
    assert user["budget"] == 50.0
    ex = report["example_level"]
    devices = ledger.devices(unit="example")
    assert ex["devices"] == len(devices)
    per = [ledger.epsilon(delta=1e-5, device=d) for d in devices]
    assert ex["epsilon"]["prv"]["max"] == pytest.approx(max(per))
    assert ex["epsilon"]["prv"]["min"] == pytest.approx(min(per))
    mechs = {(m["unit"], m["mechanism"]) for m in report["mechanisms"]}
    assert mechs == {("user", "dp_fedavg[central_gaussian]"), ("example", "dp_sgd[ghost]")}
    assert [p[0] for p in report["series"]["user"]] == [1, 2, 3]
    assert report["series"]["user"][-1][1] == pytest.approx(user["epsilon"]["prv"])
    on_disk = json.loads((rd / "audit.json").read_text())
    assert on_disk["user_level"]["epsilon"]["prv"] == pytest.approx(user["epsilon"]["prv"])
    md = (rd / "audit.md").read_text()
    assert "δ = 1e-05" in md and "dp_sgd[ghost]" in md and "audit_epsilon.png" in md
    assert (rd / "audit_epsilon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cli = CliRunner().invoke(app, ["audit", str(rd)])
    assert cli.exit_code == 0 and "user (global)" in cli.output


def test_audit_of_a_run_without_dp_says_so(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    run(_config(rounds=1), rd, progress=False, log=_quiet)
    report = audit(rd).to_dict()
    assert report["ledger"]["records"] == 0
    assert "ε = ∞" in report["notes"][0]


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[3] / "examples").glob("dp_*.toml")),
    ids=lambda p: p.name,
)
def test_dp_example_configs_are_consistent(path: Path) -> None:
    from secrelay.experiment import check_config

    cfg = load_config(path)
    assert cfg.privacy.differential_privacy or "uinf_einf" in path.name
    check_config(cfg)  # raises ConfigError listing every problem
    assert cfg.federated.sampling == "poisson"


def test_audit_reports_per_device_user_epsilon_without_amplification(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    cfg = _config(rounds=3, **CENTRAL).replace(
        federated={"sampling": "fixed", "clients_per_round": 6}
    )
    run(cfg, rd, progress=False, log=_quiet)
    ledger = _ledger(rd)
    assert all(r.sample_rate is None for r in ledger.records)  # q = 1: no amplification
    report = audit(rd, comparison=None).to_dict()
    pd = report["user_level"]["per_device"]
    devices = ledger.devices(unit="user")
    per = {d: ledger.epsilon(delta=1e-5, device=d, unit="user") for d in devices}
    assert pd["devices"] == len(devices)
    assert pd["max"] == pytest.approx(max(per.values()))
    assert pd["min"] == pytest.approx(min(per.values()))
    assert pd["max"] <= report["user_level"]["epsilon"]["prv"] + 1e-9


def test_epsilon_is_shown_where_users_look(tmp_path: Path) -> None:
    """ε per round in metrics.jsonl, at the end in summary.json, RunResult.epsilon and
    the run's log — and equal to what the audit computes from the ledger."""
    said: list[str] = []
    res = run(_config(**BOTH), tmp_path / "r", progress=False, log=said.append)
    eps = [r.get("epsilon/user") for r in res.records[1:]]
    assert all(e is not None for e in eps) and eps == sorted(eps) and eps[0] < eps[-1]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["privacy"] == res.epsilon
    assert res.epsilon is not None and res.epsilon["user_epsilon"] == eps[-1]
    assert res.epsilon["example_epsilon_max"] > 0 and res.epsilon["example_devices"] > 0
    report = audit(tmp_path / "r", write=False).to_dict()
    acc = res.epsilon["accountant"]
    assert report["user_level"]["epsilon"][acc] == pytest.approx(res.epsilon["user_epsilon"])
    assert any("privacy spent: user-level ε" in s for s in said)


def test_runs_without_dp_carry_no_epsilon(tmp_path: Path) -> None:
    res = run(_config(), tmp_path / "r", progress=False, log=_quiet)
    assert res.epsilon is None and "privacy" not in res.final
    assert all("epsilon/user" not in r for r in res.records)
