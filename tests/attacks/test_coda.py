"""CoDA: neighbourhoods from batch fetches, and re-identification of a planted pool user."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.coda import (
    NeighbourhoodAttack,
    ReidentificationAttack,
    reidentification_sweep,
    served_rows,
)
from attacks.views import ServerView
from secrelay.data import CTRDataset, make_synthetic
from secrelay.federated import ReplyMessage
from secrelay.relay.coda import BATCH_TOPIC, SampleBatch, SamplePrivatizer, encode_payload


@pytest.fixture(scope="module")
def pool() -> CTRDataset:
    return make_synthetic(n_users=40, samples_per_user=25, n_items=60, seed=11)


def _planted(pool: CTRDataset) -> tuple[CTRDataset, int]:
    """The pool with one more user whose demographics no one else has and whose items
    everyone shares (so items alone cannot single them out)."""
    s = pool.schema
    x = np.array(pool.x)
    new_user = int(pool.user.max()) + 1
    rows = np.arange(20)  # copy 20 rows of other users (their items)
    px = x[rows].copy()
    for name, value in (("age", 7), ("gender", 2), ("region", 10)):
        x[:, s.column_slice(name).start][x[:, s.column_slice(name).start] == value] = 1
        px[:, s.column_slice(name).start] = value
    planted = CTRDataset(
        s,
        np.concatenate([x, px]),
        np.concatenate([pool.y, pool.y[rows]]),
        np.concatenate([pool.user, np.full(rows.size, new_user)]),
        np.concatenate([pool.timestamp, pool.timestamp[rows]]),
    )
    return planted, new_user


def test_planted_pool_user_is_reidentified_at_high_epsilon_only(pool):
    """The planted user's samples are re-identified when the user fields barely move
    (ε = 50 per sample); at ε = 0.1 the guess no longer depends on whose sample it
    is: the planted user is named as often for the look-alike samples of the user its
    items were copied from as for its own."""
    data, user = _planted(pool)
    users = np.asarray(data.user)
    own = np.flatnonzero(users == user)
    twins = np.arange(20)  # the rows the planted user's items were copied from
    atk = ReidentificationAttack(data, aux="fields+items")
    plain = atk.run(own, privatizer=None, generator=np.random.default_rng(0))
    assert plain.rate.value == 1.0
    assert plain.baseline < 0.6  # items alone leave several candidates

    def named(rows: np.ndarray, eps: float, seed: int) -> float:
        priv = SamplePrivatizer(data.schema, eps)
        gen = np.random.default_rng(seed)
        hits = 0
        for _ in range(10):
            x = priv.randomize(np.asarray(data.x)[rows], gen)
            col = priv.column_epsilon
            hits += int((atk.guess(x, column_epsilon=col, generator=gen)[0] == user).sum())
        return hits / (10 * rows.size)

    assert named(own, 50.0, 1) == 1.0 and named(twins, 50.0, 2) == 0.0
    assert abs(named(own, 0.1, 3) - named(twins, 0.1, 4)) < 0.15


def test_sweep_falls_with_epsilon(pool):
    res = reidentification_sweep(pool, epsilons=[None, 8.0, 0.5], samples=300, aux=["fields"])
    rates = [r.rate.value for r in res]
    assert rates[0] > rates[1] > rates[2] - 0.02
    assert res[2].rate.high < 0.1


def _view_with_batches(pool: CTRDataset, device: int, rows: np.ndarray, *, privatize: bool):
    x = np.array(pool.x)[rows]
    ids = rows.astype(np.int64)
    if privatize:
        x = SamplePrivatizer(pool.schema, 1.0).randomize(x, np.random.default_rng(0))
        ids = np.arange(rows.size, dtype=np.int64) + 10_000  # handles
    blob = encode_payload(SampleBatch(ids, x, np.asarray(pool.y)[rows]))
    reply = ReplyMessage(
        sender=-1, receiver=device, round=1, topic=BATCH_TOPIC, arrays={}, blob=blob
    )
    return ServerView(None, {}, {}, {}, {}, False, replies=(reply,))  # type: ignore[arg-type]


@pytest.mark.parametrize("privatize", [False, True])
def test_neighbourhood_read_from_batch_fetches(pool, privatize):
    """A device served the samples of pool users who all share its gender: the
    server reads the neighbourhood off the batches and votes the gender right."""
    s = pool.schema
    gcol = s.column_slice("gender").start
    g = np.asarray(pool.x)[:, gcol]
    users = np.asarray(pool.user)
    same = sorted({int(u) for u in users[g == 2]})[:5]
    rows = np.flatnonzero(np.isin(users, same))
    view = _view_with_batches(pool, 7, rows, privatize=privatize)
    served = served_rows(view, pool, privatized=privatize)
    atk = NeighbourhoodAttack(pool, k=5)
    assert set(atk.neighbours(served[7])) == set(same)
    device = pool.subset(np.flatnonzero(users == same[0]))
    r = atk.run(view, {7: device}, ["gender"], privatized=privatize)
    assert r.attributes["gender"][0].value == 1.0
    assert r.devices == 1


def test_bad_arguments(pool):
    with pytest.raises(ValueError, match="aux"):
        ReidentificationAttack(pool, aux="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k"):
        NeighbourhoodAttack(pool, k=0)


@pytest.mark.slow
def test_real_coda_runs_through_the_grid(tmp_path):
    """CoDA settings of the synthetic grid: re-identification falls with ε per sample."""
    from dataclasses import replace
    from pathlib import Path

    from attacks import attack
    from attacks.config import load_attack_config

    root = Path(__file__).resolve().parents[2]
    base, options = load_attack_config(root / "benchmarks" / "attack_lcft_coda_synthetic.toml")
    options = replace(
        options,
        settings=tuple(s for s in options.settings if s.name.startswith("coda")),
        attacks=("coda",),
    )
    report = attack((base, options), tmp_path, progress=False, log=lambda s: None)
    plain = report.entry("coda_plain", "coda:reidentify").value
    e1 = report.entry("coda_private_e1", "coda:reidentify").value
    assert plain.value > e1.value
    assert report.entry("coda_plain", "coda:items").applicable
