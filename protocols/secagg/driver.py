"""Drivers: the server's stage loop, and one secure-aggregation round among
simulated clients.

:func:`drive_server` is the server side of a round over any transport: it hands
each stage's messages to the clients still in the round, feeds the replies to
:class:`~protocols.secagg.server.SecAggServer`, treats a client that does not
answer as dropped, and runs the consistency check's top-up pass. The in-process
driver and the Flower app both run it, so the two cannot drift apart.

:func:`simulate_secure_sum` wires :class:`~protocols.secagg.client.SecAggClient`
and the server together through bytes only (exactly as a transport would), injects
dropouts per stage, and returns the decoded sum together with the server's view,
byte counts and timings.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from protocols.secagg.client import SecAggClient
from protocols.secagg.config import SecAggConfig, Stage
from protocols.secagg.graph import make_graph
from protocols.secagg.messages import ROUND_ID_BYTES
from protocols.secagg.pki import IdentityDirectory, IdentityKey
from protocols.secagg.rng import SecureRandom
from protocols.secagg.server import SecAggServer, ServerView

__all__ = [
    "SecureSumResult",
    "ServerLoopStats",
    "StageExchange",
    "drive_server",
    "flatten_parts",
    "simulate_secure_sum",
]

ClientInput = ArrayLike | Sequence[np.ndarray]


@dataclass(frozen=True)
class SecureSumResult:
    """The outcome of :func:`simulate_secure_sum`.

    Attributes
    ----------
    sum:
        float64 sum of the survivors' clipped inputs, as one flat vector.
    parts:
        :attr:`sum` split back into the shapes of one client's input parts.
    survivors:
        Sorted ids of the clients whose inputs are in the sum.
    server_view:
        Every message the server received (bytes, per stage) and sent.
    bytes_sent:
        Client id → bytes the client sent to the server.
    bytes_received:
        Client id → bytes the server sent to the client.
    client_seconds:
        Client id → CPU-bound wall seconds spent inside that client's methods.
    server_seconds:
        Wall seconds spent inside the server's methods.
    aborted_clients:
        Client id → reason, for clients that aborted (treated as dropped).
    error_bound:
        Per-coordinate bound on ``|sum - exact sum of clipped inputs|``:
        ``len(survivors) * step``.
    config:
        The parameters used (with the PKI the driver made at setup, if any).
    client_stage_seconds:
        Stage → wall seconds all clients together spent handling that stage's
        message (key generation for ``advertise_keys``).
    server_stage_seconds:
        Stage → wall seconds the server spent receiving that stage's messages and
        closing the stage (setup is in ``advertise_keys``).
    """

    sum: NDArray[np.float64] = field(repr=False)
    parts: tuple[NDArray[np.float64], ...] = field(repr=False)
    survivors: tuple[int, ...]
    server_view: ServerView = field(repr=False)
    bytes_sent: Mapping[int, int] = field(repr=False)
    bytes_received: Mapping[int, int] = field(repr=False)
    client_seconds: Mapping[int, float] = field(repr=False)
    server_seconds: float
    aborted_clients: Mapping[int, str]
    error_bound: float
    config: SecAggConfig
    client_stage_seconds: Mapping[Stage, float] = field(default_factory=dict, repr=False)
    server_stage_seconds: Mapping[Stage, float] = field(default_factory=dict, repr=False)


#: One exchange with the clients: ``(stage, requests)`` → replies. ``requests`` maps
#: each client asked to the server's message for it (``None`` at ``advertise_keys``:
#: the client starts the round); the replies are those of the clients that answered
#: (one that does not answer has dropped out). A top-up pass at the consistency
#: check is a second exchange of the same stage, asking only some clients.
StageExchange = Callable[[Stage, Mapping[int, bytes | None]], Mapping[int, bytes]]


@dataclass(frozen=True)
class ServerLoopStats:
    """What :func:`drive_server` measured (the server's result is on the server).

    Attributes
    ----------
    bytes_sent:
        Client id → bytes the client sent to the server.
    bytes_received:
        Client id → bytes the server sent to the client.
    server_stage_seconds:
        Stage → wall seconds the server spent receiving that stage's messages and
        closing the stage.
    rejected:
        Client id → the server's reason, for replies it rejected (only with
        ``drop_rejected``; the client is then treated as dropped).
    """

    bytes_sent: Mapping[int, int]
    bytes_received: Mapping[int, int]
    server_stage_seconds: Mapping[Stage, float]
    rejected: Mapping[int, str]

    @property
    def server_seconds(self) -> float:
        """Wall seconds spent in the server over all stages."""
        return sum(self.server_stage_seconds.values())


def drive_server(
    server: SecAggServer,
    exchange: StageExchange,
    *,
    n_clients: int,
    drop_rejected: bool = False,
) -> ServerLoopStats:
    """Run ``server`` from ``advertise_keys`` to its result over ``exchange``.

    Each stage asks the clients still in the round (at ``advertise_keys``: all of
    them); a client that does not answer has dropped out and is not asked again.
    When the server stays at a stage after closing it — the consistency check's
    top-up pass — the next exchange asks only the clients it addressed, and only
    those of them that do not answer leave the round.

    Parameters
    ----------
    server:
        A fresh server at ``advertise_keys``.
    exchange:
        Delivers one stage's messages and returns the replies (:data:`StageExchange`).
    n_clients:
        The round's client ids are ``0 .. n_clients - 1``.
    drop_rejected:
        ``False`` (default): a reply the server rejects raises its
        :class:`~protocols.errors.MessageError` (in-process simulations, where
        every client is ours). ``True``: the sender is treated as dropped and the
        reason kept in :attr:`ServerLoopStats.rejected` (a real transport, where a
        malformed or forged reply is the sender's problem, not the round's).

    Raises
    ------
    ProtocolAbort
        The server aborted (too few survivors, a refused survivor graph, a failed
        reconstruction): nothing is revealed.
    """
    if server.stage is not Stage.ADVERTISE_KEYS:
        raise InvalidParameterError(
            f"`server` must be fresh (at advertise_keys); it is at {server.stage.value!r}"
        )
    active = set(range(n_clients))
    outgoing: dict[int, bytes] = {}
    sent = dict.fromkeys(range(n_clients), 0)
    received = dict.fromkeys(range(n_clients), 0)
    stage_seconds: dict[Stage, float] = {}
    rejected: dict[int, str] = {}
    stage, top_up = server.stage, False
    while stage not in (Stage.DONE, Stage.ABORTED):
        requests: dict[int, bytes | None]
        if stage is Stage.ADVERTISE_KEYS:
            requests = dict.fromkeys(sorted(active))
        else:
            requests = {i: outgoing[i] for i in sorted(active & set(outgoing))}
            for i in requests:
                received[i] += len(outgoing[i])
        answered = {i: data for i, data in exchange(stage, requests).items() if i in requests}
        if top_up:
            active -= set(requests) - set(answered)  # a top-up pass asks only some clients
        else:
            active &= set(answered)
        start = time.perf_counter()
        try:
            for i, data in sorted(answered.items()):
                sent[i] += len(data)
                try:
                    server.receive(data)
                except MessageError as exc:
                    if not drop_rejected:
                        raise
                    rejected[i] = str(exc)
                    active.discard(i)
            outgoing = server.advance()
        finally:
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - start
        # The server stays at a stage only for the consistency check's top-up pass.
        top_up = server.stage is stage
        stage = server.stage
    return ServerLoopStats(sent, received, stage_seconds, rejected)


def flatten_parts(value: ClientInput) -> tuple[NDArray[np.float64], tuple[tuple[int, ...], ...]]:
    """Flatten one client's input (an array, or a sequence of arrays) to one vector.

    Parameters
    ----------
    value:
        An array of any shape, or a list/tuple of numpy arrays (for example one
        per model layer), which are concatenated in order.

    Returns
    -------
    tuple
        ``(flat float64 vector, shapes of the parts)``.

    Examples
    --------
    >>> import numpy as np
    >>> flat, shapes = flatten_parts([np.ones((2, 2)), np.zeros(3)])
    >>> flat.shape, shapes
    ((7,), ((2, 2), (3,)))
    """
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, np.ndarray) for p in value):
        parts = [np.asarray(p, dtype=np.float64) for p in value]
        return np.concatenate([p.ravel() for p in parts]), tuple(p.shape for p in parts)
    arr = np.asarray(value, dtype=np.float64)
    return arr.ravel(), (arr.shape,)


def _split(
    flat: NDArray[np.float64], shapes: tuple[tuple[int, ...], ...]
) -> tuple[NDArray[np.float64], ...]:
    out = []
    pos = 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[pos : pos + size].reshape(shape))
        pos += size
    return tuple(out)


def simulate_secure_sum(
    vectors: Sequence[ClientInput],
    *,
    config: SecAggConfig | None = None,
    dropouts: Mapping[Stage | str, Collection[int]] | None = None,
    seed: int | None = None,
    round_id: bytes | None = None,
    identity_keys: Sequence[IdentityKey] | None = None,
    beacon: bytes | None = None,
) -> SecureSumResult:
    """Securely sum one vector per client in one simulated SecAgg(+) round.

    Parameters
    ----------
    vectors:
        One input per client (client id = position): an array, or a sequence of
        arrays that is concatenated into one vector (all clients must use the
        same shapes).
    config:
        Protocol parameters; ``None`` uses :class:`SecAggConfig` defaults for
        ``n_clients = len(vectors)`` and the flattened length. Its
        ``n_clients`` and ``vector_length`` must match the inputs.
    dropouts:
        Stage → ids of clients that drop out *at* that stage (they send nothing
        from then on). Stages: ``advertise_keys``, ``share_keys``,
        ``masked_input``, ``consistency_check`` (active security only),
        ``unmasking``.
    seed:
        ``None`` (secure: every client's CSPRNG, the identity keys, the round id
        and the beacon come from the OS) or an integer that makes the run
        reproducible (keys, masks, rounding: for tests and simulations only;
        anyone who knows the seed can unmask every input).
    round_id:
        Public 16-byte round id; ``None`` derives it from ``seed`` or draws it.
    identity_keys:
        The clients' long-term :class:`IdentityKey` (entry ``i`` for client ``i``),
        when advertisements are authenticated; ``None`` makes them at setup (from
        the OS, or from ``seed``). ``config.pki``, if set, must hold their public keys.
    beacon:
        The public beacon value the graph is derived from; ``None`` stands in a
        fresh random value for the beacon in secure mode (``seed=None``) and
        derives the graph from the round id alone when ``seed`` is given.

    Returns
    -------
    SecureSumResult
        The decoded sum, survivors, the server's view, byte counts and timings.

    Raises
    ------
    ProtocolAbort
        Fewer than ``threshold`` clients survived a stage, or a needed secret
        lost too many share holders. No partial result is returned.
    InvalidParameterError
        Inconsistent inputs, config or dropouts.

    Examples
    --------
    >>> import numpy as np
    >>> xs = [np.full(3, 0.25 * i) for i in range(5)]
    >>> res = simulate_secure_sum(xs, seed=0, dropouts={"masked_input": {4}})
    >>> res.survivors
    (0, 1, 2, 3)
    >>> bool(np.all(np.abs(res.sum - 1.5) <= res.error_bound))
    True
    """
    if not isinstance(vectors, Sequence) or len(vectors) < 2:
        raise InvalidParameterError("`vectors` must be a sequence of at least 2 client inputs")
    flat: list[NDArray[np.float64]] = []
    shapes: tuple[tuple[int, ...], ...] | None = None
    for i, value in enumerate(vectors):
        vec, sh = flatten_parts(value)
        if shapes is None:
            shapes = sh
        elif sh != shapes:
            raise InvalidParameterError(
                f"`vectors[{i}]` has part shapes {sh}; client 0 has {shapes}"
            )
        flat.append(vec)
    assert shapes is not None
    n, d = len(flat), flat[0].size
    if config is None:
        config = SecAggConfig(n_clients=n, vector_length=d)
    elif (config.n_clients, config.vector_length) != (n, d):
        raise InvalidParameterError(
            f"`config` is for {config.n_clients} clients of length {config.vector_length}; "
            f"got {n} inputs of length {d}"
        )
    master = SecureRandom.from_seed(seed, b"driver") if seed is not None else None
    if round_id is None:
        round_id = (
            master.bytes(ROUND_ID_BYTES) if master is not None else os.urandom(ROUND_ID_BYTES)
        )

    if beacon is None and seed is None:
        beacon = os.urandom(32)  # stands in for the public randomness beacon

    # Setup: the PKI (a key directory the config names).
    private: Sequence[IdentityKey] = ()
    if config.sign_advertisements:
        if identity_keys is not None:
            if len(identity_keys) != n:
                raise InvalidParameterError(
                    f"`identity_keys` must hold one key per client ({n}); got {len(identity_keys)}"
                )
            private = tuple(identity_keys)
        else:
            rng = master if master is not None else SecureRandom()
            private = tuple(IdentityKey.generate(rng) for _ in range(n))
        directory = IdentityDirectory(tuple(k.public_key for k in private))
        if config.pki is None:
            config = dataclasses.replace(config, pki=directory)
        elif config.pki != directory:
            raise InvalidParameterError(
                "`config.pki` does not hold the public keys of `identity_keys`"
            )
    drop = _validate_dropouts(dropouts, n, config)

    graph = make_graph(n, config.k, round_id, beacon)
    client_seconds = dict.fromkeys(range(n), 0.0)
    aborted: dict[int, str] = {}
    clients: dict[int, SecAggClient] = {}
    for i in range(n):
        start = time.perf_counter()
        clients[i] = SecAggClient(
            i,
            flat[i],
            config=config,
            round_id=round_id,
            rng=SecureRandom.from_seed(seed, b"client", i.to_bytes(4, "big"))
            if seed is not None
            else None,
            identity_key=private[i] if private else None,
            graph=graph,
            beacon=beacon,
        )
        client_seconds[i] += time.perf_counter() - start
    start = time.perf_counter()
    server = SecAggServer(config=config, round_id=round_id, graph=graph, beacon=beacon)
    server_seconds = time.perf_counter() - start
    client_stage = dict.fromkeys(config.stages, 0.0)
    gone: set[int] = set()  # dropped out (injected) or aborted

    def exchange(stage: Stage, requests: Mapping[int, bytes | None]) -> dict[int, bytes]:
        gone.update(drop.get(stage, ()))
        replies = {}
        for i, message in requests.items():
            if i in gone:
                continue
            start = time.perf_counter()
            try:
                if message is None:
                    replies[i] = clients[i].advertise_keys()
                else:
                    replies[i] = clients[i].handle(message)
            except ProtocolAbort as exc:
                aborted[i] = str(exc)
                gone.add(i)
            finally:
                spent = time.perf_counter() - start
                client_seconds[i] += spent
                client_stage[stage] += spent
        return replies

    stats = drive_server(server, exchange, n_clients=n)
    server_stage = {s: stats.server_stage_seconds.get(s, 0.0) for s in config.stages}
    server_stage[Stage.ADVERTISE_KEYS] += server_seconds
    server_seconds += stats.server_seconds

    result = server.result()
    return SecureSumResult(
        sum=result.sum,
        parts=_split(result.sum, shapes),
        survivors=result.survivors,
        server_view=server.view,
        bytes_sent=stats.bytes_sent,
        bytes_received=stats.bytes_received,
        client_seconds=client_seconds,
        server_seconds=server_seconds,
        aborted_clients=aborted,
        error_bound=config.encoder.error_bound(len(result.survivors)),
        config=config,
        client_stage_seconds=client_stage,
        server_stage_seconds=server_stage,
    )


def _validate_dropouts(
    dropouts: Mapping[Stage | str, Collection[int]] | None, n: int, config: SecAggConfig
) -> dict[Stage, set[int]]:
    out: dict[Stage, set[int]] = {}
    if not dropouts:
        return out
    valid = {s.value for s in config.stages}
    for key, ids in dropouts.items():
        value = key.value if isinstance(key, Stage) else key
        if value not in valid:
            hint = (
                " (the consistency check exists only with `active_security`)"
                if value == Stage.CONSISTENCY_CHECK.value
                else ""
            )
            raise InvalidParameterError(
                f"`dropouts` keys must be stages {sorted(valid)}; got {key!r}{hint}"
            )
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
        if bad:
            raise InvalidParameterError(f"`dropouts[{value!r}]` has unknown client ids {bad}")
        out.setdefault(Stage(value), set()).update(ids)
    return out
