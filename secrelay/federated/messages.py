"""Typed messages: everything that crosses the device/cloud boundary.

Each message is a frozen dataclass with a declared payload. Arrays inside a message
are made read-only on construction, so a recorded transcript cannot be altered by
the code that produced it. Privacy layers replace a plaintext payload by a
protected one (masked bytes, ciphertexts, noised values) *in the same message
slot*, so the transcript always shows what the receiver actually got.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from protocols.errors import MessageError

__all__ = [
    "SERVER",
    "AttributeReport",
    "ContributionUpload",
    "Direction",
    "GradientReport",
    "MaskedUpload",
    "Message",
    "ModelDownload",
    "QueryMessage",
    "ReplyMessage",
]

SERVER = -1
"""Party id of the server (devices have ids >= 0)."""

Direction = Literal["up", "down"]


def _frozen_array(a: np.ndarray) -> np.ndarray:
    """A read-only array; an already read-only ndarray is shared, not copied (one
    model downloaded by 25 devices is stored once in the transcript)."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        return a
    arr = np.array(a, copy=True)
    arr.setflags(write=False)
    return arr


def _frozen_arrays(d: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {str(k): _frozen_array(v) for k, v in d.items()}


@dataclass(frozen=True)
class Message:
    """Common header of every message.

    Attributes
    ----------
    sender, receiver:
        Party ids (:data:`SERVER` = -1, devices >= 0).
    round:
        Federated round the message belongs to (>= 0; cloud set-up uses 0).
    """

    kind: ClassVar[str] = "message"
    sender: int
    receiver: int
    round: int

    def __post_init__(self) -> None:
        if self.round < 0:
            raise MessageError(f"{type(self).__name__}: `round` must be >= 0; got {self.round}")
        if (self.sender == SERVER) == (self.receiver == SERVER):
            raise MessageError(
                f"{type(self).__name__}: exactly one of sender/receiver must be the server; "
                f"got sender={self.sender}, receiver={self.receiver}"
            )

    @property
    def direction(self) -> Direction:
        return "up" if self.receiver == SERVER else "down"

    def nbytes(self) -> int:
        """Payload size in bytes (arrays and byte strings), used for traffic accounting."""
        total = 0
        for v in vars(self).values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, bytes):
                total += len(v)
            elif isinstance(v, dict):
                total += sum(x.nbytes if isinstance(x, np.ndarray) else 8 for x in v.values())
        return total


@dataclass(frozen=True)
class ModelDownload(Message):
    """Server → device: model parameters (one or several models, keyed by name).

    ``models`` maps a model key (e.g. ``"global"`` or ``"cluster/1"``) to a flat
    float32 parameter vector. Downloading *all* K cluster models keeps the
    device's choice private (DESIGN.md, "initial model").
    """

    kind: ClassVar[str] = "model_download"
    models: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction != "down":
            raise MessageError("ModelDownload must go from the server to a device")
        object.__setattr__(self, "models", _frozen_arrays(self.models))


@dataclass(frozen=True)
class ContributionUpload(Message):
    """Device → server, in the clear: the device's contribution to the round's sums.

    ``contribution`` maps a sum name (e.g. ``"weighted_delta"``, ``"weight"``) to an
    array; the server adds the arrays of all surviving devices name by name. Sent in
    the clear this is the leak that secure aggregation removes: the transcript holds
    every device's individual update.
    """

    kind: ClassVar[str] = "contribution_upload"
    contribution: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction != "up":
            raise MessageError("ContributionUpload must go from a device to the server")
        object.__setattr__(self, "contribution", _frozen_arrays(self.contribution))


@dataclass(frozen=True)
class MaskedUpload(Message):
    """Device → server: an opaque protocol message (e.g. a SecAgg+ stage message)."""

    kind: ClassVar[str] = "masked_upload"
    stage: str = ""
    payload: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.payload, bytes):
            raise MessageError(f"MaskedUpload.payload must be bytes; got {type(self.payload)}")


@dataclass(frozen=True)
class AttributeReport(Message):
    """Device → server: named scalar attributes (e.g. MetaUA's client attributes z_k)."""

    kind: ClassVar[str] = "attribute_report"
    attributes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction != "up":
            raise MessageError("AttributeReport must go from a device to the server")
        object.__setattr__(
            self, "attributes", {str(k): float(v) for k, v in self.attributes.items()}
        )


@dataclass(frozen=True)
class GradientReport(Message):
    """Device → server: a gradient vector (e.g. MetaUA's query-set gradient g_k)."""

    kind: ClassVar[str] = "gradient_report"
    gradient: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction != "up":
            raise MessageError("GradientReport must go from a device to the server")
        object.__setattr__(self, "gradient", _frozen_array(self.gradient))


@dataclass(frozen=True)
class QueryMessage(Message):
    """Device → server: a request carrying arrays (e.g. a selector input p_u, an
    encrypted user vector as bytes in ``blob``)."""

    kind: ClassVar[str] = "query"
    topic: str = ""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    blob: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction != "up":
            raise MessageError("QueryMessage must go from a device to the server")
        object.__setattr__(self, "arrays", _frozen_arrays(self.arrays))


@dataclass(frozen=True)
class ReplyMessage(Message):
    """Server → device: the answer to a :class:`QueryMessage` (or a published table)."""

    kind: ClassVar[str] = "reply"
    topic: str = ""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    blob: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction != "down":
            raise MessageError("ReplyMessage must go from the server to a device")
        object.__setattr__(self, "arrays", _frozen_arrays(self.arrays))
