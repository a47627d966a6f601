"""CoDA's wire format: the match request and the sample-batch payload.

The device's request (its user vector) is a
:class:`~secrelay.federated.messages.QueryMessage` on :data:`MATCH_TOPIC`, so the
CKKS layer can encrypt it later without changing the flow; each batch of matched
samples travels as a zlib-compressed, base64-encoded payload in a
:class:`~secrelay.federated.messages.ReplyMessage` blob on :data:`BATCH_TOPIC`.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass

import numpy as np

from protocols.errors import DataFormatError, InvalidParameterError
from secrelay.federated.messages import SERVER, QueryMessage

__all__ = [
    "BATCH_TOPIC",
    "MATCH_TOPIC",
    "PAYLOAD_MAGIC",
    "SampleBatch",
    "decode_payload",
    "encode_payload",
    "match_request",
]

MATCH_TOPIC = "coda/match"
BATCH_TOPIC = "coda/batch"
PAYLOAD_MAGIC = b"CODA1"


@dataclass(frozen=True, eq=False)
class SampleBatch:
    """A decoded batch: sample IDs, features and labels."""

    sample_ids: np.ndarray
    x: np.ndarray
    y: np.ndarray


def encode_payload(batch: SampleBatch) -> bytes:
    """zlib + base64 encoding of a batch (magic, JSON header, raw arrays).

    IDs travel as int64, features as int32, labels as uint8.
    """
    ids = np.ascontiguousarray(batch.sample_ids, dtype="<i8")
    x = np.ascontiguousarray(batch.x, dtype="<i4")
    y = np.ascontiguousarray(batch.y, dtype=np.uint8)
    if x.ndim != 2 or ids.shape != (x.shape[0],) or y.shape != (x.shape[0],):
        raise InvalidParameterError(
            f"batch arrays disagree: ids {ids.shape}, x {x.shape}, y {y.shape}"
        )
    header = json.dumps({"n": int(x.shape[0]), "cols": int(x.shape[1])}).encode()
    raw = (
        PAYLOAD_MAGIC
        + len(header).to_bytes(4, "little")
        + header
        + ids.tobytes()
        + x.tobytes()
        + y.tobytes()
    )
    return base64.b64encode(zlib.compress(raw, 9))


def decode_payload(payload: bytes, *, n_columns: int | None = None) -> SampleBatch:
    """Inverse of :func:`encode_payload`.

    Raises
    ------
    DataFormatError
        Not base64, not a zlib stream (or truncated / bit-flipped: zlib's checksum
        fails), wrong magic, a malformed header, or a body whose length does not
        match the header; also when ``n_columns`` is given and differs.
    """
    try:
        compressed = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataFormatError(f"CoDA payload is not valid base64: {e}") from None
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as e:
        raise DataFormatError(f"CoDA payload is not a valid zlib stream: {e}") from None
    if not raw.startswith(PAYLOAD_MAGIC) or len(raw) < len(PAYLOAD_MAGIC) + 4:
        raise DataFormatError("CoDA payload has the wrong magic bytes (not a CoDA batch)")
    pos = len(PAYLOAD_MAGIC)
    hlen = int.from_bytes(raw[pos : pos + 4], "little")
    pos += 4
    try:
        header = json.loads(raw[pos : pos + hlen].decode())
        n, cols = int(header["n"]), int(header["cols"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataFormatError("CoDA payload header is malformed") from None
    pos += hlen
    if n < 0 or cols < 1 or len(raw) - pos != n * 8 + n * cols * 4 + n:
        raise DataFormatError(
            f"CoDA payload body has {len(raw) - pos} bytes; the header announces {n} rows "
            f"of {cols} columns"
        )
    if n_columns is not None and cols != n_columns:
        raise DataFormatError(f"CoDA payload has {cols} feature columns; expected {n_columns}")
    ids = np.frombuffer(raw, dtype="<i8", count=n, offset=pos).astype(np.int64)
    pos += n * 8
    x = (
        np.frombuffer(raw, dtype="<i4", count=n * cols, offset=pos)
        .reshape(n, cols)
        .astype(np.int64)
    )
    pos += n * cols * 4
    y = np.frombuffer(raw, dtype=np.uint8, count=n, offset=pos).astype(np.float32)
    if n and not np.isin(y, (0.0, 1.0)).all():
        raise DataFormatError("CoDA payload labels must be 0 or 1")
    return SampleBatch(ids, x, y)


def match_request(device: int, round: int, vector: np.ndarray) -> QueryMessage:
    """Device → cloud: the user vector (the CKKS layer encrypts it into ``blob``)."""
    return QueryMessage(
        sender=device,
        receiver=SERVER,
        round=round,
        topic=MATCH_TOPIC,
        arrays={"user_vector": np.asarray(vector, dtype=np.float32)},
    )
