"""Atomic checkpoints and JSON-lines metrics for long runs.

A checkpoint is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the old one (``os.replace`` is atomic on POSIX), so a
crash at any moment leaves either the previous or the new checkpoint, never a
half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from protocols.errors import DataFormatError

__all__ = ["atomic_write_bytes", "atomic_write_text", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Serialise ``state`` (numpy arrays, tensors, plain containers) atomically."""
    import io

    buf = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, "state": dict(state)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (a file this library wrote;
    it is unpickled, so never load one from an untrusted source)."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"no checkpoint at {str(p)!r}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt file
        raise DataFormatError(f"checkpoint {str(p)!r} is unreadable: {e}") from None
    if not isinstance(blob, dict) or blob.get("version") != CHECKPOINT_VERSION:
        raise DataFormatError(
            f"checkpoint {str(p)!r} has version {blob.get('version') if isinstance(blob, dict) else '?'}; "
            f"this secrelay reads version {CHECKPOINT_VERSION}"
        )
    state = blob["state"]
    assert isinstance(state, dict)
    return state


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite a JSON-lines file atomically from ``records``."""
    atomic_write_text(path, "".join(json.dumps(dict(r), default=float) + "\n" for r in records))
