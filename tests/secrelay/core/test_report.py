"""The run report (`secrelay report RUN_DIR`): HTML and Markdown from a real DP run.

The HTML is rendered in headless Chromium, which checks that every figure decodes
(``naturalWidth > 0``) and that the ε table is in the page; the test skips with the
reason when Chromium is absent (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from protocols.errors import ConfigError
from secrelay.config import load_config
from secrelay.experiment import run
from secrelay.report import REPORT_HTML, REPORT_MD, collect_report, write_report

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DP-FedAvg run (central noise, 3 rounds) with a user budget."""
    cfg = load_config(
        None,
        run={"name": "report-dp", "progress": False},
        data={"name": "synthetic", "options": {"n_users": 40, "samples_per_user": 15}},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1},
        local={"epochs": 1},
        federated={"rounds": 3, "clients_per_round": 10},
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy={
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "noise_multiplier": 1.0,
            "user_epsilon": 50.0,
        },
    )
    rd = tmp_path_factory.mktemp("report") / "run"
    run(cfg, rd, progress=False, log=lambda _: None)
    return rd


def _chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_files_are_self_contained(dp_run: Path) -> None:
    files = write_report(dp_run)
    html = files.html.read_text(encoding="utf-8")
    assert files.html.name == REPORT_HTML and files.markdown.name == REPORT_MD
    # figures embedded, nothing fetched from anywhere
    imgs = re.findall(r'<img src="([^"]*)"', html)
    assert len(imgs) == 2 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html
    assert 'id="epsilon-table"' in html and 'id="flows-table"' in html
    # Markdown: figures are files next to it
    md = files.markdown.read_text(encoding="utf-8")
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (dp_run / name).is_file(), name
    assert "report_epsilon.png" in md


def test_report_states_the_runs_epsilon_and_flows(dp_run: Path) -> None:
    report = collect_report(dp_run)
    audit = json.loads(json.dumps(report.audit, default=str))
    eps = audit["user_level"]["epsilon"][audit["accountant"]]
    assert report.epsilon_rows[-1]["round"] == 3
    assert report.epsilon_rows[-1]["user"] == pytest.approx(eps)
    assert [g["round"] for g in report.ledger_rows] == [1, 2, 3]
    # central DP-FedAvg without SecAgg: the server saw plaintext updates; the report says so
    updates = [f for f in report.flows if "update" in f.name]
    assert updates and all(f.plaintext for f in updates)
    write_report(dp_run)
    md = (dp_run / REPORT_MD).read_text(encoding="utf-8")
    assert f"{eps:.3f}" in md
    assert "| plaintext |" in md


def test_report_shows_attack_audit_results(dp_run: Path, tmp_path: Path) -> None:
    write_report(dp_run)  # the unaudited run's report (does not rely on another test)
    rd = tmp_path / "run"
    shutil.copytree(dp_run, rd)
    (rd / "attack_audit.json").write_text(
        json.dumps([{"attack": "audit:user", "epsilon_lower": 0.42, "design": "many-run"}])
    )
    write_report(rd)
    html = (rd / REPORT_HTML).read_text(encoding="utf-8")
    assert 'id="attacks-table"' in html and "0.420" in html
    assert 'id="attacks-table"' not in (dp_run / REPORT_HTML).read_text(encoding="utf-8")


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT_HTML).exists()


def test_report_command_through_the_entry_point(dp_run: Path) -> None:
    exe = Path(sys.executable).parent / "secrelay"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "secrelay.cli"]
    (dp_run / REPORT_HTML).unlink(missing_ok=True)
    ok = subprocess.run([*cmd, "report", str(dp_run)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (dp_run / REPORT_HTML).is_file() and REPORT_HTML in ok.stdout


def test_report_command_refuses_a_non_run_with_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from secrelay.cli import app

    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in " ".join(res.output.split())
    assert not (tmp_path / REPORT_HTML).exists()


def test_run_and_resume_write_the_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from secrelay.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[run]\nname = 'tiny'\nprogress = false\n"
        "[data]\nname = 'synthetic'\noptions = { n_users = 20, samples_per_user = 10 }\n"
        "[model]\nname = 'lr'\nembedding_dim = 4\n[cloud]\nepochs = 1\n[local]\nepochs = 1\n"
        "[federated]\nrounds = 2\nclients_per_round = 5\n"
    )
    rd = tmp_path / "r"
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(rd), "--stop-after", "1"])
    assert res.exit_code == 0, res.output
    assert (rd / REPORT_HTML).is_file() and "report:" in res.output
    (rd / REPORT_HTML).unlink()
    res = CliRunner().invoke(app, ["resume", str(rd)])
    assert res.exit_code == 0, res.output
    assert "| 2 |" in (rd / REPORT_MD).read_text(encoding="utf-8")  # round 2 is in it


_CHECK = """
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const loaded = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  const eps = document.getElementById("epsilon-table");
  const rows = eps ? eps.querySelectorAll("tbody tr").length : -1;
  const out = document.createElement("pre");
  out.id = "check-result";
  out.textContent = "CHECK " + JSON.stringify({images: imgs.length, loaded: loaded, eps_rows: rows});
  document.body.appendChild(out);
});
</script>
"""


def test_html_report_renders_in_headless_chromium(dp_run: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium)")
    write_report(dp_run)
    page = tmp_path / "page.html"
    html = (dp_run / REPORT_HTML).read_text(encoding="utf-8")
    page.write_text(html.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": profile},
        )
    match = re.search(r"CHECK (\{.*?\})", res.stdout)
    assert match, f"no check result in Chromium's DOM (rc {res.returncode}): {res.stderr[-2000:]}"
    result = json.loads(match.group(1).replace("&quot;", '"'))
    assert result["images"] == 2
    assert result["loaded"] == result["images"]
    assert result["eps_rows"] == 3


def test_flows_from_traffic_when_the_audit_states_none() -> None:
    """Without per-flow findings from the audit, the flows come from the traffic counts."""
    from secrelay.report.collect import flows_from_run

    secure = load_config(
        None,
        method={"name": "relayrec"},
        privacy={"secure_aggregation": True, "he_selector": True},
    )
    counts = {"up:masked_upload": 40, "up:query": 20, "down:model_download": 10}
    flows = flows_from_run(secure, {"traffic": {"count": counts}})
    assert [f.status for f in flows] == ["protected", "protected"]
    assert "SecAgg+" in flows[0].protection and "CKKS" in flows[1].protection
    plain = load_config(None, method={"name": "relayrec"})
    counts = {"up:contribution_upload": 40, "up:query": 20}
    flows = flows_from_run(plain, {"traffic": {"count": counts}})
    assert [f.status for f in flows] == ["plaintext", "plaintext"]
