"""``import secrelay`` is light and exposes the run entry points lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import secrelay


def test_import_does_not_load_torch() -> None:
    code = "import sys, secrelay; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_entry_points_are_the_runner_functions() -> None:
    from secrelay.config import load_config
    from secrelay.experiment import resume, run

    assert secrelay.run is run and secrelay.resume is resume
    assert secrelay.load_config is load_config
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        secrelay.nope  # noqa: B018
