"""A saved transcript reads back as the same messages (the attack surface)."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import MessageError
from secrelay.federated import (
    SERVER,
    AttributeReport,
    ContributionUpload,
    MaskedUpload,
    ModelDownload,
    QueryMessage,
    ReplyMessage,
    Transcript,
)
from secrelay.federated.messages import GradientReport


def _transcript() -> Transcript:
    t = Transcript()
    w = np.arange(6, dtype=np.float32)
    for dev in (0, 1, 2):  # one model downloaded by three devices
        t.record(
            ModelDownload(
                sender=SERVER, receiver=dev, round=1, models={"global": w}, config={"lr": 0.1}
            )
        )
    t.record(
        ContributionUpload(
            sender=0,
            receiver=SERVER,
            round=1,
            contribution={"delta": np.ones(6), "weight": np.array([2.0])},
        )
    )
    t.record(
        MaskedUpload(
            sender=1, receiver=SERVER, round=1, stage="masked_input", payload=b"\x00\x01\xff"
        )
    )
    t.record(AttributeReport(sender=2, receiver=SERVER, round=1, attributes={"loss": 0.5}))
    t.record(GradientReport(sender=2, receiver=SERVER, round=1, gradient=np.ones(3)))
    t.record(
        QueryMessage(
            sender=2, receiver=SERVER, round=0, topic="q", arrays={"p_u": np.ones(2)}, blob=b"xy"
        )
    )
    t.record(ReplyMessage(sender=SERVER, receiver=2, round=0, topic="q", arrays={}))
    return t


def test_round_trip_keeps_every_message(tmp_path):
    t = _transcript()
    loaded = Transcript.load(t.save(tmp_path / "t.npz"))
    assert len(loaded) == len(t) and loaded.summary() == t.summary()
    for a, b in zip(t, loaded):
        assert type(a) is type(b) and a.sender == b.sender and a.round == b.round
        for k, v in vars(a).items():
            w = getattr(b, k)
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, w)
                assert not w.flags.writeable
            elif isinstance(v, dict):
                assert set(v) == set(w)
                for kk in v:
                    np.testing.assert_array_equal(np.asarray(v[kk]), np.asarray(w[kk]))
            else:
                assert v == w
    assert loaded.server_view() == tuple(loaded)


def test_identical_arrays_are_stored_once(tmp_path):
    path = _transcript().save(tmp_path / "t.npz")
    with np.load(path) as z:
        model_keys = [k for k in z.files if k.endswith("/models/global")]
    assert len(model_keys) == 1
    loaded = Transcript.load(path)
    downs = loaded.messages(kind=ModelDownload)
    assert downs[0].models["global"] is downs[2].models["global"]


def test_unknown_message_type_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        __headers__=np.array(
            '[{"seq": 0, "type": "Nope", "sender": 1, "receiver": -1, "round": 0}]'
        ),
    )
    with pytest.raises(MessageError, match="Nope"):
        Transcript.load(path)
