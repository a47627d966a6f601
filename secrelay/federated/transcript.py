"""The transcript: the ground truth of what crossed the device/cloud boundary.

A :class:`Channel` delivers messages and records each one in a :class:`Transcript`.
Attacks read only :meth:`Transcript.server_view` (messages the server received or
sent), never live objects; privacy layers change what is *in* the messages, and the
transcript shows the result. A saved transcript (``RUN_DIR/transcript.npz``) is read
back with :meth:`Transcript.load`, which is how ``attacks/`` gets a finished run's
server view.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from protocols.errors import MessageError
from secrelay.federated import messages as _messages
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

        Identical arrays (one model downloaded by every device of a round) are
        stored once and referenced by every header that holds them. Written
        atomically (temporary file, then rename). :meth:`load` reads it back.
        """
        target = Path(path)
        headers = []
        arrays: dict[str, np.ndarray] = {}
        stored: dict[tuple[str, tuple[int, ...], str], str] = {}

        def put(key: str, a: np.ndarray) -> str:
            a = np.ascontiguousarray(a)
            digest = hashlib.sha256(a.tobytes()).hexdigest() if a.size else ""
            ident = (a.dtype.str, a.shape, digest)
            if ident not in stored:
                stored[ident] = key
                arrays[key] = a
            return stored[ident]

        for e in self._entries:
            m = e.message
            head: dict[str, object] = {"seq": e.seq, "type": type(m).__name__}
            for f in fields(m):
                v = getattr(m, f.name)
                if isinstance(v, np.ndarray):
                    head[f.name] = {"array": put(f"{e.seq}/{f.name}", v)}
                elif isinstance(v, bytes):
                    arrays[f"{e.seq}/{f.name}"] = np.frombuffer(v, dtype=np.uint8)
                    head[f.name] = {"bytes": f"{e.seq}/{f.name}"}
                elif isinstance(v, dict) and any(isinstance(x, np.ndarray) for x in v.values()):
                    keys = {k: put(f"{e.seq}/{f.name}/{k}", x) for k, x in v.items()}
                    head[f.name] = {"arrays": keys}
                else:
                    head[f.name] = v
            headers.append(head)
        tmp = target.with_name(target.name + ".tmp.npz")
        arrays["__headers__"] = np.array(json.dumps(headers))
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Transcript:
        """Read a transcript written by :meth:`save` (e.g. ``RUN_DIR/transcript.npz``).

        Every message is rebuilt as its frozen dataclass (arrays read-only; an
        array stored once is shared by the messages that hold it), in the order it
        was delivered, so :meth:`server_view` and :meth:`messages` work as on the
        live transcript. :meth:`summary` counts the loaded messages.

        Raises
        ------
        MessageError
            If the file names an unknown message type.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> from secrelay.federated.messages import ContributionUpload
        >>> t = Transcript()
        >>> t.record(ContributionUpload(sender=3, receiver=SERVER, round=1,
        ...              contribution={"delta": np.ones(2)}))
        >>> p = t.save(pathlib.Path(tempfile.mkdtemp()) / "t.npz")
        >>> [m.contribution["delta"].tolist() for m in Transcript.load(p).server_view()]
        [[1.0, 1.0]]
        """
        out = cls()
        with np.load(Path(path), allow_pickle=False) as z:
            headers = json.loads(str(z["__headers__"]))
            cache: dict[str, np.ndarray] = {}

            def get(key: str) -> np.ndarray:
                if key not in cache:
                    a = np.array(z[key])
                    a.setflags(write=False)
                    cache[key] = a
                return cache[key]

            for head in headers:
                name = str(head.pop("type"))
                msg_cls = getattr(_messages, name, None)
                if not (isinstance(msg_cls, type) and issubclass(msg_cls, Message)):
                    raise MessageError(
                        f"transcript {str(path)!r} holds an unknown message {name!r}"
                    )
                head.pop("seq", None)
                kwargs: dict[str, Any] = {}
                for k, v in head.items():
                    if isinstance(v, dict) and set(v) == {"array"}:
                        kwargs[k] = get(v["array"])
                    elif isinstance(v, dict) and set(v) == {"bytes"}:
                        kwargs[k] = get(v["bytes"]).tobytes()
                    elif isinstance(v, dict) and set(v) == {"arrays"}:
                        kwargs[k] = {n: get(key) for n, key in v["arrays"].items()}
                    else:
                        kwargs[k] = v
                out.record(msg_cls(**kwargs))
        return out


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
