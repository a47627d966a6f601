"""LCFT's label corrections: pure functions of the local and global CTR.

A device whose local CTR w_i (share of positives in its fine-tuning data) differs
from the global CTR w_g (share of positives in the cloud data the initial model was
trained on) relabels its samples — positives get label α_i, negatives β_i — so that
its *equivalent CTR* equals the global one::

    w_i·α_i + (1 − w_i)·β_i = w_g                                          (1)

Corrections (``method.options.corrections``; the first is the headline)
-----------------------------------------------------------------------
``none``
    Fine-tuning without correction (the paper's *Local* baseline): (1, 0).
``soft1``
    Keep labels inside [0, 1] and change only one class: if w_i > w_g then
    (α, β) = (w_g/w_i, 0) (positives are down-weighted), else
    (1, (w_g − w_i)/(1 − w_i)) (negatives are lifted).
``soft2``
    The other solution of (1) that changes only one class — the opposite class:
    if w_i > w_g then (1, (w_g − w_i)/(1 − w_i)) with β < 0 (negatives pushed
    *below* 0), else (w_g/w_i, 0) with α > 1 (positives pushed *above* 1).
    These labels lie outside [0, 1]; :func:`secrelay.training.soft_bce_with_logits`
    uses the linear-in-target form ``softplus(z) − t·z``, which for t > 1 equals
    t·BCE(z, 1) − (t − 1)·BCE(z, 0) (and symmetrically for t < 0): a positive
    that also *rewards* a high logit beyond the BCE pull. The per-sample loss is
    still convex in z but unbounded below, so fine-tuning relies on the device's
    label mix (whose equivalent CTR is w_g ∈ (0, 1), so the loss of a shared
    bias is bounded) and on the small number of local steps.
    Degenerate devices: with w_i = 1 (no negatives) β is irrelevant and (1)
    forces α = w_g; with w_i = 0 (no positives) α is irrelevant and β = w_g. In
    both cases soft2 coincides with soft1, which never divides by zero.
``hard``
    The cloud grid-searches (α, β) per local-CTR interval offline
    (:func:`secrelay.relay.lcft.cloud.search_correction_table`) into a
    :class:`CorrectionTable`; a device looks its pair up locally, or asks the
    server for it (:mod:`secrelay.relay.lcft.query`).

Which one-sided solution is called "1" and which "2" is our derivation
(docs/lcft.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocols.errors import InvalidParameterError

__all__ = [
    "CORRECTIONS",
    "Correction",
    "CorrectionPath",
    "CorrectionTable",
    "check_ctr",
    "corrected_labels",
    "correction_pair",
    "equivalent_ctr",
    "soft_correction_1",
    "soft_correction_2",
]

Correction = Literal["none", "soft1", "soft2", "hard"]
CORRECTIONS: tuple[str, ...] = ("none", "soft1", "soft2", "hard")
CorrectionPath = Literal["table", "query"]


def check_ctr(name: str, w: float) -> float:
    """``w`` as a float, if it is a CTR in [0, 1].

    Raises
    ------
    InvalidParameterError
        Naming ``name`` and echoing ``w`` otherwise.
    """
    if not (isinstance(w, (int, float, np.floating)) and 0.0 <= float(w) <= 1.0):
        raise InvalidParameterError(f"`{name}` must be a CTR in [0, 1]; got {w!r}")
    return float(w)


def soft_correction_1(local_ctr: float, global_ctr: float) -> tuple[float, float]:
    """(α, β) of soft correction 1: labels stay in [0, 1].

    Examples
    --------
    >>> soft_correction_1(0.8, 0.4)
    (0.5, 0.0)
    >>> soft_correction_1(0.25, 0.5)
    (1.0, 0.3333333333333333)
    """
    w_i, w_g = check_ctr("local_ctr", local_ctr), check_ctr("global_ctr", global_ctr)
    if w_i > w_g:
        return w_g / w_i, 0.0
    if w_i < w_g:
        return 1.0, (w_g - w_i) / (1.0 - w_i)
    return 1.0, 0.0


def soft_correction_2(local_ctr: float, global_ctr: float) -> tuple[float, float]:
    """(α, β) of soft correction 2: the opposite class is changed, labels leave [0, 1].

    Falls back to :func:`soft_correction_1` for w_i ∈ {0, 1}, where the class it
    would change is absent (see the module docstring).

    Examples
    --------
    >>> soft_correction_2(0.75, 0.5)
    (1.0, -1.0)
    >>> soft_correction_2(0.25, 0.5)
    (2.0, 0.0)
    >>> soft_correction_2(1.0, 0.4)
    (0.4, 0.0)
    """
    w_i, w_g = check_ctr("local_ctr", local_ctr), check_ctr("global_ctr", global_ctr)
    if w_i in (0.0, 1.0):
        return soft_correction_1(w_i, w_g)
    if w_i > w_g:
        return 1.0, (w_g - w_i) / (1.0 - w_i)
    if w_i < w_g:
        return w_g / w_i, 0.0
    return 1.0, 0.0


def equivalent_ctr(local_ctr: float, alpha: float, beta: float) -> float:
    """w_i·α + (1 − w_i)·β: the mean corrected label of the device."""
    return float(local_ctr) * alpha + (1.0 - float(local_ctr)) * beta


def corrected_labels(y: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """α for positives and β for negatives (float32)."""
    y = np.asarray(y, dtype=np.float32)
    return (alpha * y + beta * (1.0 - y)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class CorrectionTable:
    """The hard correction's published table: (α, β) per local-CTR interval.

    Interval i is ``[edges[i], edges[i+1])``, the last one closed at 1.

    Examples
    --------
    >>> t = CorrectionTable(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5]), np.array([0.2, 0.0]))
    >>> t.interval(0.5), t.lookup(1.0)
    (1, (0.5, 0.0))
    """

    edges: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=np.float64)
        a = np.asarray(self.alpha, dtype=np.float64)
        b = np.asarray(self.beta, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or e[0] != 0.0 or e[-1] != 1.0 or np.any(np.diff(e) <= 0):
            raise InvalidParameterError(
                f"`edges` must increase strictly from 0 to 1; got {e.tolist()}"
            )
        if a.shape != (e.size - 1,) or b.shape != (e.size - 1,):
            raise InvalidParameterError(
                f"`alpha` and `beta` need one entry per interval ({e.size - 1}); "
                f"got {a.shape} and {b.shape}"
            )
        object.__setattr__(self, "edges", e)
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "beta", b)

    def interval(self, local_ctr: float) -> int:
        """The index of the interval holding ``local_ctr``."""
        w = check_ctr("local_ctr", local_ctr)
        return int(min(np.searchsorted(self.edges, w, side="right") - 1, self.alpha.size - 1))

    def lookup(self, local_ctr: float) -> tuple[float, float]:
        """The (α, β) of the interval holding ``local_ctr`` (on the device)."""
        i = self.interval(local_ctr)
        return float(self.alpha[i]), float(self.beta[i])

    def arrays(self) -> dict[str, np.ndarray]:
        """The table as named arrays (a message payload or checkpoint)."""
        return {"edges": self.edges, "alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CorrectionTable:
        """The inverse of :meth:`arrays`."""
        return cls(arrays["edges"], arrays["alpha"], arrays["beta"])


def correction_pair(
    correction: str, local_ctr: float, global_ctr: float, table: CorrectionTable | None = None
) -> tuple[float, float]:
    """(α, β) of ``correction`` for a device with local CTR ``local_ctr``."""
    if correction == "none":
        return 1.0, 0.0
    if correction == "soft1":
        return soft_correction_1(local_ctr, global_ctr)
    if correction == "soft2":
        return soft_correction_2(local_ctr, global_ctr)
    if correction == "hard":
        if table is None:
            raise InvalidParameterError("the hard correction needs the published CorrectionTable")
        return table.lookup(local_ctr)
    raise InvalidParameterError(f"`correction` must be one of {CORRECTIONS}; got {correction!r}")
