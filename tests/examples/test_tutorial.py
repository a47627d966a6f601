"""examples/tutorial.py (docs/tutorial.md) runs end to end and shows what it says."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[2] / "examples" / "tutorial.py"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_tutorial_trains_protects_audits_and_attacks(tmp_path: Path) -> None:
    module = runpy.run_path(str(TUTORIAL), run_name="tutorial")
    figures = module["main"](tmp_path)
    # protect + audit: ε spent is finite and within the stated budget
    assert 0 < figures["epsilon"] <= 8.0
    # attack: plaintext updates give the items away, the secure sums do not
    assert figures["attack_plain_f1"] > 0.9
    assert figures["attack_protected_f1"] < 0.5
    assert (tmp_path / "protected" / "report.html").is_file()
    assert (tmp_path / "protected" / "privacy_ledger.jsonl").is_file()
    assert not (tmp_path / "plain" / "privacy_ledger.jsonl").exists()
