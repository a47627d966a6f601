"""Attribute inference on known attributes: planted updates, vectors, ML-100K."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.attributes import AttributeInferenceAttack, majority_baseline
from attacks.truth import user_attribute
from attacks.views import ModelLayout, ServerView
from secrelay.federated import SERVER, ContributionUpload, ModelDownload, Transcript


def _view_of_updates(layout, updates):
    t = Transcript()
    for d, u in updates.items():
        t.record(
            ModelDownload(
                sender=SERVER,
                receiver=d,
                round=1,
                models={"global": np.zeros(layout.num_parameters, np.float32)},
            )
        )
        t.record(
            ContributionUpload(
                sender=d, receiver=SERVER, round=1, contribution={"delta": u, "weight": np.ones(1)}
            )
        )
    return ServerView.from_transcript(t, layout)


def test_majority_baseline():
    majority, est = majority_baseline({1: 2, 2: 2, 3: 1}, {10: 2, 11: 1, 12: 2, 13: 2})
    assert majority == 2 and est.value == 0.75


def test_attribute_rows_of_a_plain_update_give_the_attribute(small_data, layout, planted_update):
    """Every example of a device carries its gender: the one gender row that moved."""
    truth = user_attribute(small_data.split_by_user(), "gender")
    updates = {
        d: planted_update(layout, "gender", [g], scale=1.0, seed=d)
        + planted_update(layout, "item_id", [5, 6], scale=1.0, seed=d)
        for d, g in truth.items()
    }
    atk = AttributeInferenceAttack("gender", small_data)
    r = atk.from_rows(_view_of_updates(layout, updates), truth)
    assert r.accuracy.value == 1.0 and r.accuracy.n == len(truth)
    assert r.baseline.value < 1.0 and r.advantage > 0


def test_secure_sums_leave_only_the_baseline(small_data):
    truth = user_attribute(small_data.split_by_user(), "age")
    r = AttributeInferenceAttack("age", small_data).no_signal(truth, route="none")
    assert r.accuracy == r.baseline and r.advantage == 0


def test_vectors_that_encode_the_attribute_are_read(small_data):
    """p_u-like vectors separated by the attribute: the classifier reads it."""
    rng = np.random.default_rng(0)
    truth = user_attribute(small_data.split_by_user(), "gender")
    vec = {u: np.eye(3)[g] * 2 + rng.normal(0, 0.3, 3) for u, g in truth.items()}
    atk = AttributeInferenceAttack("gender", small_data)
    r = atk.from_vectors(vec, vec, truth)
    assert r.accuracy.value >= 0.9


@pytest.mark.movielens
@pytest.mark.parametrize(
    "attribute",
    [
        "gender",
        pytest.param("age", marks=pytest.mark.slow),
        pytest.param("occupation", marks=pytest.mark.slow),
    ],
)
def test_ml100k_items_reveal_attributes_beyond_the_majority(ml100k, attribute):
    """ML-100K: the item set a plain update reveals, fed to a classifier trained on
    other users, against the majority-class baseline (known attributes from u.user)."""
    users = ml100k.split_by_user()
    ids = sorted(users)
    rng = np.random.default_rng(0)
    rng.shuffle(ids)
    cloud_ids, device_ids = ids[:600], ids[600:]
    from secrelay.data import CTRDataset

    cloud = CTRDataset.concat([users[u] for u in cloud_ids])
    layout = ModelLayout("lr", ml100k.schema, (("embedding_dim", 1),))
    updates = {}
    item = ml100k.schema.item_id_field
    for u in device_ids:
        codes = np.unique(users[u].column(item)).tolist()
        vec = np.zeros(layout.num_parameters)
        start = ml100k.schema.vocab_offsets()[ml100k.schema.index(item)]
        vec[[start + c for c in codes]] = 1e-3
        updates[u] = vec
    truth = user_attribute({u: users[u] for u in device_ids}, attribute)
    atk = AttributeInferenceAttack(attribute, cloud)
    r = atk.from_items(_view_of_updates(layout, updates), truth)
    assert r.accuracy.n == len(device_ids)
    if attribute in ("gender", "age"):
        assert r.accuracy.value > r.baseline.value + 0.03  # the items carry the attribute
    else:
        assert r.accuracy.value >= r.baseline.value - 0.05  # 21 classes: near the prior
