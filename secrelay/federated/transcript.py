"""The transcript: the ground truth of what crossed the device/cloud boundary.

A :class:`Channel` delivers messages and records each one in a :class:`Transcript`.
Attacks read only :meth:`Transcript.server_view` (messages the server received or
sent), never live objects; privacy layers change what is *in* the messages, and the
transcript shows the result.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from secrelay.federated.messages import SERVER, Message

__all__ = ["Channel", "Transcript", "TranscriptEntry"]


@dataclass(frozen=True)
class TranscriptEntry:
    """One delivered message and its position in the run."""

    seq: int
    message: Message


class Transcript:
    """An append-only record of delivered messages.

    Parameters
    ----------
    keep_payloads:
        Keep full messages (default). With ``False`` only headers and sizes are
        kept (:meth:`summary` still works), for long runs that need traffic
        statistics but not an attackable record.
    """

    def __init__(self, *, keep_payloads: bool = True) -> None:
        self.keep_payloads = keep_payloads
        self._entries: list[TranscriptEntry] = []
        self._bytes: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._seq = 0

    def record(self, message: Message) -> None:
        self._bytes[f"{message.direction}:{message.kind}"] += message.nbytes()
        self._counts[f"{message.direction}:{message.kind}"] += 1
        if self.keep_payloads:
            self._entries.append(TranscriptEntry(self._seq, message))
        self._seq += 1

    def __len__(self) -> int:
        return self._seq

    def __iter__(self) -> Iterator[Message]:
        return (e.message for e in self._entries)

    def messages(
        self, *, kind: type[Message] | None = None, round: int | None = None
    ) -> list[Message]:
        """Recorded messages, optionally of one type and one round."""
        return [
            m
            for m in self
            if (kind is None or isinstance(m, kind)) and (round is None or m.round == round)
        ]

    def server_view(self, *, round: int | None = None) -> tuple[Message, ...]:
        """Everything the server received or sent (the honest-but-curious view)."""
        return tuple(
            m for m in self.messages(round=round) if m.receiver == SERVER or m.sender == SERVER
        )

    def summary(self) -> dict[str, dict[str, int]]:
        """Message counts and payload bytes per direction and kind."""
        return {"count": dict(self._counts), "bytes": dict(self._bytes)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the transcript as ``.npz``: a JSON header per message plus its arrays.

        Written atomically (temporary file, then rename).
        """
        target = Path(path)
        headers = []
        arrays: dict[str, np.ndarray] = {}
        for e in self._entries:
            m = e.message
            head: dict[str, object] = {"seq": e.seq, "type": type(m).__name__}
            for f in fields(m):
                v = getattr(m, f.name)
                if isinstance(v, np.ndarray):
                    arrays[f"{e.seq}/{f.name}"] = v
                    head[f.name] = {"array": f"{e.seq}/{f.name}"}
                elif isinstance(v, bytes):
                    arrays[f"{e.seq}/{f.name}"] = np.frombuffer(v, dtype=np.uint8)
                    head[f.name] = {"bytes": f"{e.seq}/{f.name}"}
                elif isinstance(v, dict) and any(isinstance(x, np.ndarray) for x in v.values()):
                    keys = {}
                    for k, x in v.items():
                        arrays[f"{e.seq}/{f.name}/{k}"] = x
                        keys[k] = f"{e.seq}/{f.name}/{k}"
                    head[f.name] = {"arrays": keys}
                else:
                    head[f.name] = v
            headers.append(head)
        tmp = target.with_name(target.name + ".tmp.npz")
        arrays["__headers__"] = np.array(json.dumps(headers))
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, target)
        return target


class Channel:
    """Delivers messages between devices and the server, recording each one.

    Privacy layers wrap or subclass the channel; the round loop never talks to a
    device or the server except through it.
    """

    def __init__(self, transcript: Transcript | None = None) -> None:
        self.transcript = transcript if transcript is not None else Transcript()

    def send(self, message: Message) -> Message:
        """Record ``message`` and hand it to its receiver (returned unchanged)."""
        self.transcript.record(message)
        return message
