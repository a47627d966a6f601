"""MovieLens-100K loader.

MovieLens-100K (GroupLens, F. Maxwell Harper and Joseph A. Konstan, 2015) may not
be redistributed: secrelay never ships it. Point :func:`load_movielens100k` at the
directory that holds ``u.data``, ``u.user`` and ``u.item``.

Fields produced (in column order; vocabulary sizes for the official files in
parentheses, index 0 reserved for padding / unknown):

========== ====== ===========================================================
field      role   coding
========== ====== ===========================================================
user_id    user   raw user id, sorted numerically (944)
age        user   bucket <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+ (8)
gender     user   ``F``, ``M`` (3)
occupation user   sorted occupation names (22)
zip        user   first ``zip_prefix_len`` characters of the zip code,
                  upper-cased; default 1 = the US ZIP national area
                  (0-9), non-US codes keep their first letter (20)
item_id    item   raw item id, sorted numerically (1683)
genres     item   multi-valued; the 19 genre flags in file order (including
                  ``unknown``), ``max_len`` = most genres of any movie (20, 6)
year       item   release decade (1920 → 1920s, ...); no date → 0 (9)
========== ====== ===========================================================

Label ``click = rating >= 4`` (global CTR 0.5536 on the official files); the
timestamp is the rating's Unix time. The device identity
(:attr:`CTRDataset.user`) is the user's ``user_id`` code, which equals the raw
user id on the official files (ids 1..943).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data._io import LoadResult, PathLike, Vocabulary, data_error, read_lines
from secrelay.data.dataset import CTRDataset, FilterReport
from secrelay.data.filters import apply_min_rows
from secrelay.data.schema import Field, Schema

__all__ = [
    "AGE_BUCKETS",
    "ML100K_ENV_VAR",
    "ML100K_GENRES",
    "load_movielens100k",
    "read_movielens100k",
]

#: Environment variable that may point at the MovieLens-100K directory.
ML100K_ENV_VAR = "SECRELAY_ML100K"

#: Age buckets as (label, lowest age, highest age) — the MovieLens-1M grouping.
AGE_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("<18", 0, 17),
    ("18-24", 18, 24),
    ("25-34", 25, 34),
    ("35-44", 35, 44),
    ("45-49", 45, 49),
    ("50-55", 50, 55),
    ("56+", 56, 10_000),
)

#: The 19 genre flags of ``u.item``, in file order (as in ``u.genre``).
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _age_bucket(age: int) -> str:
    for label, lo, hi in AGE_BUCKETS:
        if lo <= age <= hi:
            return label
    raise ValueError(f"age {age} is negative")


def _parse_int(text: str, path: Path, line: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise data_error(path, line, f"{what} {text.strip()!r} is not an integer") from None


def _release_decade(date: str, path: Path, line: int) -> int | None:
    """Decade of a ``dd-Mon-yyyy`` release date; ``None`` for an empty date."""
    date = date.strip()
    if not date:
        return None
    parts = date.split("-")
    if len(parts) != 3 or parts[1].lower() not in _MONTHS or not parts[2].isdigit():
        raise data_error(path, line, f"release date {date!r} is not of the form dd-Mon-yyyy")
    return int(parts[2]) // 10 * 10


def _read_users(path: Path, zip_prefix_len: int) -> dict[int, tuple[str, str, str, str]]:
    users: dict[int, tuple[str, str, str, str]] = {}
    for i, raw in enumerate(read_lines(path, encoding="latin-1", what="u.user"), start=1):
        if not raw.strip():
            continue
        parts = raw.split("|")
        if len(parts) != 5:
            raise data_error(
                path,
                i,
                f"expected 5 '|'-separated columns (id|age|gender|occupation|zip); "
                f"got {len(parts)}",
            )
        uid = _parse_int(parts[0], path, i, "user id")
        if uid in users:
            raise data_error(path, i, f"duplicate user id {uid}")
        age = _parse_int(parts[1], path, i, "age")
        if age < 0:
            raise data_error(path, i, f"age {age} is negative")
        gender = parts[2].strip()
        if not gender:
            raise data_error(path, i, "empty gender")
        zip_prefix = parts[4].strip()[:zip_prefix_len].upper()
        users[uid] = (_age_bucket(age), gender, parts[3].strip(), zip_prefix)
    return users


def _read_items(path: Path) -> dict[int, tuple[tuple[int, ...], int | None]]:
    items: dict[int, tuple[tuple[int, ...], int | None]] = {}
    n_genres = len(ML100K_GENRES)
    for i, raw in enumerate(read_lines(path, encoding="latin-1", what="u.item"), start=1):
        if not raw.strip():
            continue
        parts = raw.split("|")
        if len(parts) != 5 + n_genres:
            raise data_error(
                path,
                i,
                f"expected {5 + n_genres} '|'-separated columns (id|title|release date|"
                f"video date|url|{n_genres} genre flags); got {len(parts)}",
            )
        iid = _parse_int(parts[0], path, i, "item id")
        if iid in items:
            raise data_error(path, i, f"duplicate item id {iid}")
        flags = parts[5:]
        if any(f.strip() not in ("0", "1") for f in flags):
            bad = next(f for f in flags if f.strip() not in ("0", "1"))
            raise data_error(path, i, f"genre flag {bad.strip()!r} is not 0 or 1")
        genres = tuple(g for g, f in enumerate(flags) if f.strip() == "1")
        items[iid] = (genres, _release_decade(parts[2], path, i))
    return items


def _read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4)`` int64 array of user, item, rating, timestamp, and each row's 1-based line."""
    lines = read_lines(path, encoding="latin-1", what="u.data")
    out = np.empty((len(lines), 4), dtype=np.int64)
    line_no = np.empty(len(lines), dtype=np.int64)
    n = 0
    names = ("user id", "item id", "rating", "timestamp")
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        parts = raw.split("\t")
        if len(parts) != 4:
            raise data_error(
                path,
                i,
                f"expected 4 tab-separated columns (user, item, rating, timestamp); "
                f"got {len(parts)}",
            )
        try:
            out[n] = [int(p) for p in parts]
        except ValueError:
            for p, what in zip(parts, names):
                _parse_int(p, path, i, what)
            raise  # pragma: no cover - _parse_int raised for the bad column
        if not 1 <= out[n, 2] <= 5:
            raise data_error(path, i, f"rating {out[n, 2]} is outside 1..5")
        line_no[n] = i
        n += 1
    return out[:n], line_no[:n]


def resolve_ml100k_path(path: PathLike | None) -> Path:
    """``path``, else ``$SECRELAY_ML100K``; raises if neither is given."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ML100K_ENV_VAR)
    if env:
        return Path(env)
    raise InvalidParameterError(
        "MovieLens-100K: pass `path` (the directory holding u.data, u.user, u.item) "
        f"or set ${ML100K_ENV_VAR}; the data set is not shipped with secrelay"
    )


def read_movielens100k(
    path: PathLike | None = None, *, zip_prefix_len: int = 1, min_rows_per_user: int = 1
) -> LoadResult:
    """Load MovieLens-100K and keep the raw value behind every code.

    Parameters
    ----------
    path:
        Directory with ``u.data``, ``u.user`` and ``u.item``; ``None`` reads
        ``$SECRELAY_ML100K``.
    zip_prefix_len:
        Characters of the zip code kept in the ``zip`` field (1 or 2; default 1
        = US ZIP national area; 2 gives ~80 regions).
    min_rows_per_user:
        Users with fewer rows are removed (reported in ``dataset.reports``).
        Every user of the official files has at least 20 ratings.

    Returns
    -------
    LoadResult
        The data set and the vocabulary of each field (``genres`` values are the
        genre names of :data:`ML100K_GENRES`, ``year`` values are decades).

    Raises
    ------
    DataFormatError
        A file is missing, empty, not latin-1, has a line with the wrong number
        of columns or a non-numeric id/rating/timestamp, or ``u.data`` names a
        user or item absent from ``u.user`` / ``u.item``; the message names the
        file, the 1-based line and the reason.
    """
    if zip_prefix_len not in (1, 2):
        raise InvalidParameterError(f"`zip_prefix_len` must be 1 or 2; got {zip_prefix_len!r}")
    root = resolve_ml100k_path(path)
    if not root.is_dir():
        raise data_error(root, None, "MovieLens-100K directory not found")
    users = _read_users(root / "u.user", zip_prefix_len)
    items = _read_items(root / "u.item")
    ratings_path = root / "u.data"
    r, line_no = _read_ratings(ratings_path)

    # Unknown users/items: name the first offending u.data line.
    unknown_user = ~np.isin(r[:, 0], np.fromiter(users, dtype=np.int64))
    unknown_item = ~np.isin(r[:, 1], np.fromiter(items, dtype=np.int64))
    if unknown_user.any() or unknown_item.any():
        row = int(np.flatnonzero(unknown_user | unknown_item)[0])
        line = int(line_no[row])
        what = (
            f"user {r[row, 0]} is not in u.user"
            if unknown_user[row]
            else f"item {r[row, 1]} is not in u.item"
        )
        raise data_error(ratings_path, line, f"unknown field value: {what}")

    user_ids = sorted(users)
    item_ids = sorted(items)
    vocabs: dict[str, Vocabulary] = {
        "user_id": Vocabulary("user_id", tuple(user_ids)),
        "age": Vocabulary("age", tuple(b[0] for b in AGE_BUCKETS)),
        "gender": Vocabulary.from_values("gender", (u[1] for u in users.values())),
        "occupation": Vocabulary.from_values("occupation", (u[2] for u in users.values())),
        "zip": Vocabulary.from_values("zip", (u[3] for u in users.values())),
        "item_id": Vocabulary("item_id", tuple(item_ids)),
        "genres": Vocabulary("genres", ML100K_GENRES),
        "year": Vocabulary.from_values(
            "year", (it[1] for it in items.values() if it[1] is not None)
        ),
    }
    max_genres = max(1, max(len(g) for g, _ in items.values()))

    # Per-user and per-item feature tables, indexed by position in the sorted ids.
    user_feats = np.array(
        [
            [vocabs["user_id"].code(uid)]
            + [
                vocabs[name].code(value)
                for name, value in zip(("age", "gender", "occupation", "zip"), users[uid])
            ]
            for uid in user_ids
        ],
        dtype=np.int64,
    )
    item_feats = np.zeros((len(item_ids), 2 + max_genres), dtype=np.int64)
    for k, iid in enumerate(item_ids):
        genres, decade = items[iid]
        item_feats[k, 0] = vocabs["item_id"].code(iid)
        item_feats[k, 1 : 1 + len(genres)] = [g + 1 for g in genres]
        item_feats[k, 1 + max_genres] = 0 if decade is None else vocabs["year"].code(decade)
    u_pos = np.searchsorted(np.asarray(user_ids, dtype=np.int64), r[:, 0])
    i_pos = np.searchsorted(np.asarray(item_ids, dtype=np.int64), r[:, 1])
    x = np.concatenate([user_feats[u_pos], item_feats[i_pos]], axis=1)

    schema = Schema(
        (
            Field("user_id", "user", vocabs["user_id"].size),
            Field("age", "user", vocabs["age"].size),
            Field("gender", "user", vocabs["gender"].size),
            Field("occupation", "user", vocabs["occupation"].size),
            Field("zip", "user", vocabs["zip"].size),
            Field("item_id", "item", vocabs["item_id"].size),
            Field("genres", "item", vocabs["genres"].size, max_len=max_genres),
            Field("year", "item", vocabs["year"].size),
        ),
        user_id_field="user_id",
        label="click",
        timestamp="timestamp",
        item_id_field="item_id",
    )
    ds = CTRDataset(
        schema,
        x,
        (r[:, 2] >= 4).astype(np.float32),
        x[:, 0],
        r[:, 3],
    )
    silent = sorted(set(users) - set(np.unique(r[:, 0]).tolist()))
    ds = ds.with_report(
        FilterReport(
            "movielens100k: users without ratings",
            rows_removed=0,
            users_removed=len(silent),
            reason="listed in u.user but absent from u.data (kept in the user_id vocabulary)",
        )
    )
    ds = apply_min_rows(ds, min_rows_per_user, ratings_path)
    return LoadResult(ds, vocabs)


def load_movielens100k(
    path: PathLike | None = None, *, zip_prefix_len: int = 1, min_rows_per_user: int = 1
) -> CTRDataset:
    """Load MovieLens-100K as a :class:`CTRDataset` (see the module docstring for fields).

    Parameters
    ----------
    path:
        Directory with ``u.data``, ``u.user`` and ``u.item``; ``None`` reads
        ``$SECRELAY_ML100K``.
    zip_prefix_len:
        Characters of the zip code kept (1 or 2).
    min_rows_per_user:
        Users with fewer rows are removed and reported.

    Returns
    -------
    CTRDataset
        100,000 rows, 943 users, 1,682 items, CTR 0.5536 on the official files.

    See Also
    --------
    read_movielens100k : the same, with the raw value behind each code.
    """
    return read_movielens100k(
        path, zip_prefix_len=zip_prefix_len, min_rows_per_user=min_rows_per_user
    ).dataset
