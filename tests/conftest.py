"""Shared pytest fixtures.

MovieLens-100K may not be redistributed, so it is never part of the repository.
Tests that need it take the ``ml100k_path`` (or ``ml100k``) fixture, which looks
for it at ``$SECRELAY_ML100K`` and then at ``../shared/data/ml-100k`` relative to
the repository root, and skips the test with the reason when neither holds it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# pytest puts this folder (tests/) on sys.path to import this conftest; tests/secrelay
# would then shadow the real package as a namespace package when the repository root
# itself is not on sys.path (plain `pytest` rather than `python -m pytest`).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

if TYPE_CHECKING:
    from secrelay.data import CTRDataset
ML100K_ENV_VAR = "SECRELAY_ML100K"
ML100K_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "ml-100k"
_ML100K_FILES = ("u.data", "u.user", "u.item")


def find_ml100k() -> tuple[Path | None, str]:
    """The MovieLens-100K directory (or ``None``) and, if absent, why."""
    candidates: list[tuple[str, Path]] = []
    env = os.environ.get(ML100K_ENV_VAR)
    if env:
        candidates.append((f"${ML100K_ENV_VAR}={env}", Path(env)))
    candidates.append(("the default location", ML100K_DEFAULT))
    tried = []
    for label, path in candidates:
        if all((path / f).is_file() for f in _ML100K_FILES):
            return path, ""
        tried.append(f"{label} ({path})")
    return None, (
        "MovieLens-100K not found (needs u.data, u.user, u.item) at "
        + " or ".join(tried)
        + f"; set ${ML100K_ENV_VAR} to its directory. It may not be redistributed, "
        "so it is never committed to the repository."
    )


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """Directory of the real MovieLens-100K files; skips the test when absent."""
    path, reason = find_ml100k()
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def ml100k(ml100k_path: Path) -> CTRDataset:
    """MovieLens-100K loaded once per session (read-only arrays)."""
    from secrelay.data import load_movielens100k

    return load_movielens100k(ml100k_path)


# Hypothesis: CI runs derandomized (the same examples on every run, so a red CI is
# reproducible and never a coin flip); locally each run explores new examples.
from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("ci", derandomize=True, database=None, deadline=None)
_hyp_settings.register_profile("dev", deadline=None)
_hyp_settings.load_profile("ci" if os.environ.get("CI") else "dev")
