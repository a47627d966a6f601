"""The public neighbour graph of SecAgg+ (a random Harary graph).

Bell et al. 2020 connect each client to ``k`` neighbours of a random
``k``-regular graph. We use the Harary graph ``H(k, n)`` on a random ordering
of the clients: the clients are placed on a ring in the order of a permutation
``π`` and each is joined to the ``k/2`` clients on either side, which makes the
graph exactly ``k``-regular. ``π`` is a Fisher–Yates shuffle driven by an
AES-CTR stream keyed by HKDF-SHA256 of the public round id, so every party
computes the same graph and the server cannot choose it. ``k = n - 1`` is the
complete graph (plain SecAgg).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import InvalidParameterError
from protocols.secagg.rng import SecureRandom

__all__ = ["neighbour_graph", "ring_order"]


def ring_order(n_clients: int, round_id: bytes) -> tuple[int, ...]:
    """The public random ring order ``π`` of the clients for ``round_id``.

    Parameters
    ----------
    n_clients:
        Number of clients ``n >= 2``.
    round_id:
        The public round id (16 bytes).

    Returns
    -------
    tuple[int, ...]
        A permutation of ``0 .. n - 1``.
    """
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"secrelay/secagg/v1/neighbour-graph",
    ).derive(round_id)
    rng = SecureRandom(key)
    order = list(range(n_clients))
    for i in range(n_clients - 1, 0, -1):
        j = rng.randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    return tuple(order)


def neighbour_graph(n_clients: int, neighbours: int, round_id: bytes) -> tuple[frozenset[int], ...]:
    """Neighbour sets of all clients for one round.

    Parameters
    ----------
    n_clients:
        Number of clients ``n >= 2``.
    neighbours:
        ``k``: ``n - 1`` (complete graph) or even in ``[2, n - 2]``.
    round_id:
        The public round id.

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
    n, k = n_clients, neighbours
    if n < 2:
        raise InvalidParameterError(f"`n_clients` must be >= 2; got {n}")
    if k == n - 1:
        everyone = frozenset(range(n))
        return tuple(everyone - {u} for u in range(n))
    if k % 2 or not 2 <= k <= n - 2:
        raise InvalidParameterError(
            f"`neighbours` must be {n - 1} or even in [2, {n - 2}]; got {k}"
        )
    order = ring_order(n, round_id)
    half = k // 2
    sets: list[frozenset[int]] = [frozenset()] * n
    for pos, u in enumerate(order):
        sets[u] = frozenset(order[(pos + off) % n] for off in range(-half, half + 1) if off != 0)
    return tuple(sets)
