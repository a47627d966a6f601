"""The public neighbour graph of SecAgg+ (a random Harary graph) and the
surviving-graph rule.

Bell et al. 2020 connect each client to ``k`` neighbours of a random
``k``-regular graph. We use the Harary graph ``H(k, n)`` on a random ordering
of the clients: the clients are placed on a ring in the order of a permutation
``π`` and each is joined to the ``k/2`` clients on either side, which makes the
graph exactly ``k``-regular. ``π`` is a Fisher–Yates shuffle driven by an
AES-CTR stream keyed by HKDF-SHA256 of the public round id and, when given, a
public random *beacon* value, so every party computes the same graph and the
server can neither choose it nor grind it (see :func:`ring_order`). ``k = n - 1``
is the complete graph (plain SecAgg).

The surviving-graph rule (:func:`separator_size`): a server that knows the
self-mask seeds of the survivors ``U3`` and the masking keys of the clients that
dropped after sharing can remove every mask except the pairwise masks between
two survivors; those cancel only in a sum over a union of connected components
of the survivors' graph ``G[U3]``. With up to ``t - 1`` colluding clients (whose
masks the server also knows) only the full sum is learnable iff no set of at most
``t - 1`` survivors disconnects ``G[U3]``. On the ring that needs two disjoint
runs of ``k/2`` ring-consecutive positions emptied of survivors, with survivors
left between them on both sides; :func:`separator_size` computes the smallest
such set exactly in ``O(n log n)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from protocols.errors import InvalidParameterError
from protocols.secagg.rng import SecureRandom

__all__ = [
    "NeighbourGraph",
    "make_graph",
    "neighbour_graph",
    "resolve_graph",
    "ring_order",
    "separator_size",
    "split_reason",
    "voting_peers",
]

_LABEL = b"secrelay/secagg/v1/neighbour-graph"


def ring_order(n_clients: int, round_id: bytes, beacon: bytes | None = None) -> tuple[int, ...]:
    """The public random ring order ``π`` of the clients for ``round_id``.

    The permutation is keyed by ``HKDF-SHA256(round_id [|| beacon])``. Rule for
    a graph the server can neither choose nor grind: ``beacon`` is the output of
    a public randomness beacon (for example a drand round) for a beacon round
    fixed before the round opens, fetched by every client itself; the round id
    commits to that beacon round and is used once. The server then learns the
    graph only after the round's parameters are fixed and gets one graph per
    round id. Without a beacon (``None``: reproducible simulations and the
    first protocol version) the graph is a function of the round id alone, which
    whoever picks the round id can grind.

    Parameters
    ----------
    n_clients:
        Number of clients ``n >= 2``.
    round_id:
        The public round id (16 bytes).
    beacon:
        Public beacon output (any length >= 16 bytes), or ``None``.

    Returns
    -------
    tuple[int, ...]
        A permutation of ``0 .. n - 1``.
    """
    if beacon is None:
        ikm, info = round_id, _LABEL
    else:
        if not isinstance(beacon, bytes) or len(beacon) < 16:
            raise InvalidParameterError("`beacon` must be at least 16 bytes")
        ikm, info = round_id + beacon, _LABEL + b"/beacon"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)
    rng = SecureRandom(key)
    order = list(range(n_clients))
    for i in range(n_clients - 1, 0, -1):
        j = rng.randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    return tuple(order)


@dataclass(frozen=True)
class NeighbourGraph(Sequence[frozenset[int]]):
    """The neighbour sets of one round together with the ring order they come from.

    A sequence: entry ``u`` is the set of ``u``'s neighbours (as
    :func:`neighbour_graph` returns). ``order`` is ``None`` for the complete graph.
    """

    n_clients: int
    neighbours_k: int
    order: tuple[int, ...] | None
    sets: tuple[frozenset[int], ...]

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, index: int) -> frozenset[int]:  # type: ignore[override]
        return self.sets[index]

    def __iter__(self) -> Iterator[frozenset[int]]:
        return iter(self.sets)

    @property
    def is_complete(self) -> bool:
        """True for the complete graph (plain SecAgg)."""
        return self.order is None

    def separator_size(self, members: Iterable[int]) -> int | None:
        """:func:`separator_size` of the subgraph induced by ``members``."""
        if self.order is None:
            return None
        return separator_size(self.order, self.neighbours_k, members)


def make_graph(
    n_clients: int, neighbours: int, round_id: bytes, beacon: bytes | None = None
) -> NeighbourGraph:
    """The :class:`NeighbourGraph` of a round (see :func:`neighbour_graph`)."""
    n, k = n_clients, neighbours
    if n < 2:
        raise InvalidParameterError(f"`n_clients` must be >= 2; got {n}")
    if k == n - 1:
        everyone = frozenset(range(n))
        return NeighbourGraph(n, k, None, tuple(everyone - {u} for u in range(n)))
    if k % 2 or not 2 <= k <= n - 2:
        raise InvalidParameterError(
            f"`neighbours` must be {n - 1} or even in [2, {n - 2}]; got {k}"
        )
    order = ring_order(n, round_id, beacon)
    half = k // 2
    sets: list[frozenset[int]] = [frozenset()] * n
    for pos, u in enumerate(order):
        sets[u] = frozenset(order[(pos + off) % n] for off in range(-half, half + 1) if off != 0)
    return NeighbourGraph(n, k, order, tuple(sets))


def resolve_graph(
    n_clients: int,
    neighbours: int,
    round_id: bytes,
    beacon: bytes | None,
    graph: Sequence[frozenset[int]] | None,
) -> NeighbourGraph:
    """The round's :class:`NeighbourGraph`: ``graph`` itself when it is one, else the
    graph the public parameters define (a plain sequence of sets given by a caller
    must equal it)."""
    if isinstance(graph, NeighbourGraph):
        return graph
    made = make_graph(n_clients, neighbours, round_id, beacon)
    if graph is not None and tuple(graph) != made.sets:
        raise InvalidParameterError(
            "`graph` is not the neighbour graph of this config, round id and beacon"
        )
    return made


def neighbour_graph(
    n_clients: int, neighbours: int, round_id: bytes, beacon: bytes | None = None
) -> tuple[frozenset[int], ...]:
    """Neighbour sets of all clients for one round.

    Parameters
    ----------
    n_clients:
        Number of clients ``n >= 2``.
    neighbours:
        ``k``: ``n - 1`` (complete graph) or even in ``[2, n - 2]``.
    round_id:
        The public round id.
    beacon:
        Public beacon output (see :func:`ring_order`), or ``None``.

    Returns
    -------
    tuple[frozenset[int], ...]
        Entry ``u`` is the set of ``k`` neighbours of client ``u`` (never ``u``).

    Examples
    --------
    >>> g = neighbour_graph(6, 2, bytes(16))
    >>> all(len(s) == 2 for s in g) and all(u in g[v] for u in range(6) for v in g[u])
    True
    """
    return make_graph(n_clients, neighbours, round_id, beacon).sets


def _range_min(
    values: NDArray[np.int64], lo: NDArray[np.int64], hi: NDArray[np.int64]
) -> NDArray[np.int64]:
    """``min(values[lo[i] : hi[i] + 1])`` for every ``i`` (sparse table; lo <= hi)."""
    table = [values]
    span = 1
    while 2 * span <= values.size:
        prev = table[-1]
        table.append(np.minimum(prev[:-span], prev[span:]))
        span *= 2
    length = hi - lo + 1
    level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = np.empty(lo.size, dtype=np.int64)
    for j in np.unique(level):
        sel = level == j
        width = 1 << int(j)
        row = table[int(j)]
        out[sel] = np.minimum(row[lo[sel]], row[hi[sel] - width + 1])
    return out


def separator_size(order: Sequence[int], neighbours: int, members: Iterable[int]) -> int | None:
    """Fewest members whose removal disconnects the members' subgraph of a Harary ring.

    The graph is ``H(k, n)`` on the ring ``order``; the subgraph is induced by
    ``members``. Two members are adjacent iff their ring distance is at most
    ``h = k / 2``, so the induced subgraph is disconnected iff the ring has two
    runs of at least ``h`` consecutive positions free of members with members on
    both arcs between them. The cheapest way to make that happen removes the
    members of two disjoint windows of exactly ``h`` positions.

    Parameters
    ----------
    order:
        The ring order ``π`` (a permutation of ``0 .. n - 1``).
    neighbours:
        ``k``, even, ``2 <= k <= n - 2``.
    members:
        The surviving clients.

    Returns
    -------
    int or None
        The size of a smallest separating set of members (``0`` if the subgraph
        is already disconnected), or ``None`` when no set of members separates it
        (fewer than two members can remain on separate arcs).

    Examples
    --------
    >>> order = tuple(range(10))
    >>> separator_size(order, 2, range(10))  # a cycle: remove two vertices
    2
    >>> separator_size(order, 2, [0, 1, 2, 5, 6, 7])  # already two arcs
    0
    """
    n = len(order)
    h = neighbours // 2
    if h < 1 or 2 * h > n - 2:
        raise InvalidParameterError(f"`neighbours` must be even in [2, {n - 2}]; got {neighbours}")
    position = np.empty(n, dtype=np.int64)
    position[np.asarray(order, dtype=np.int64)] = np.arange(n)
    mem = np.fromiter(members, dtype=np.int64)
    m = np.zeros(n, dtype=np.int64)
    m[position[mem]] = 1
    if int(m.sum()) < 2:
        return None
    # Three copies of the ring, positions 0 .. 3n - 1, so every index below is in range.
    m3 = np.tile(m, 3)
    csum = np.concatenate(([0], np.cumsum(m3)))
    win = csum[h : h + 2 * n] - csum[: 2 * n]  # win[s] = members in positions s .. s + h - 1
    idx = np.arange(3 * n)
    # next member at or after x, last member at or before y (unwrapped positions).
    nxt = np.where(m3 == 1, idx, 3 * n)
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    prv = np.where(m3 == 1, idx, -1)
    prv = np.maximum.accumulate(prv)
    s1 = np.arange(n, 2 * n)  # window one starts at s1; window two at s2 in (s1, s1 + n)
    lo = nxt[s1 + h] + 1  # arc s1 + h .. s2 - 1 holds a member
    hi = prv[s1 + n - 1] - h  # arc s2 + h .. s1 + n - 1 holds a member
    ok = lo <= hi
    if not ok.any():
        return None
    s1, lo, hi = s1[ok], lo[ok], hi[ok]
    best = win[s1 - n] + _range_min(win, lo - n, hi - n)
    return int(best.min())


def split_reason(size: int, threshold: int) -> str:
    """The sentence every party uses when the surviving-graph rule fails."""
    if size == 0:
        return (
            "the survivors' graph is already split into parts whose sums the server "
            "could learn separately (a partial sum, not only the sum of all survivors)"
        )
    return (
        f"removing {size} survivor(s) splits the survivors' graph, and up to threshold - 1 = "
        f"{threshold - 1} colluding clients could be those: the server could then learn a "
        "partial sum, not only the sum of all survivors"
    )


def voting_peers(
    members: Iterable[int], degree: int, order: Sequence[int] | None = None
) -> dict[int, frozenset[int]]:
    """The symmetric peers each survivor exchanges consistency votes with.

    The members are placed on the public ring (``order`` restricted to them;
    ascending ids when ``order`` is ``None``) and each is joined to the
    ``ceil(degree / 2)`` members on either side, or to every other member when
    that covers them all. Symmetric, so one pairwise key serves a vote in each
    direction; on the SecAgg+ ring it contains every surviving neighbour within
    ``ceil(degree / 2)`` positions, whose keys the advertisement tags already used.

    Which votes a client receives does not matter to the quorum argument (a
    malicious server can always withhold votes); this choice only makes the
    honest server's round cheaper (see :func:`~protocols.secagg.config.voting_degree`).

    Examples
    --------
    >>> peers = voting_peers(range(6), 2)
    >>> sorted(peers[0]), sorted(peers[3])
    ([1, 5], [2, 4])
    >>> sorted(voting_peers(range(4), 3)[0])
    [1, 2, 3]
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise InvalidParameterError(f"`degree` must be an integer >= 0; got {degree!r}")
    chosen = set(members)
    ring = [u for u in order if u in chosen] if order is not None else sorted(chosen)
    if len(ring) != len(chosen):
        raise InvalidParameterError("`order` must list every member")
    m = len(ring)
    half = -(-degree // 2)
    if 2 * half >= m - 1:
        everyone = frozenset(ring)
        return {u: everyone - {u} for u in ring}
    return {
        u: frozenset(ring[(pos + off) % m] for off in range(-half, half + 1) if off != 0)
        for pos, u in enumerate(ring)
    }
