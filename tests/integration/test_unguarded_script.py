"""A script that runs secrelay with the process executor but forgets the
``if __name__ == "__main__":`` guard fails fast with the fix in the message (it used
to hang or die with BrokenProcessPool)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import secrelay
    cfg = secrelay.load_config(
        run={"executor": "process", "workers": 2, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 20, "samples_per_user": 20}},
        model={"name": "lr"}, cloud={"epochs": 1}, local={"epochs": 1},
        federated={"rounds": 1, "clients_per_round": 4},
    )
    secrelay.run(cfg, "r", overwrite=True, progress=False)
    """
)


def test_unguarded_script_fails_fast_with_the_guard_hint(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    res = subprocess.run(
        [sys.executable, "s.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert res.returncode != 0
    assert 'if __name__ == "__main__":' in res.stderr
    assert "worker process" in res.stderr
