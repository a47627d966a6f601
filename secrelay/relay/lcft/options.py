"""LCFT's ``[method.options]``: one frozen dataclass, parsed by
:func:`secrelay.options.parse_options` with LCFT's range checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from secrelay.options import parse_options
from secrelay.relay.lcft.corrections import CORRECTIONS, CorrectionPath

__all__ = ["LCFTOptions"]


@dataclass(frozen=True)
class LCFTOptions:
    """LCFT's ``[method.options]``.

    Parameters
    ----------
    corrections:
        Corrections fine-tuned side by side on every device (subset of
        ``none``, ``soft1``, ``soft2``, ``hard``); the first is the run's headline
        metric, every one is reported as ``<correction>/gauc`` etc.
    hard_edges:
        Local-CTR interval edges of the hard correction (0 … 1, increasing).
    hard_alphas, hard_betas:
        The (α, β) grid searched per interval.
    hard_min_rows, hard_max_users:
        Cloud users searched: at least this many rows; at most this many per interval.
    drift_edges:
        |w_i − w_g| buckets of the improvement analysis (paper Figure 2).
    correction_path:
        How a device gets its hard-correction pair: ``"table"`` (download the whole
        interval table and look up locally; the server learns nothing) or
        ``"query"`` (send w_i in a :class:`~secrelay.federated.messages.QueryMessage`,
        the server answers (α, β); protected by ``privacy.query_ldp``). Needs
        ``"hard"`` in ``corrections``.
    query_rr_bits:
        Randomized-response bits per query with ``privacy.query_ldp =
        "randomized_response"`` (ε is split evenly over them); 0 = the k that
        minimises the estimate's variance (:func:`~secrelay.relay.lcft.query.rr_bits_for`).
    """

    corrections: tuple[str, ...] = ("soft1",)
    hard_edges: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    hard_alphas: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    hard_betas: tuple[float, ...] = (-0.2, 0.0, 0.2)
    hard_min_rows: int = 10
    hard_max_users: int = 40
    drift_edges: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 1.0)
    correction_path: CorrectionPath = "table"
    query_rr_bits: int = 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> LCFTOptions:
        """Parse and check ``method.options``, reporting every problem at once.

        Raises
        ------
        ConfigError
            Listing every unknown key, wrong type and out-of-range value.
        """
        return parse_options(cls, options, "method.options", checks=_check_lcft)


def _check_lcft(o: Mapping[str, Any]) -> list[str]:
    """The range checks of the typed keys given (the ``checks`` of ``parse_options``)."""
    problems = []
    cs = o.get("corrections", ("soft1",))
    bad = [c for c in cs if c not in CORRECTIONS]
    if not cs or bad:
        problems.append(
            f"method.options.corrections must be a non-empty list of {list(CORRECTIONS)}; got {list(cs)!r}"
        )
    if len(set(cs)) != len(cs):
        problems.append(f"method.options.corrections has duplicates: {list(cs)!r}")
    for name in ("hard_edges", "drift_edges"):
        if name in o:
            e = np.asarray(o[name], dtype=np.float64)
            if e.size < 2 or e[0] != 0 or e[-1] != 1 or np.any(np.diff(e) <= 0):
                problems.append(
                    f"method.options.{name} must increase strictly from 0 to 1; got {list(o[name])!r}"
                )
    for name in ("hard_alphas", "hard_betas"):
        if name in o and len(o[name]) == 0:
            problems.append(f"method.options.{name} must not be empty")
    for name in ("hard_min_rows", "hard_max_users"):
        if name in o and o[name] < (2 if name == "hard_min_rows" else 1):
            problems.append(f"method.options.{name} is too small; got {o[name]!r}")
    if o.get("correction_path", "table") == "query" and "hard" not in cs:
        problems.append(
            "method.options.correction_path = 'query' serves the hard correction, but "
            f"method.options.corrections = {list(cs)!r} has no 'hard' (the soft corrections "
            "need only the downloaded w_g); add 'hard' or set correction_path = 'table'"
        )
    if o.get("query_rr_bits", 0) < 0:
        problems.append(
            f"method.options.query_rr_bits must be >= 0 (0 = automatic); got {o['query_rr_bits']!r}"
        )
    return problems
