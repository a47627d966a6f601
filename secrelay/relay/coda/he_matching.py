"""CoDA's matching under CKKS (``[privacy] he_matching = true``): the server scores the
pool against an encrypted user vector and never sees the vector in the clear.

The score of pool user u for a device vector v is 2·v·x_u − ‖x_u‖² = ‖v‖² − ‖v − x_u‖²,
so ranking by score is exactly the Euclidean K-nearest-neighbour ranking of
:class:`~secrelay.relay.coda.matching.KNNMatcher`. The server evaluates it for every
pool user at once with :class:`~protocols.he.PackedMatVec` (A = 2X, c = −‖x‖²;
N/2 pool users per result ciphertext, one Galois key, depth 1).

**The flow** (one device, one round; every message through the run's channel):

=================  ===========================================================
server → device    ``ReplyMessage`` :data:`HE_LAYOUT_TOPIC`: pool size, vector
                   dimension, CKKS parameters
device → server    ``QueryMessage`` :data:`HE_CONTEXT_TOPIC`: the public context
                   (one Galois key), ``blob``
device → server    ``QueryMessage`` ``coda/match``: Enc(v), ``blob`` only
server → device    ``ReplyMessage`` :data:`SCORES_TOPIC`: the encrypted scores, in
                   an order the server drew at random for this request
device → server    ``QueryMessage`` :data:`PICK_TOPIC`: the positions of its top K
server → device    the matched samples in batches (``coda/batch``), as without HE
=================  ===========================================================

What this does not hide: the server learns *which* K pool users the device picked
(it must, to send their samples), and v is close to their mean — the batch fetch
reveals the device's neighbourhood. The device learns the score of every pool user
(under a fresh random order per request, so scores cannot be linked across requests
or devices). Both are stated in docs/he.md; the attack suite measures the first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError, MessageError
from protocols.he import CKKSParameters, MatVecLayout, PackedMatVec, PublicContext, SecretContext
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.federated.transcript import Channel
from secrelay.relay.coda.payload import MATCH_TOPIC

__all__ = [
    "HE_CONTEXT_TOPIC",
    "HE_LAYOUT_TOPIC",
    "PICK_TOPIC",
    "SCORES_TOPIC",
    "HEMatchServer",
    "HEMatchStats",
    "encrypted_match",
    "top_k",
]

HE_LAYOUT_TOPIC = "coda/he_layout"
HE_CONTEXT_TOPIC = "coda/he_context"
SCORES_TOPIC = "coda/scores"
PICK_TOPIC = "coda/pick"


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties: lower position first)."""
    s = np.asarray(scores, dtype=np.float64)
    k = min(int(k), s.size)
    out: np.ndarray = np.argsort(-s, kind="stable")[:k]
    return out


@dataclass
class HEMatchStats:
    """HE traffic and time of a round's matching, summed over devices.

    ``topk_exact`` / ``topk_ties`` count devices whose encrypted top K equals the
    plaintext KNN's as a set / up to ties (the same multiset of distances) — the
    experimenter's check, computed where both are known; no party learns it.
    """

    devices: int = 0
    context_bytes: int = 0
    query_bytes: int = 0
    reply_bytes: int = 0
    pick_bytes: int = 0
    keygen_seconds: float = 0.0
    device_seconds: float = 0.0
    server_seconds: float = 0.0
    topk_exact: int = 0
    topk_ties: int = 0

    def as_metrics(self) -> dict[str, float]:
        n = max(self.devices, 1)
        return {
            "he/matching_devices": float(self.devices),
            "he/matching_context_bytes_mean": self.context_bytes / n,
            "he/matching_query_bytes_mean": self.query_bytes / n,
            "he/matching_reply_bytes_mean": self.reply_bytes / n,
            "he/matching_pick_bytes_mean": self.pick_bytes / n,
            "he/matching_keygen_seconds_mean": self.keygen_seconds / n,
            "he/matching_device_seconds_mean": self.device_seconds / n,
            "he/matching_server_seconds_mean": self.server_seconds / n,
            "he/matching_topk_exact": self.topk_exact / n,
            "he/matching_topk_ties": self.topk_ties / n,
        }


@dataclass(eq=False)
class HEMatchServer:
    """The server's side of encrypted matching over one pool.

    Parameters
    ----------
    pool_users, pool_vectors:
        The pool's user ids ``(n,)`` and vectors ``(n, m)``.
    params:
        CKKS parameters (depth >= 1).
    generator:
        Draws each request's random pool order (``None``: the pool order is fixed,
        and the encoded pool is cached across requests).
    """

    pool_users: np.ndarray
    pool_vectors: np.ndarray
    params: CKKSParameters
    generator: RandomGenerator | None = None
    stats: HEMatchStats = field(default_factory=HEMatchStats)

    def __post_init__(self) -> None:
        x = np.asarray(self.pool_vectors, dtype=np.float64)
        users = np.asarray(self.pool_users, dtype=np.int64)
        if x.ndim != 2 or users.shape != (x.shape[0],) or x.shape[0] == 0:
            raise InvalidParameterError(
                f"pool needs users (n,) and vectors (n, dim); got {users.shape} and {x.shape}"
            )
        self.pool_users, self.pool_vectors = users, x
        self.layout = MatVecLayout(x.shape[0], x.shape[1], self.params)
        self._fixed: PackedMatVec | None = None
        self._pending: dict[int, np.ndarray] = {}

    def _plan(self, order: np.ndarray | None) -> PackedMatVec:
        x = self.pool_vectors if order is None else self.pool_vectors[order]
        if order is None and self._fixed is not None:
            return self._fixed
        plan = PackedMatVec(
            2.0 * x, -(x**2).sum(axis=1), params=self.params, cache_plaintexts=order is None
        )
        if order is None:
            self._fixed = plan
        return plan

    def layout_message(self, device: int, round: int) -> ReplyMessage:
        return ReplyMessage(
            sender=SERVER,
            receiver=device,
            round=round,
            topic=HE_LAYOUT_TOPIC,
            arrays={
                "shape": np.array([self.layout.rows, self.layout.cols], dtype=np.int64),
                "params": np.frombuffer(self.params.to_bytes(), dtype=np.uint8),
            },
        )

    def score(self, context: QueryMessage, query: QueryMessage) -> ReplyMessage:
        """Encrypted scores of every pool user, in a fresh random order.

        Raises
        ------
        MessageError
            Wrong topics, a plaintext payload on the query, or a context / ciphertext
            that does not load or does not fit the pool's layout.
        """
        t = time.perf_counter()
        if context.topic != HE_CONTEXT_TOPIC or query.topic != MATCH_TOPIC:
            raise MessageError(f"expected {HE_CONTEXT_TOPIC!r} then {MATCH_TOPIC!r} queries")
        if context.sender != query.sender or query.arrays:
            raise MessageError("an encrypted match request carries one device's ciphertext only")
        ctx = PublicContext.from_bytes(context.blob)
        missing = set(self.layout.galois_steps) - set(ctx.galois_steps)
        if ctx.params != self.params or missing:
            raise MessageError(
                f"the device's HE context does not fit the pool (parameters match: "
                f"{ctx.params == self.params}; missing Galois steps {sorted(missing)})"
            )
        ct = ctx.load_ciphertexts(query.blob, count=1)[0]
        order = None
        if self.generator is not None:
            order = np.argsort(self.generator.random(size=self.layout.rows), kind="stable")
        blob = ctx.dump_ciphertexts(self._plan(order).evaluate(ctx, ct))
        self._pending[query.sender] = (
            np.arange(self.layout.rows) if order is None else np.asarray(order)
        )
        self.stats.server_seconds += time.perf_counter() - t
        return ReplyMessage(
            sender=SERVER, receiver=query.sender, round=query.round, topic=SCORES_TOPIC, blob=blob
        )

    def resolve(self, pick: QueryMessage, *, k: int) -> np.ndarray:
        """The pool users at the positions a device picked (its pending request's order).

        Raises
        ------
        MessageError
            No pending request, or not ``min(k, n)`` distinct positions in range.
        """
        if pick.topic != PICK_TOPIC or pick.sender not in self._pending:
            raise MessageError(f"a {PICK_TOPIC!r} needs a scored request from device {pick.sender}")
        idx = np.asarray(pick.arrays.get("positions", np.zeros(0)))
        n = self.layout.rows
        want = min(int(k), n)
        if (
            idx.dtype.kind not in "iu"
            or idx.shape != (want,)
            or np.unique(idx).size != want
            or (idx.size and (idx.min() < 0 or idx.max() >= n))
        ):
            raise MessageError(
                f"a pick must hold {want} distinct positions in [0, {n}); got {idx.dtype} "
                f"{idx.shape}"
            )
        order = self._pending.pop(pick.sender)
        out: np.ndarray = self.pool_users[order[idx]]
        return out


def encrypted_match(
    device: int,
    round: int,
    vector: np.ndarray,
    *,
    k: int,
    channel: Channel,
    server: HEMatchServer,
) -> np.ndarray:
    """One device's encrypted match: returns the pool users the server will serve.

    The device part reads only its vector and what it received; the server part only
    the messages."""
    stats = server.stats
    lay = channel.send(server.layout_message(device, round))
    assert isinstance(lay, ReplyMessage)
    # --- device: keys for the published layout ---------------------------------------
    t = time.perf_counter()
    params = CKKSParameters.from_bytes(lay.arrays["params"].tobytes())
    rows, cols = (int(v) for v in lay.arrays["shape"])
    layout = MatVecLayout(rows, cols, params)
    keys = SecretContext(params, galois_steps=layout.galois_steps)
    t_key = time.perf_counter() - t
    t = time.perf_counter()
    ctx_blob = keys.serialize()
    query_blob = keys.encrypt(layout.encode_input(vector))
    t_dev = time.perf_counter() - t
    ctx_msg = channel.send(
        QueryMessage(
            sender=device, receiver=SERVER, round=round, topic=HE_CONTEXT_TOPIC, blob=ctx_blob
        )
    )
    query = channel.send(
        QueryMessage(
            sender=device, receiver=SERVER, round=round, topic=MATCH_TOPIC, blob=query_blob
        )
    )
    assert isinstance(ctx_msg, QueryMessage) and isinstance(query, QueryMessage)
    # --- server: scores ----------------------------------------------------------------
    reply = channel.send(server.score(ctx_msg, query))
    assert isinstance(reply, ReplyMessage)
    # --- device: decrypt, pick its top K ----------------------------------------------
    t = time.perf_counter()
    scores = layout.decode_output(keys.decrypt(reply.blob, count=layout.chunks))
    positions = top_k(scores, k)
    t_dev += time.perf_counter() - t
    pick = channel.send(
        QueryMessage(
            sender=device,
            receiver=SERVER,
            round=round,
            topic=PICK_TOPIC,
            arrays={"positions": positions.astype(np.int64)},
        )
    )
    assert isinstance(pick, QueryMessage)
    stats.devices += 1
    stats.context_bytes += len(ctx_blob)
    stats.query_bytes += len(query_blob)
    stats.reply_bytes += len(reply.blob)
    stats.pick_bytes += pick.nbytes()
    stats.keygen_seconds += t_key
    stats.device_seconds += t_dev
    # --- server: which pool users -------------------------------------------------------
    return server.resolve(pick, k=k)
