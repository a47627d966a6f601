"""Interacted-item inference on planted item sets, then on real tiny runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attacks.items import InteractedItemAttack, detect_rows
from attacks.truth import item_sets, load_truth
from attacks.views import ServerView
from secrelay import RunConfig
from secrelay.federated import SERVER, ContributionUpload, ModelDownload, Transcript


def _view(
    layout, updates: dict[tuple[int, int], np.ndarray], *, secure: bool = False
) -> ServerView:
    """A transcript with one download per round and the given plaintext updates; with
    ``secure`` only the sums reach the view (the next round's download)."""
    t = Transcript()
    w = np.zeros(layout.num_parameters)
    rounds = sorted({r for r, _ in updates})
    for r in [*rounds, rounds[-1] + 1]:
        devs = sorted(d for rr, d in updates if rr == r)
        for d in devs or [0]:
            t.record(
                ModelDownload(
                    sender=SERVER, receiver=d, round=r, models={"global": w.astype(np.float32)}
                )
            )
        if not devs:
            continue
        total = np.zeros_like(w)
        for d in devs:
            u = updates[(r, d)]
            total += u
            if not secure:
                t.record(
                    ContributionUpload(
                        sender=d,
                        receiver=SERVER,
                        round=r,
                        contribution={"delta": u, "weight": np.ones(1)},
                    )
                )
        w = w + total / len(devs)
    view = ServerView.from_transcript(t, layout)
    if secure:  # the server knows who took part from the SecAgg+ messages
        parts = {r: tuple(sorted(d for rr, d in updates if rr == r)) for r in rounds}
        view = ServerView(view.layout, view.downloads, view.sampled, {}, parts, True)
    return view


def test_detect_rows_exact_sparsity_and_noise_floor():
    rng = np.random.default_rng(0)
    sparse = np.zeros(100)
    sparse[[3, 7]] = [1e-6, 0.5]
    assert np.flatnonzero(detect_rows(sparse, width=4)).tolist() == [3, 7]
    # pure noise rows: the floor keeps false detections rare (alpha = 0.05 over all rows)
    false = [
        detect_rows(np.linalg.norm(rng.normal(size=(500, 8)), axis=1), width=8).sum()
        for _ in range(50)
    ]
    assert np.mean(false) < 0.2
    noisy = np.linalg.norm(rng.normal(size=(500, 8)), axis=1)
    noisy[:10] += 20
    assert set(np.flatnonzero(detect_rows(noisy, width=8))) == set(range(10))


def test_plain_updates_reveal_planted_items_exactly(layout, planted_update):
    planted = {1: [5, 17, 40], 2: [17, 99, 120, 121], 3: [2]}
    updates = {(1, d): planted_update(layout, "item_id", c, seed=d) for d, c in planted.items()}
    res = InteractedItemAttack().run_plain(
        _view(layout, updates), {d: set(c) for d, c in planted.items()}
    )
    assert res.precision.value == 1.0 and res.recall.value == 1.0 and res.f1.value == 1.0
    assert len(res.devices) == 3


def test_plain_updates_with_dp_noise_degrade_gracefully(layout, planted_update):
    rng = np.random.default_rng(1)
    planted = {
        d: sorted(rng.choice(np.arange(1, 200), 10, replace=False).tolist()) for d in range(1, 6)
    }
    truth = {d: set(c) for d, c in planted.items()}
    # strong signal over light noise: still recovered
    light = {
        (1, d): planted_update(layout, "item_id", c, scale=1.0, seed=d)
        + rng.normal(0, 0.05, layout.num_parameters)
        for d, c in planted.items()
    }
    res = InteractedItemAttack().run_plain(_view(layout, light), truth)
    assert res.recall.value >= 0.9 and res.precision.value >= 0.9
    # noise far above the signal: the recovered sets are no better than chance
    heavy = {
        (1, d): planted_update(layout, "item_id", c, scale=0.01, seed=d)
        + rng.normal(0, 1.0, layout.num_parameters)
        for d, c in planted.items()
    }
    res = InteractedItemAttack().run_plain(_view(layout, heavy), truth)
    assert res.recall.value < 0.3
    assert res.average_precision.value < 0.3


def test_secure_sums_hide_whose_items_but_rounds_intersect(layout, planted_update):
    # device 1 takes part in rounds 1 and 2 with different companions
    own = [10, 11]
    others = {2: [50, 51, 52], 3: [60, 61], 4: [70], 5: [80, 81]}
    updates = {
        (1, 1): planted_update(layout, "item_id", own, seed=1),
        (1, 2): planted_update(layout, "item_id", others[2], seed=2),
        (1, 3): planted_update(layout, "item_id", others[3], seed=3),
        (2, 1): planted_update(layout, "item_id", own, seed=4),
        (2, 4): planted_update(layout, "item_id", others[4], seed=5),
        (2, 5): planted_update(layout, "item_id", others[5], seed=6),
        (3, 2): planted_update(layout, "item_id", others[2], seed=7),
        (3, 3): planted_update(layout, "item_id", others[3], seed=8),
    }
    truth = {1: set(own), **{d: set(c) for d, c in others.items()}}
    view = _view(layout, updates, secure=True)
    with pytest.raises(ValueError, match="plaintext"):
        InteractedItemAttack().run_plain(view, truth)
    atk = InteractedItemAttack()
    union = atk.run_aggregate(view, view.release_view(), truth, mode="union")
    dev1 = next(d for d in union.devices if d.device == 1)
    assert dev1.recall == 1.0 and dev1.precision == pytest.approx(2 / 7)  # {10,11} of round 1's 7
    inter = atk.run_aggregate(view, view.release_view(), truth, mode="intersection")
    dev1 = next(d for d in inter.devices if d.device == 1)
    assert dev1.precision == 1.0 and dev1.recall == 1.0  # the two rounds share only its items
    diff = atk.run_aggregate(view, view.release_view(), truth, mode="difference", prior=0.3)
    assert next(d for d in diff.devices if d.device == 1).average_precision == pytest.approx(1.0)


def _truth_and_view(run_dir):
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    truth = load_truth(cfg)
    return truth, ServerView.from_run(run_dir, truth.full.schema)


def test_real_plain_run_meets_the_acceptance_bar(runs):
    truth, view = _truth_and_view(runs["plain"])
    res = InteractedItemAttack().run_plain(view, item_sets(truth))
    # acceptance: recall >= 0.95 at precision >= 0.95 on unprotected runs
    assert res.recall.value >= 0.95 and res.precision.value >= 0.95
    assert len(res.devices) >= 8


def test_real_secure_run_gives_only_the_round_union(runs):
    truth, view = _truth_and_view(runs["secagg"])
    assert view.secure and not view.uploads
    res = InteractedItemAttack().run_aggregate(
        view, view.release_view(), item_sets(truth), mode="union"
    )
    assert res.recall.value >= 0.9  # every item of the round is in the sum
    assert res.precision.value < 0.5  # but so are the other participants' items
