"""In-process driver: run one secure-aggregation round among simulated clients.

:func:`simulate_secure_sum` wires :class:`~protocols.secagg.client.SecAggClient`
and :class:`~protocols.secagg.server.SecAggServer` together through bytes only
(exactly as a transport would), injects dropouts per stage, and returns the
decoded sum together with the server's view, byte counts and timings.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError, ProtocolAbort
from protocols.secagg.client import SecAggClient
from protocols.secagg.config import SecAggConfig, Stage
from protocols.secagg.graph import make_graph
from protocols.secagg.messages import ROUND_ID_BYTES
from protocols.secagg.pki import IdentityDirectory, IdentityKey
from protocols.secagg.rng import SecureRandom
from protocols.secagg.server import SecAggServer, ServerView

__all__ = ["SecureSumResult", "flatten_parts", "simulate_secure_sum"]

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
    bytes_sent = dict.fromkeys(range(n), 0)
    bytes_received = dict.fromkeys(range(n), 0)
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
    active = set(range(n))
    outgoing: dict[int, bytes] = {}
    client_stage = dict.fromkeys(config.stages, 0.0)
    server_stage = dict.fromkeys(config.stages, 0.0)
    server_stage[Stage.ADVERTISE_KEYS] = server_seconds

    for stage in config.stages:
        active -= drop.get(stage, set())
        top_up = False
        while True:  # a stage runs twice when the server asks for a top-up pass
            replies = {}
            if stage is Stage.ADVERTISE_KEYS:
                for i in sorted(active):
                    start = time.perf_counter()
                    replies[i] = clients[i].advertise_keys()
                    spent = time.perf_counter() - start
                    client_seconds[i] += spent
                    client_stage[stage] += spent
            else:
                asked = active & set(outgoing)
                for i in sorted(asked):
                    bytes_received[i] += len(outgoing[i])
                    start = time.perf_counter()
                    try:
                        replies[i] = clients[i].handle(outgoing[i])
                    except ProtocolAbort as exc:
                        aborted[i] = str(exc)
                    finally:
                        spent = time.perf_counter() - start
                        client_seconds[i] += spent
                        client_stage[stage] += spent
                if top_up:
                    active -= asked - set(replies)  # only some clients were asked
                else:
                    active &= set(replies)
            start = time.perf_counter()
            for i, data in replies.items():
                bytes_sent[i] += len(data)
                server.receive(data)
            outgoing = server.advance()
            spent = time.perf_counter() - start
            server_seconds += spent
            server_stage[stage] += spent
            if server.stage is not stage:
                break
            top_up = True

    result = server.result()
    return SecureSumResult(
        sum=result.sum,
        parts=_split(result.sum, shapes),
        survivors=result.survivors,
        server_view=server.view,
        bytes_sent=bytes_sent,
        bytes_received=bytes_received,
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
