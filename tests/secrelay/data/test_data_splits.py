"""Regulation, device train/test, support/query, per-user and global splits; filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidParameterError
from secrelay.data import (
    CTRDataset,
    Field,
    Schema,
    device_train_test_split,
    filter_min_rows_per_user,
    global_temporal_split,
    make_synthetic,
    partition_by_user,
    regulation_split,
    shuffle_user_id,
    support_query_split,
)
from secrelay.data.splits import RegulationMode


def tag_rows(ds: CTRDataset) -> CTRDataset:
    """``ds`` plus a context field ``rid`` holding 1 + the row number, to track rows."""
    n = len(ds)
    schema = Schema(
        (*ds.schema.fields, Field("rid", "context", n + 1)),
        user_id_field=ds.schema.user_id_field,
        label=ds.schema.label,
        timestamp=ds.schema.timestamp,
        item_id_field=ds.schema.item_id_field,
    )
    x = np.column_stack([ds.x, np.arange(1, n + 1)])
    return CTRDataset(schema, x, ds.y, ds.user, ds.timestamp, ds.reports)


def tiny(users: list[int], times: list[int]) -> CTRDataset:
    """A tagged data set with the given per-row users (codes >= 1) and timestamps."""
    n = len(users)
    u = np.asarray(users, dtype=np.int64)
    schema = Schema(
        (Field("user_id", "user", int(u.max()) + 1), Field("item_id", "item", 3)),
        user_id_field="user_id",
    )
    x = np.column_stack([u, (np.arange(n) % 2) + 1])
    y = (np.arange(n) % 3 == 0).astype(np.float32)
    return tag_rows(CTRDataset(schema, x, y, u, np.asarray(times, dtype=np.int64)))


def rids(ds: CTRDataset) -> np.ndarray:
    return ds.column("rid")


@pytest.fixture(scope="module")
def synth() -> CTRDataset:
    return tag_rows(make_synthetic(n_users=300, samples_per_user=40, seed=11))


# --- regulation split ---------------------------------------------------------------------------


def test_random_regulation_split_partitions_rows(synth: CTRDataset) -> None:
    s = regulation_split(synth, mode="random", alpha=0.05, seed=1)
    assert len(s.cloud) == round(0.05 * len(synth))
    a, b = rids(s.cloud), rids(s.device)
    assert np.intersect1d(a, b).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(1, len(synth) + 1))
    assert s.summary() == {
        "cloud_rows": len(s.cloud),
        "cloud_users": s.cloud.n_users,
        "device_rows": len(s.device),
        "device_users": s.device.n_users,
    }
    assert "cloud 600 rows" in str(s) and "user-id column shuffled" in str(s)
    rc, rd = s.cloud.reports[-1], s.device.reports[-1]
    assert rc.rows_removed == len(s.device) and rd.rows_removed == len(s.cloud)
    assert rc.users_removed == synth.n_users - s.cloud.n_users
    assert rd.users_removed == synth.n_users - s.device.n_users


def test_random_split_shuffles_only_the_user_id_column(synth: CTRDataset) -> None:
    s = regulation_split(synth, mode="random", alpha=0.05, seed=2)
    perm = s.user_id_permutation
    assert perm is not None
    old, new = perm[:, 0], perm[:, 1]
    # a permutation of the device side's user-id codes, with no fixed point
    np.testing.assert_array_equal(np.sort(new), old)
    np.testing.assert_array_equal(
        old, np.unique(synth.subset(rids(s.device) - 1).column("user_id"))
    )
    assert (old != new).all()
    orig = synth.subset(rids(s.device) - 1)
    mapping = dict(zip(old.tolist(), new.tolist()))
    expect = np.array([mapping[v] for v in orig.column("user_id").tolist()])
    np.testing.assert_array_equal(s.device.column("user_id"), expect)
    # identity, labels, times and every other column unchanged
    np.testing.assert_array_equal(s.device.user, orig.user)
    np.testing.assert_array_equal(s.device.y, orig.y)
    np.testing.assert_array_equal(s.device.timestamp, orig.timestamp)
    col = synth.schema.column_slice("user_id").start
    np.testing.assert_array_equal(np.delete(s.device.x, col, 1), np.delete(orig.x, col, 1))
    # cloud rows untouched
    np.testing.assert_array_equal(s.cloud.x, synth.subset(rids(s.cloud) - 1).x)


def test_random_split_is_deterministic_by_seed(synth: CTRDataset) -> None:
    a = regulation_split(synth, seed=5)
    b = regulation_split(synth, seed=5)
    c = regulation_split(synth, seed=6)
    np.testing.assert_array_equal(a.device.x, b.device.x)
    assert not np.array_equal(rids(a.cloud), rids(c.cloud))


def test_temporal_regulation_split(synth: CTRDataset) -> None:
    s = regulation_split(synth, mode="temporal", alpha=0.05)
    assert s.cloud.timestamp.max() < s.device.timestamp.min()
    assert len(s.cloud) >= math.ceil(0.05 * len(synth))
    assert len(s.cloud) == (synth.timestamp <= s.cloud.timestamp.max()).sum()
    assert len(s.cloud) + len(s.device) == len(synth)
    assert s.user_id_permutation is None
    np.testing.assert_array_equal(s.device.x, synth.subset(rids(s.device) - 1).x)
    shuffled = regulation_split(synth, mode="temporal", alpha=0.05, shuffle_device_user_id=True)
    assert shuffled.user_id_permutation is not None
    plain = regulation_split(synth, mode="random", seed=0, shuffle_device_user_id=False)
    assert plain.user_id_permutation is None


def test_temporal_split_with_ties_keeps_cloud_strictly_earlier() -> None:
    ds = tiny([1, 2, 1, 2, 3, 3], [5, 5, 6, 5, 7, 8])
    s = regulation_split(ds, mode="temporal", alpha=0.4)  # 3rd earliest time is 5, tied
    assert rids(s.cloud).tolist() == [1, 2, 4]
    assert s.cloud.timestamp.max() < s.device.timestamp.min()
    with pytest.raises(InvalidParameterError, match="no device"):
        regulation_split(tiny([1, 2], [3, 3]), mode="temporal", alpha=0.5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"alpha": 0.0}, "`alpha`"),
        ({"alpha": 1.0}, "`alpha`"),
        ({"alpha": "x"}, "`alpha`"),
        ({"mode": "stratified"}, "`mode`"),
        ({"seed": -3}, "`seed`"),
    ],
)
def test_regulation_split_rejects_bad_arguments(
    synth: CTRDataset, kw: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        regulation_split(synth, **kw)  # type: ignore[arg-type]


def test_shuffle_single_user_is_identity() -> None:
    ds = tiny([4, 4, 4], [1, 2, 3])
    out, perm = shuffle_user_id(ds, seed=0)
    np.testing.assert_array_equal(out.x, ds.x)
    assert perm.tolist() == [[4, 4]]


# --- device train/test ------------------------------------------------------------------------


def check_device_split(ds: CTRDataset, train: CTRDataset, test: CTRDataset) -> None:
    a, b = rids(train), rids(test)
    assert np.intersect1d(a, b).size == 0
    assert np.unique(a).size == a.size and np.unique(b).size == b.size
    tr_groups, te_groups = train.by_user(), test.by_user()
    for u, te_idx in te_groups.items():
        assert u in tr_groups, "every test user has train rows"
        tr_rid, te_rid = rids(train)[tr_groups[u]], rids(test)[te_idx]
        # no train row later than a test row; at equal times the earlier row is train
        last_train = max(zip(train.timestamp[tr_groups[u]].tolist(), tr_rid.tolist()))
        first_test = min(zip(test.timestamp[te_idx].tolist(), te_rid.tolist()))
        assert last_train < first_test


def test_device_split_per_user_time_order(synth: CTRDataset) -> None:
    sp = device_train_test_split(synth, train_fraction=0.8)
    check_device_split(synth, sp.train, sp.test)
    assert len(sp.train) == 300 * 32 and len(sp.test) == 300 * 8
    assert sp.users_too_few.size == 0 and sp.rows_too_few == 0
    assert sp.train.reports[-1].rows_removed == len(sp.test)


def test_device_split_small_users_drop_and_train() -> None:
    ds = tiny([1, 1, 1, 1, 1, 2, 3, 3], [1, 2, 3, 4, 5, 6, 7, 7])
    drop = device_train_test_split(ds, min_rows=2)
    assert drop.users_too_few.tolist() == [2] and drop.rows_too_few == 1
    assert rids(drop.train).tolist() == [1, 2, 3, 4, 7]
    assert rids(drop.test).tolist() == [5, 8]
    assert drop.train.reports[-1].rows_removed == 3  # 2 test rows + 1 dropped
    assert drop.test.reports[-1].rows_removed == 6
    assert drop.test.reports[-1].users_removed == 1
    assert "1 users with < 2 rows (1 rows): drop" in drop.train.reports[-1].reason
    keep = device_train_test_split(ds, min_rows=2, too_few="train")
    assert rids(keep.train).tolist() == [1, 2, 3, 4, 6, 7]
    big = device_train_test_split(ds, min_rows=3)
    assert big.users_too_few.tolist() == [2, 3] and big.rows_too_few == 3
    with pytest.raises(InvalidParameterError, match="`min_rows`"):
        device_train_test_split(ds, min_rows=1)
    with pytest.raises(InvalidParameterError, match="`too_few`"):
        device_train_test_split(ds, too_few="test")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="`train_fraction`"):
        device_train_test_split(ds, train_fraction=1.0)


# --- hypothesis invariants ---------------------------------------------------------------------

rows_strategy = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 8)), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, frac=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_split_invariants_hypothesis(rows: list[tuple[int, int]], frac: float, seed: int) -> None:
    users = [r[0] for r in rows]
    times = [r[1] for r in rows]
    ds = tiny(users, times)
    n = len(ds)

    sp = device_train_test_split(ds, train_fraction=frac)
    check_device_split(ds, sp.train, sp.test)
    kept = np.concatenate([rids(sp.train), rids(sp.test)])
    assert kept.size + sp.rows_too_few == n
    counts = np.bincount(ds.user)
    assert sp.users_too_few.tolist() == [u for u in range(counts.size) if counts[u] == 1]

    sq = support_query_split(ds, support_fraction=frac, seed=seed)
    a, b = rids(sq.support), rids(sq.query)
    assert np.intersect1d(a, b).size == 0 and a.size + b.size + sq.rows_too_few == n
    assert set(sq.support.users().tolist()) == set(sq.query.users().tolist())

    modes: tuple[RegulationMode, ...] = ("random", "temporal")
    for mode in modes:
        try:
            reg = regulation_split(ds, mode=mode, alpha=frac, seed=seed)
        except InvalidParameterError:
            continue  # a side would be empty (tiny n or all-equal times)
        c, d = rids(reg.cloud), rids(reg.device)
        assert np.intersect1d(c, d).size == 0 and c.size + d.size == n
        np.testing.assert_array_equal(reg.device.user, ds.user[d - 1])
        if mode == "temporal":
            assert reg.cloud.timestamp.max() < reg.device.timestamp.min()
        else:
            assert c.size == round(frac * n)
            perm = reg.user_id_permutation
            assert perm is not None
            np.testing.assert_array_equal(np.sort(perm[:, 1]), perm[:, 0])

    g = global_temporal_split(ds, train_fraction=frac)
    assert len(g.train) + len(g.test) == n
    last = max(zip(g.train.timestamp.tolist(), rids(g.train).tolist()))
    first = min(zip(g.test.timestamp.tolist(), rids(g.test).tolist()))
    assert last < first


# --- support/query, partitions, global split, filters -----------------------------------------


def test_support_query_split(synth: CTRDataset) -> None:
    sq = support_query_split(synth, support_fraction=0.5, seed=3)
    assert len(sq.support) == len(sq.query) == len(synth) // 2
    again = support_query_split(synth, support_fraction=0.5, seed=3)
    np.testing.assert_array_equal(rids(sq.support), rids(again.support))
    other = support_query_split(synth, support_fraction=0.5, seed=4)
    assert not np.array_equal(rids(sq.support), rids(other.support))
    ds = tiny([1, 1, 1, 2], [1, 2, 3, 4])
    small = support_query_split(ds, seed=0)
    assert small.users_too_few.tolist() == [2] and small.rows_too_few == 1
    assert small.query.reports[-1].users_removed == 1


def test_partition_by_user(synth: CTRDataset) -> None:
    parts = partition_by_user(synth)
    assert sorted(parts) == synth.users().tolist()
    assert sum(len(p) for p in parts.values()) == len(synth)
    for u, p in parts.items():
        assert (p.user == u).all()
        assert (np.diff(p.timestamp) >= 0).all()


def test_global_temporal_split(synth: CTRDataset) -> None:
    g = global_temporal_split(synth, train_fraction=0.8)
    assert len(g.train) == int(0.8 * len(synth))
    assert g.train.timestamp.max() <= g.test.timestamp.min()
    with pytest.raises(InvalidParameterError, match="needs >= 2 rows"):
        global_temporal_split(synth.subset(np.array([0])))


def test_filter_reports_count_exactly() -> None:
    ds = tiny([1, 1, 1, 2, 3, 3, 4], [1, 2, 3, 4, 5, 6, 7])
    out = filter_min_rows_per_user(ds, 2)
    assert rids(out).tolist() == [1, 2, 3, 5, 6]
    rep = out.reports[-1]
    assert (rep.rows_removed, rep.users_removed) == (2, 2)
    assert (
        str(rep) == "min_rows_per_user: removed 2 rows and 2 users (users with fewer than 2 rows)"
    )
    out3 = filter_min_rows_per_user(ds, 3)
    assert (out3.reports[-1].rows_removed, out3.reports[-1].users_removed) == (4, 3)
    with pytest.raises(InvalidParameterError, match="min_rows_per_user"):
        filter_min_rows_per_user(ds, 0)


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.movielens
def test_ml100k_protocol_splits(ml100k: CTRDataset) -> None:
    reg = regulation_split(ml100k, mode="random", alpha=0.05, seed=0)
    assert len(reg.cloud) == 5000 and len(reg.device) == 95_000
    assert reg.device.n_users == 943
    sp = device_train_test_split(reg.device)
    assert sp.users_too_few.size == 0
    assert len(sp.train) + len(sp.test) == 95_000
    tmp = regulation_split(ml100k, mode="temporal", alpha=0.05)
    assert tmp.cloud.timestamp.max() < tmp.device.timestamp.min()
