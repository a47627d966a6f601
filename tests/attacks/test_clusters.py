"""Cluster-membership and preference inference against RelayRec (planted and real)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attacks.clusters import ClusterInferenceAttack, dominant_category
from attacks.truth import load_truth, preference_categories, private_keys
from attacks.views import ServerView
from secrelay import RunConfig, run
from secrelay.federated import (
    SERVER,
    ContributionUpload,
    ModelDownload,
    QueryMessage,
    ReplyMessage,
    Transcript,
)
from secrelay.relay.relayrec import ITEM_SPACE_TOPIC, SELECT_TOPIC

KEYS = ("cluster/0", "cluster/1", "cluster/2")


def _transcript(layout, chosen: dict[int, int], *, slots: bool, replies: bool) -> ServerView:
    t = Transcript()
    d = layout.num_parameters
    models = {k: np.zeros(d, np.float32) for k in KEYS}
    for dev, k in chosen.items():
        if replies:
            scores = np.full(len(KEYS), -1.0)
            scores[k] = 1.0
            t.record(
                ReplyMessage(
                    sender=SERVER,
                    receiver=dev,
                    round=0,
                    topic=SELECT_TOPIC,
                    arrays={"scores": scores},
                )
            )
        t.record(ModelDownload(sender=SERVER, receiver=dev, round=1, models=models))
        if slots:
            delta = np.zeros((len(KEYS), d))
            delta[k, :5] = 0.1
            count = np.eye(len(KEYS))[k]
            t.record(
                ContributionUpload(
                    sender=dev,
                    receiver=SERVER,
                    round=1,
                    contribution={"delta": delta, "count": count, "weight": count},
                )
            )
    return ServerView.from_transcript(t, layout)


@pytest.mark.parametrize(
    ("slots", "replies", "route"), [(True, False, "slot"), (False, True, "selector reply")]
)
def test_planted_choices_are_read(layout, slots, replies, route):
    chosen = {dev: dev % 3 for dev in range(12)}
    view = _transcript(layout, chosen, slots=slots, replies=replies)
    r = ClusterInferenceAttack().run(view, {d: KEYS[k] for d, k in chosen.items()})
    assert r.accuracy.value == 1.0 and r.routes == {route: 12}


def test_without_per_device_signal_the_guess_is_the_largest_cluster(layout):
    chosen = {dev: (0 if dev < 8 else 1) for dev in range(12)}
    view = _transcript(layout, chosen, slots=False, replies=False)
    r = ClusterInferenceAttack().run(view, {d: KEYS[k] for d, k in chosen.items()})
    assert r.accuracy.value == pytest.approx(8 / 12) == r.baseline.value
    assert r.routes == {"none": 12}


def test_dominant_category_from_p_u():
    c = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert dominant_category(np.array([0.3, 0.7, 0.0]), c) == 1
    assert dominant_category(np.array([0.9, 0.1, 0.0]), c) == 0


def _relayrec(secure: bool, path: str) -> RunConfig:
    return RunConfig.from_dict(
        {
            "run": {"name": "rr", "seed": 3, "progress": False, "record_transcript": True},
            "data": {
                "name": "synthetic",
                "options": {"n_users": 30, "samples_per_user": 24, "n_items": 60},
            },
            "split": {"alpha": 0.25},
            "model": {"name": "lr", "embedding_dim": 4},
            "cloud": {"epochs": 1, "batch_size": 64},
            "local": {"epochs": 1, "batch_size": 16},
            "federated": {"rounds": 2, "clients_per_round": 8},
            "method": {
                "name": "relayrec",
                "options": {
                    "server_model_options": {"cin_layer_sizes": [4], "hidden_units": [8]},
                    "meta_epochs": 1,
                    "selector_epochs": 30,
                    "selector_path": path,
                },
            },
            "privacy": {
                "secure_aggregation": secure,
                "secagg_sign_advertisements": secure,
                "randomness": "reproducible",
            },
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("secure", "path", "leaks"),
    [(False, "query", True), (True, "query", True), (True, "local", False)],
)
def test_real_relayrec_runs(tmp_path, secure, path, leaks):
    """Hidden-membership SecAgg hides the slot, but a plaintext selector query still
    gives the cluster away; only the local selector leaves the baseline."""
    cfg = _relayrec(secure, path)
    run(cfg, tmp_path, progress=False, log=lambda s: None)
    truth = load_truth(cfg)
    view = ServerView.from_run(tmp_path, truth.full.schema)
    keys = private_keys(tmp_path)
    r = ClusterInferenceAttack().run(view, keys)
    if leaks:
        assert r.accuracy.value == 1.0
    else:
        assert r.accuracy.value == r.baseline.value and set(r.routes) == {"none"}
    space = next((m for m in view.replies if m.topic == ITEM_SPACE_TOPIC), None)
    if path == "query":
        assert any(isinstance(q, QueryMessage) for q in view.queries)
        cats = preference_categories(
            {d: v.train for d, v in truth.devices.items()},
            space.arrays["item_table"],
            space.arrays["centroids"],
        )
        rc = ClusterInferenceAttack().run_categories(view, cats)
        assert rc.accuracy.value >= 0.9
    json.dumps(r.as_dict())
