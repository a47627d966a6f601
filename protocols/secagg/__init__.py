"""SecAgg+ secure aggregation (Bell et al. 2020) with plain SecAgg (Bonawitz et
al. 2017) as the special case ``neighbours = n_clients - 1``.

Pure protocol: arrays and bytes in, arrays and bytes out. Never imports
:mod:`secrelay` or :mod:`attacks`. See ``docs/secagg.md``.

Public API
----------
:class:`SecAggConfig`, :class:`Stage`
    Validated parameters and stage names.
:class:`SecAggClient`, :class:`SecAggServer`
    Explicit state machines (messages are bytes; any transport works).
:func:`simulate_secure_sum`, :class:`SecureSumResult`
    The in-process driver, returning the decoded sum and the server's view.
:class:`FixedPointEncoder`, :class:`SecureRandom`
    Fixed-point encoding with stochastic rounding; the AES-CTR CSPRNG.
"""

from protocols.secagg.client import SecAggClient, ShareKind
from protocols.secagg.config import (
    PROTOCOL_STAGES,
    SecAggConfig,
    Stage,
    default_neighbours,
    default_threshold,
    dropout_failure_probability,
)
from protocols.secagg.driver import SecureSumResult, flatten_parts, simulate_secure_sum
from protocols.secagg.encoding import FixedPointEncoder
from protocols.secagg.graph import neighbour_graph
from protocols.secagg.messages import MessageType, decode_message
from protocols.secagg.prg import expand_mask
from protocols.secagg.rng import SecureRandom
from protocols.secagg.server import AggregateResult, ReceivedMessage, SecAggServer, ServerView
from protocols.secagg.shamir import combine_shares, split_secret

__all__ = [
    "PROTOCOL_STAGES",
    "AggregateResult",
    "FixedPointEncoder",
    "MessageType",
    "ReceivedMessage",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "SecureRandom",
    "SecureSumResult",
    "ServerView",
    "ShareKind",
    "Stage",
    "combine_shares",
    "decode_message",
    "default_neighbours",
    "default_threshold",
    "dropout_failure_probability",
    "expand_mask",
    "flatten_parts",
    "neighbour_graph",
    "simulate_secure_sum",
    "split_secret",
]
