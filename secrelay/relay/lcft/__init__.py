"""LCFT: on-device fine-tuning with label correction (method ``"lcft"``).

Ding et al., "On-Device Model Fine-Tuning with Label Correction in Recommender
Systems" (arXiv:2211.01163, 2022). A device whose local CTR w_i differs from the
global CTR w_g of the cloud data relabels its samples — positives get label α_i,
negatives β_i — so that its *equivalent CTR* w_i·α_i + (1 − w_i)·β_i equals w_g,
and then fine-tunes the cloud model on its own data with those soft labels. The
fine-tuned model stays on the device (a personalised method); each device is
evaluated with its own model.

One job per module:

- :mod:`~secrelay.relay.lcft.corrections` — the correction maths (soft1, soft2,
  the hard correction's :class:`CorrectionTable`), pure functions;
- :mod:`~secrelay.relay.lcft.query` — the hard correction's local-CTR query and its
  LDP report (:class:`CTRQuery`);
- :mod:`~secrelay.relay.lcft.cloud` — the cloud's offline table search;
- :mod:`~secrelay.relay.lcft.device` — the device program (:class:`LCFTProgram`);
- :mod:`~secrelay.relay.lcft.options` — ``[method.options]`` (:class:`LCFTOptions`);
- :mod:`~secrelay.relay.lcft.privacy` — what LCFT cannot honour of ``[privacy]``;
- :mod:`~secrelay.relay.lcft.analysis` — the gain by local-CTR drift;
- :mod:`~secrelay.relay.lcft.method` — :class:`LCFTMethod`, the runner's plug-in.

Only the paper's abstract was retrievable while this was written; the
equation, the two one-sided soft solutions and the offline interval search follow
DESIGN.md (docs/lcft.md).
"""

from secrelay.relay.lcft.analysis import improvement_by_drift
from secrelay.relay.lcft.cloud import search_correction_table
from secrelay.relay.lcft.corrections import (
    CORRECTIONS,
    CorrectionTable,
    corrected_labels,
    correction_pair,
    equivalent_ctr,
    soft_correction_1,
    soft_correction_2,
)
from secrelay.relay.lcft.device import LCFTProgram
from secrelay.relay.lcft.method import LCFTMethod
from secrelay.relay.lcft.options import LCFTOptions
from secrelay.relay.lcft.query import (
    QUERY_LDP,
    QUERY_TOPIC,
    CTRQuery,
    answer_query,
    query_request,
    rr_bits_for,
    rr_report_variance,
)

__all__ = [
    "CORRECTIONS",
    "QUERY_LDP",
    "QUERY_TOPIC",
    "CTRQuery",
    "CorrectionTable",
    "LCFTMethod",
    "LCFTOptions",
    "LCFTProgram",
    "answer_query",
    "corrected_labels",
    "correction_pair",
    "equivalent_ctr",
    "improvement_by_drift",
    "query_request",
    "rr_bits_for",
    "rr_report_variance",
    "search_correction_table",
    "soft_correction_1",
    "soft_correction_2",
]
