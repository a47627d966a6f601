"""Row filters. Each one attaches a :class:`FilterReport`; nothing is dropped silently."""

from __future__ import annotations

import numpy as np

from protocols.errors import InvalidParameterError
from secrelay.data._io import PathLike, data_error
from secrelay.data.dataset import CTRDataset, FilterReport

__all__ = ["filter_min_rows_per_user"]


def filter_min_rows_per_user(ds: CTRDataset, min_rows: int) -> CTRDataset:
    """Drop the users with fewer than ``min_rows`` rows; attach a :class:`FilterReport`.

    The report is attached even when nothing is removed, so a pipeline's
    ``reports`` always show which filters ran.

    Parameters
    ----------
    ds:
        The data set.
    min_rows:
        Minimum number of rows a user must have to be kept (>= 1).

    Returns
    -------
    CTRDataset
        The kept rows in their original order, with the report appended. It may
        be empty; loaders turn an empty result into a :class:`DataFormatError`.
    """
    if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 1:
        raise InvalidParameterError(f"`min_rows_per_user` must be an int >= 1; got {min_rows!r}")
    users, counts = np.unique(ds.user, return_counts=True)
    small = users[counts < min_rows]
    keep = ~np.isin(ds.user, small)
    out = ds.subset(np.flatnonzero(keep))
    return out.with_report(
        FilterReport(
            "min_rows_per_user",
            rows_removed=int((~keep).sum()),
            users_removed=int(small.size),
            reason=f"users with fewer than {int(min_rows)} rows",
        )
    )


def apply_min_rows(ds: CTRDataset, min_rows: int, source: PathLike) -> CTRDataset:
    """:func:`filter_min_rows_per_user`, raising :class:`DataFormatError` if nothing is left."""
    out = filter_min_rows_per_user(ds, min_rows)
    if len(out) == 0:
        raise data_error(
            source,
            None,
            f"no rows left after filtering: all {ds.n_users} users have fewer than "
            f"{min_rows} rows (`min_rows_per_user`={min_rows})",
        )
    return out
