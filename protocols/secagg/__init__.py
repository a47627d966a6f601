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
:func:`drive_server`, :data:`StageExchange`
    The server's stage loop over any transport (dropouts, the top-up pass); the
    in-process driver and the Flower app both run it.
:class:`FixedPointEncoder`, :class:`SecureRandom`
    Fixed-point encoding with stochastic rounding; the AES-CTR CSPRNG.
:class:`IdentityDirectory`, :class:`IdentityKey`, :func:`make_identity_keys`
    The PKI of long-term identity keys (malicious-server security).
:func:`separator_size`, :func:`combine_shares_verified`
    The surviving-graph rule and robust secret reconstruction.
"""

from protocols.secagg.client import SecAggClient, ShareKind
from protocols.secagg.config import (
    PASSIVE_STAGES,
    PROTOCOL_STAGES,
    SecAggConfig,
    Stage,
    consistency_quorum,
    default_neighbours,
    default_threshold,
    default_vote_slack,
    dropout_failure_probability,
    voting_degree,
)
from protocols.secagg.driver import (
    SecureSumResult,
    ServerLoopStats,
    StageExchange,
    drive_server,
    flatten_parts,
    simulate_secure_sum,
)
from protocols.secagg.encoding import FixedPointEncoder
from protocols.secagg.graph import (
    NeighbourGraph,
    make_graph,
    neighbour_graph,
    separator_size,
    voting_peers,
)
from protocols.secagg.messages import MessageType, decode_message
from protocols.secagg.pki import IdentityDirectory, IdentityKey, make_identity_keys
from protocols.secagg.prg import expand_mask
from protocols.secagg.rng import SecureRandom
from protocols.secagg.server import AggregateResult, ReceivedMessage, SecAggServer, ServerView
from protocols.secagg.shamir import (
    InconsistentSharesError,
    combine_shares,
    combine_shares_verified,
    split_secret,
)

__all__ = [
    "PASSIVE_STAGES",
    "PROTOCOL_STAGES",
    "AggregateResult",
    "FixedPointEncoder",
    "IdentityDirectory",
    "IdentityKey",
    "InconsistentSharesError",
    "MessageType",
    "NeighbourGraph",
    "ReceivedMessage",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "SecureRandom",
    "SecureSumResult",
    "ServerLoopStats",
    "ServerView",
    "ShareKind",
    "Stage",
    "StageExchange",
    "combine_shares",
    "combine_shares_verified",
    "consistency_quorum",
    "decode_message",
    "default_neighbours",
    "default_threshold",
    "default_vote_slack",
    "drive_server",
    "dropout_failure_probability",
    "expand_mask",
    "flatten_parts",
    "make_graph",
    "make_identity_keys",
    "neighbour_graph",
    "separator_size",
    "simulate_secure_sum",
    "split_secret",
    "voting_degree",
    "voting_peers",
]
