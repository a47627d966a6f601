"""The pure protocols layer imports without torch (or Opacus, which imports torch).

Each check runs in a fresh interpreter: this test session has long since imported torch.
"""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


def test_import_protocols_dp_loads_neither_torch_nor_opacus():
    result = _run(
        "import protocols.dp, sys; "
        "assert 'torch' not in sys.modules and 'opacus' not in sys.modules"
    )
    assert result.returncode == 0, result.stderr


def test_import_protocols_secagg_does_not_load_torch():
    result = _run(
        "import protocols.secagg, sys; "
        "assert 'torch' not in sys.modules and 'opacus' not in sys.modules"
    )
    assert result.returncode == 0, result.stderr


def test_local_training_is_the_torch_side():
    result = _run(
        "import protocols.dp.local_training, sys; "
        "assert 'torch' in sys.modules and 'opacus' in sys.modules"
    )
    assert result.returncode == 0, result.stderr
