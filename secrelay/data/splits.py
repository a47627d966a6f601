"""Regulation, device train/test, support/query, per-user and global temporal splits.

These implement the evaluation protocol of DESIGN.md. Every split partitions the
rows it keeps (no row lands on both sides) and reports — in the returned object
and as :class:`FilterReport` entries on each side's ``reports`` — how many rows
and users each side received or lost.

"Time order" within a user is the order of :meth:`CTRDataset.by_user`: by
timestamp, ties broken by row position. Each side keeps the rows in their
original row order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data.dataset import CTRDataset, FilterReport

__all__ = [
    "DeviceSplit",
    "RegulationMode",
    "RegulationSplit",
    "SupportQuerySplit",
    "TooFewRowsPolicy",
    "device_train_test_split",
    "global_temporal_split",
    "partition_by_user",
    "regulation_split",
    "shuffle_user_id",
    "support_query_split",
]

RegulationMode = Literal["random", "temporal"]
TooFewRowsPolicy = Literal["drop", "train"]


def _fraction(name: str, value: object, *, closed_low: bool = False) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"`{name}` must be a number in (0, 1); got {value!r}") from None
    ok = (v >= 0.0 if closed_low else v > 0.0) and v < 1.0
    if not ok:
        lo = "[0" if closed_low else "(0"
        raise InvalidParameterError(f"`{name}` must be in {lo}, 1); got {value!r}")
    return v


def _seed(seed: object) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidParameterError(
            f"`seed` must be an int >= 0 or a numpy Generator; got {type(seed).__name__}"
        )
    return np.random.default_rng(int(seed))


def _side(ds: CTRDataset, rows: np.ndarray, step: str, note: str = "") -> CTRDataset:
    """Rows ``rows`` (sorted) of ``ds`` with a report of what the side did not get."""
    rows = np.sort(rows)
    out = ds.subset(rows)
    return out.with_report(
        FilterReport(
            step,
            rows_removed=len(ds) - len(out),
            users_removed=ds.n_users - out.n_users,
            reason=f"kept {len(out)} rows of {out.n_users} users{note}",
        )
    )


# --- regulation split -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RegulationSplit:
    """Pre-regulation cloud data and post-regulation device data.

    Attributes
    ----------
    cloud, device:
        The two sides; together they hold every row of the input exactly once.
    mode, alpha:
        How the split was made.
    user_id_permutation:
        For a shuffled split, ``(k, 2)`` array of (original code, code written on
        the device rows) for every user-id code present on the device side;
        ``None`` when the user-id column was left as is.
    """

    cloud: CTRDataset
    device: CTRDataset
    mode: RegulationMode
    alpha: float
    user_id_permutation: np.ndarray | None

    def summary(self) -> dict[str, int]:
        """Rows and users on each side."""
        return {
            "cloud_rows": len(self.cloud),
            "cloud_users": self.cloud.n_users,
            "device_rows": len(self.device),
            "device_users": self.device.n_users,
        }

    def __str__(self) -> str:
        s = self.summary()
        return (
            f"regulation split ({self.mode}, alpha={self.alpha:g}): cloud {s['cloud_rows']} rows "
            f"/ {s['cloud_users']} users, device {s['device_rows']} rows / "
            f"{s['device_users']} users"
            + ("; user-id column shuffled" if self.user_id_permutation is not None else "")
        )


def shuffle_user_id(
    ds: CTRDataset, *, seed: int | np.random.Generator
) -> tuple[CTRDataset, np.ndarray]:
    """Permute the user-id *feature* values across users.

    The distinct codes ``v_1 < … < v_k`` found in the user-id column are mapped by
    a uniformly random **derangement** π (no code maps to itself when k >= 2): every
    row whose user-id column holds ``v`` gets ``π(v)``, so all rows of a user keep
    one (now another user's) id. Only the user-id column changes: the other user
    fields, the items, labels, timestamps and the device identity
    :attr:`CTRDataset.user` are untouched. This simulates a preference change, as
    in RelayRec's random regulation split.

    Returns
    -------
    (CTRDataset, numpy.ndarray)
        The shuffled data set and the ``(k, 2)`` mapping (original, new).
    """
    rng = _seed(seed)
    col = ds.schema.column_slice(ds.schema.user_id_field).start
    codes = np.unique(ds.x[:, col])
    k = codes.size
    perm = np.arange(k)
    if k >= 2:
        # Rejection sampling gives a uniform derangement; about e tries on average.
        while True:
            perm = rng.permutation(k)
            if not (perm == np.arange(k)).any():
                break
    new_codes = codes[perm]
    x = ds.x.copy()
    x[:, col] = new_codes[np.searchsorted(codes, ds.x[:, col])]
    return ds.with_x(x), np.column_stack([codes, new_codes])


def regulation_split(
    ds: CTRDataset,
    *,
    mode: RegulationMode = "random",
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    shuffle_device_user_id: bool | None = None,
) -> RegulationSplit:
    """Split into pre-regulation cloud data and post-regulation device data.

    Parameters
    ----------
    ds:
        The whole data set.
    mode:
        ``"random"`` (RelayRec, paper-faithful): ``round(alpha · n)`` rows drawn
        uniformly without replacement are cloud data, the rest device data.
        ``"temporal"``: with ``t_α`` the time of the ``ceil(alpha · n)``-th
        earliest row (the α time quantile), cloud data are the rows with
        ``timestamp <= t_α`` and device data the rest. Every cloud row is strictly
        earlier than every device row, rows sharing a timestamp stay on one side,
        and the cloud holds ``ceil(alpha · n)`` rows, more when rows tie at ``t_α``.
    alpha:
        Cloud fraction, in (0, 1); paper default 5 %.
    seed:
        Seed (or Generator) of the sample draw and of the user-id shuffle.
    shuffle_device_user_id:
        Apply :func:`shuffle_user_id` to the device side. ``None`` (default) means
        ``True`` for ``"random"`` and ``False`` for ``"temporal"``.

    Returns
    -------
    RegulationSplit
        Both sides, each with a :class:`FilterReport` of what it did not get.

    Raises
    ------
    InvalidParameterError
        Bad ``mode`` / ``alpha``, or a side would be empty.
    """
    if mode not in ("random", "temporal"):
        raise InvalidParameterError(f"`mode` must be 'random' or 'temporal'; got {mode!r}")
    alpha = _fraction("alpha", alpha)
    rng = _seed(seed)
    n = len(ds)
    if mode == "random":
        k = round(alpha * n)
        cloud_rows = rng.choice(n, size=k, replace=False) if k else np.zeros(0, np.int64)
        is_cloud = np.zeros(n, dtype=bool)
        is_cloud[cloud_rows] = True
    else:
        if n == 0:
            raise InvalidParameterError("regulation split of an empty data set")
        k = math.ceil(alpha * n)
        order = np.lexsort((np.arange(n), ds.timestamp))
        t_alpha = ds.timestamp[order[k - 1]]  # k >= 1 since alpha > 0 and n >= 1
        is_cloud = ds.timestamp <= t_alpha
    if not is_cloud.any() or is_cloud.all():
        raise InvalidParameterError(
            f"regulation split ({mode}, alpha={alpha:g}) of {n} rows leaves "
            f"{'no cloud' if not is_cloud.any() else 'no device'} rows; change `alpha`"
            + (" (or the timestamps are all equal)" if mode == "temporal" else "")
        )
    step = f"regulation_split[{mode}, alpha={alpha:g}]"
    cloud = _side(ds, np.flatnonzero(is_cloud), f"{step} cloud")
    device = _side(ds, np.flatnonzero(~is_cloud), f"{step} device")
    shuffle = (mode == "random") if shuffle_device_user_id is None else bool(shuffle_device_user_id)
    perm = None
    if shuffle:
        device, perm = shuffle_user_id(device, seed=rng)
    return RegulationSplit(cloud, device, mode, alpha, perm)


# --- per-user train/test and support/query --------------------------------------------------


@dataclass(frozen=True, eq=False)
class DeviceSplit:
    """A per-user (or global) train/test split.

    Attributes
    ----------
    train, test:
        Disjoint row sets of the input.
    users_too_few:
        Users with fewer rows than ``min_rows`` (sorted), handled per the policy.
    rows_too_few:
        Their rows.
    """

    train: CTRDataset
    test: CTRDataset
    users_too_few: np.ndarray
    rows_too_few: int


def _too_few(
    ds: CTRDataset, min_rows: int, policy: TooFewRowsPolicy
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 2:
        raise InvalidParameterError(f"`min_rows` must be an int >= 2; got {min_rows!r}")
    if policy not in ("drop", "train"):
        raise InvalidParameterError(f"`too_few` must be 'drop' or 'train'; got {policy!r}")
    groups = ds.by_user()
    small = {u: r for u, r in groups.items() if len(r) < min_rows}
    big = {u: r for u, r in groups.items() if len(r) >= min_rows}
    return big, small


def device_train_test_split(
    ds: CTRDataset,
    *,
    train_fraction: float = 0.8,
    min_rows: int = 2,
    too_few: TooFewRowsPolicy = "drop",
) -> DeviceSplit:
    """Per user: train on the earlier rows, test on the later ones.

    A user with ``m >= min_rows`` rows puts its first
    ``clip(floor(train_fraction · m), 1, m - 1)`` rows in time order in train and
    the rest in test, so each such user has at least one row on each side and no
    train row is later than any of its test rows (equal timestamps are split by
    row position).

    Parameters
    ----------
    ds:
        Device data.
    train_fraction:
        In (0, 1); 0.8 in the evaluation protocol.
    min_rows:
        Users with fewer rows (>= 2) are handled by ``too_few``.
    too_few:
        ``"drop"``: their rows go nowhere (reported as removed from both sides);
        ``"train"``: all their rows go to train.

    Returns
    -------
    DeviceSplit
        With a :class:`FilterReport` on each side.
    """
    frac = _fraction("train_fraction", train_fraction)
    big, small = _too_few(ds, min_rows, too_few)
    train_parts, test_parts = [], []
    for rows in big.values():
        m = len(rows)
        k = min(max(math.floor(frac * m + 1e-9), 1), m - 1)
        train_parts.append(rows[:k])
        test_parts.append(rows[k:])
    if too_few == "train":
        train_parts.extend(small.values())
    return _two_sides(
        ds,
        train_parts,
        test_parts,
        small,
        too_few,
        f"device_train_test_split[train_fraction={frac:g}]",
        ("train", "test"),
        min_rows,
    )


def _two_sides(
    ds: CTRDataset,
    a_parts: list[np.ndarray],
    b_parts: list[np.ndarray],
    small: dict[int, np.ndarray],
    policy: TooFewRowsPolicy,
    step: str,
    names: tuple[str, str],
    min_rows: int,
) -> DeviceSplit:
    empty = np.zeros(0, dtype=np.int64)
    a_rows = np.concatenate(a_parts) if a_parts else empty
    b_rows = np.concatenate(b_parts) if b_parts else empty
    users_small = np.array(sorted(small), dtype=np.int64)
    rows_small = int(sum(len(r) for r in small.values()))
    note = f"; {users_small.size} users with < {min_rows} rows ({rows_small} rows): {policy}"
    a = _side(ds, a_rows, f"{step} {names[0]}", note)
    b = _side(ds, b_rows, f"{step} {names[1]}", note)
    return DeviceSplit(a, b, users_small, rows_small)


@dataclass(frozen=True, eq=False)
class SupportQuerySplit:
    """Per-user support and query sets for meta-learning (MAML inner / outer step).

    Attributes
    ----------
    support, query:
        Disjoint row sets of the input; every kept user is on both sides.
    users_too_few:
        Users with fewer than ``min_rows`` rows (dropped), sorted.
    rows_too_few:
        Their rows.
    """

    support: CTRDataset
    query: CTRDataset
    users_too_few: np.ndarray
    rows_too_few: int


def support_query_split(
    ds: CTRDataset,
    *,
    support_fraction: float = 0.5,
    seed: int | np.random.Generator = 0,
    min_rows: int = 2,
) -> SupportQuerySplit:
    """Split each user's rows at random into a support and a query set.

    A user with ``m >= min_rows`` rows gets ``clip(round(support_fraction · m), 1,
    m - 1)`` random rows in support and the rest in query; users with fewer rows
    are dropped and reported.

    Parameters
    ----------
    ds:
        Data of the users to meta-learn on (e.g. one cluster's cloud data).
    support_fraction:
        In (0, 1).
    seed:
        Seed or Generator of the per-user draws.
    min_rows:
        Users with fewer rows (>= 2) are dropped.
    """
    frac = _fraction("support_fraction", support_fraction)
    rng = _seed(seed)
    big, small = _too_few(ds, min_rows, "drop")
    sup, qry = [], []
    for rows in big.values():
        m = len(rows)
        k = min(max(round(frac * m), 1), m - 1)
        perm = rng.permutation(rows)
        sup.append(perm[:k])
        qry.append(perm[k:])
    s = _two_sides(
        ds,
        sup,
        qry,
        small,
        "drop",
        f"support_query_split[support_fraction={frac:g}]",
        ("support", "query"),
        min_rows,
    )
    return SupportQuerySplit(s.train, s.test, s.users_too_few, s.rows_too_few)


# --- per-user partition and global temporal split -------------------------------------------


def partition_by_user(ds: CTRDataset) -> dict[int, CTRDataset]:
    """One data set per device identity (rows in time order), for federated runs.

    A thin wrapper of :meth:`CTRDataset.split_by_user`.
    """
    return ds.split_by_user()


def global_temporal_split(ds: CTRDataset, *, train_fraction: float = 0.8) -> DeviceSplit:
    """Time-ordered split of all rows: the earliest ``floor(train_fraction · n)`` train.

    Rows are ordered by timestamp, ties by row position. Used for the
    centralized-model acceptance figure (DeepFM pooled AUC ≈ 0.70 on ML-100K).
    ``users_too_few`` is empty: no user is treated specially.
    """
    frac = _fraction("train_fraction", train_fraction)
    n = len(ds)
    if n < 2:
        raise InvalidParameterError(f"global_temporal_split needs >= 2 rows; got {n}")
    order = np.lexsort((np.arange(n), ds.timestamp))
    k = min(max(math.floor(frac * n + 1e-9), 1), n - 1)
    step = f"global_temporal_split[train_fraction={frac:g}]"
    train = _side(ds, order[:k], f"{step} train")
    test = _side(ds, order[k:], f"{step} test")
    return DeviceSplit(train, test, np.zeros(0, dtype=np.int64), 0)
