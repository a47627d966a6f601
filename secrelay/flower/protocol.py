"""The wire vocabulary of the Flower app: message types, record names, and the
device-side SecAgg+ encoding both sides must agree on (flwr-free, testable alone).

A round is three kinds of ``Message`` (Flower routes ``"<category>.<action>"``):

``query.secrelay_register`` (once per run)
    server → device: nothing; device → server: its device id and its identity
    public key (the PKI entry; see ``docs/deploy.md`` for a real PKI).
``train.secrelay`` (once per round, sampled devices)
    server → device: the downloaded models (``ArrayRecord``) and the public task
    (round, seed, config); device → server: only the *names and shapes* of its
    contribution. The contribution itself stays on the device.
``query.secrelay_secagg`` (one per SecAgg+ stage)
    server → device: the round setup (first stage) or the server's stage message
    (bytes from :class:`protocols.secagg.SecAggServer`); device → server: the
    device's stage reply (bytes from :class:`protocols.secagg.SecAggClient`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.errors import InvalidParameterError, MessageError
from protocols.secagg import SecAggConfig
from secrelay.federated.secure import SecureSumSettings

__all__ = [
    "MSG_REGISTER",
    "MSG_SECAGG",
    "MSG_TRAIN",
    "RoundSetup",
    "decode_shapes",
    "encode_shapes",
    "get_bytes",
    "get_int",
    "get_list",
    "get_str",
    "round_seed",
    "scaled_vector",
]

MSG_REGISTER = "query.secrelay_register"
MSG_TRAIN = "train.secrelay"
MSG_SECAGG = "query.secrelay_secagg"

# Record names inside a message's RecordDict.
REC_MODELS = "models"
REC_TASK = "task"
REC_REPLY = "reply"
REC_SECAGG = "secagg"


def get_int(rec: Mapping[str, object], key: str) -> int:
    """``rec[key]`` as an int; a missing or mistyped field is one :class:`MessageError`."""
    value = rec.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"message field {key!r} must be an integer; got {type(value).__name__}")
    return value


def get_bytes(rec: Mapping[str, object], key: str) -> bytes:
    """``rec[key]`` as bytes (same errors as :func:`get_int`)."""
    value = rec.get(key)
    if not isinstance(value, bytes):
        raise MessageError(f"message field {key!r} must be bytes; got {type(value).__name__}")
    return value


def get_str(rec: Mapping[str, object], key: str) -> str:
    """``rec[key]`` as a string (same errors as :func:`get_int`)."""
    value = rec.get(key)
    if not isinstance(value, str):
        raise MessageError(f"message field {key!r} must be a string; got {type(value).__name__}")
    return value


def get_list(rec: Mapping[str, object], key: str, kind: type) -> list[Any]:
    """``rec[key]`` as a list of ``kind`` (missing: empty)."""
    value = rec.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    ):
        raise MessageError(f"message field {key!r} must be a list of {kind.__name__}")
    return value


def round_seed(seed: int, round: int) -> int:
    """The per-round protocol seed of reproducible mode, derived exactly as
    :class:`~secrelay.federated.secure.SecureSum` derives it (so a Flower round and an
    in-process round use the same keys, masks and rounding for the same seed)."""
    return int(np.random.SeedSequence([int(seed), int(round), 3]).generate_state(1)[0])


def encode_shapes(contribution: Mapping[str, np.ndarray]) -> str:
    """The public names and shapes of a contribution, as JSON."""
    return json.dumps({k: list(np.shape(v)) for k, v in sorted(contribution.items())})


def decode_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """Inverse of :func:`encode_shapes`; a bad reply is one :class:`MessageError`."""
    try:
        raw = json.loads(text)
        out = {str(k): tuple(int(x) for x in v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise MessageError(f"bad contribution shapes in a train reply: {exc}") from None
    if any(x < 0 for s in out.values() for x in s):
        raise MessageError(f"bad contribution shapes in a train reply: {out}")
    return out


def scaled_vector(
    contribution: Mapping[str, np.ndarray], settings: SecureSumSettings
) -> np.ndarray:
    """Device side of SecureSum's per-name float encoding: each name (sorted) divided
    by its public bound and clipped to [-1, 1], concatenated (the vector
    :meth:`SecureSum.aggregate` builds for each device in-process)."""
    parts = [
        np.clip(
            np.asarray(contribution[k], dtype=np.float64).ravel() / settings.bound(k), -1.0, 1.0
        )
        for k in sorted(contribution)
    ]
    return np.concatenate(parts) if parts else np.zeros(1)


@dataclass(frozen=True)
class RoundSetup:
    """What the server tells each device before the SecAgg+ round starts.

    The device derives the protocol parameters itself from its own copy of the
    settings and from ``devices`` (so a server cannot choose weaker ones); the
    server supplies only the round's public values.

    Attributes
    ----------
    round:
        Round number.
    devices:
        The device ids entering the protocol, in protocol order (client id = position).
    round_id:
        The 16-byte public round id.
    beacon:
        The public beacon value the SecAgg+ graph derives from (``b""``: none, the
        graph derives from the round id alone — reproducible mode).
    pki:
        Identity public keys of ``devices``, in order (empty when advertisements are
        not signed).
    encoding:
        ``"scaled"`` (per-name bounds, SecureSum's float encoding) or ``"integer"``
        (a user-level DP sum's exact integer device encoding).
    dimension:
        Length of the packed vector the integer encoding noises (0 for ``"scaled"``).
    """

    round: int
    devices: tuple[int, ...]
    round_id: bytes
    beacon: bytes
    pki: tuple[bytes, ...]
    encoding: str
    dimension: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.encoding not in ("scaled", "integer"):
            problems.append(f"`encoding` must be 'scaled' or 'integer'; got {self.encoding!r}")
        if len(set(self.devices)) != len(self.devices) or len(self.devices) < 2:
            problems.append(f"`devices` must be >= 2 distinct ids; got {self.devices}")
        if self.pki and len(self.pki) != len(self.devices):
            problems.append(f"`pki` must list {len(self.devices)} keys; got {len(self.pki)}")
        if problems:
            raise InvalidParameterError("; ".join(problems))

    def client_id(self, device_id: int) -> int:
        """This device's position in the protocol."""
        if device_id not in self.devices:
            raise MessageError(f"device {device_id} is not in round {self.round}'s setup")
        return self.devices.index(device_id)

    def to_record(self) -> dict[str, int | bytes | str | list[int] | list[bytes]]:
        """ConfigRecord values (ints, bytes, strings and lists of them)."""
        return {
            "round": self.round,
            "devices": list(self.devices),
            "round_id": self.round_id,
            "beacon": self.beacon,
            "pki": list(self.pki),
            "encoding": self.encoding,
            "dimension": self.dimension,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, object]) -> RoundSetup:
        """Inverse of :meth:`to_record`; anything malformed is one :class:`MessageError`."""
        try:
            return cls(
                round=get_int(rec, "round"),
                devices=tuple(get_list(rec, "devices", int)),
                round_id=get_bytes(rec, "round_id"),
                beacon=get_bytes(rec, "beacon"),
                pki=tuple(get_list(rec, "pki", bytes)),
                encoding=get_str(rec, "encoding"),
                dimension=get_int(rec, "dimension"),
            )
        except InvalidParameterError as exc:
            raise MessageError(f"bad SecAgg+ round setup: {exc}") from None

    def protocol_config(
        self, settings: SecureSumSettings, *, vector_length: int, clip_range: float, bits: int
    ) -> SecAggConfig:
        """The SecAgg+ parameters of this round, from the party's own settings."""
        return settings.protocol_config(
            n_clients=len(self.devices),
            vector_length=vector_length,
            clip_range=clip_range,
            precision_bits=bits,
        )
