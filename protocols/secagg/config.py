"""Protocol stages and the validated :class:`SecAggConfig`.

The parameter rules follow Bell et al. 2020 ("Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", SecAgg+) with plain SecAgg (Bonawitz et al.
2017) as the special case ``neighbours == n_clients - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from protocols.errors import InvalidParameterError
from protocols.secagg.encoding import FixedPointEncoder
from protocols.secagg.pki import IdentityDirectory

__all__ = [
    "MAX_CLIENTS",
    "MAX_VECTOR_LENGTH",
    "PASSIVE_STAGES",
    "PROTOCOL_STAGES",
    "SecAggConfig",
    "Stage",
    "consistency_quorum",
    "default_neighbours",
    "default_threshold",
    "default_vote_slack",
    "dropout_failure_probability",
    "quorum_shortfall",
    "voting_degree",
]

#: Largest supported number of clients (client ids are ``0 .. n_clients - 1``).
MAX_CLIENTS: Final = 1 << 20
#: Largest supported vector length (the wire format stores it in 32 bits).
MAX_VECTOR_LENGTH: Final = (1 << 32) - 1


class Stage(str, Enum):
    """The stages of one secure-aggregation round, in order.

    ``ADVERTISE_KEYS`` → ``SHARE_KEYS`` → ``MASKED_INPUT`` → ``CONSISTENCY_CHECK``
    → ``UNMASKING`` are the protocol stages of Bonawitz et al. 2017, rounds 0–4
    (the consistency check exists only with ``active_security``, the
    malicious-server variant of §4). ``DONE`` and ``ABORTED`` are terminal states
    of the state machines.
    """

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    DONE = "done"
    ABORTED = "aborted"

    @property
    def code(self) -> int:
        """One-byte code of the stage, bound into AEAD associated data."""
        return _STAGE_CODES[self]


# Explicit codes: the codes of the first version never change (the consistency
# check, added later, takes the next free one).
_STAGE_CODES: Final[dict[Stage, int]] = {
    Stage.ADVERTISE_KEYS: 0,
    Stage.SHARE_KEYS: 1,
    Stage.MASKED_INPUT: 2,
    Stage.UNMASKING: 3,
    Stage.DONE: 4,
    Stage.ABORTED: 5,
    Stage.CONSISTENCY_CHECK: 6,
}

#: Every stage at which a client can drop out, in protocol order (active security).
PROTOCOL_STAGES: Final = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASKING,
)
#: The stages of the honest-but-curious variant (``active_security=False``).
PASSIVE_STAGES: Final = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.UNMASKING,
)


def default_threshold(neighbours: int) -> int:
    """Smallest secure reconstruction threshold for ``neighbours`` neighbours.

    Each client's secrets are shared among its ``neighbours`` neighbours plus
    itself (``neighbours + 1`` share holders). The threshold must be a strict
    majority of the holders, otherwise two disjoint sets of holders could
    reconstruct the self-mask seed and the masking key of the same client.

    Parameters
    ----------
    neighbours:
        Number of neighbours ``k`` of every client, ``k >= 1``.

    Returns
    -------
    int
        ``floor((k + 1) / 2) + 1``.

    Examples
    --------
    >>> default_threshold(9)
    6
    >>> default_threshold(2)
    2
    """
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise InvalidParameterError(f"`neighbours` must be an integer >= 1; got {neighbours!r}")
    return (neighbours + 1) // 2 + 1


def dropout_failure_probability(neighbours: int, threshold: int, dropout_rate: float) -> float:
    """Probability that fewer than ``threshold`` of a client's neighbours survive.

    Dropouts are modelled as independent with probability ``dropout_rate``. The
    client itself is not counted (the worst case: a dropped client's masking key
    must be rebuilt from its neighbours' shares alone).

    Parameters
    ----------
    neighbours:
        Number of neighbours ``k``.
    threshold:
        Reconstruction threshold ``t``.
    dropout_rate:
        Per-client dropout probability, in ``[0, 1]``.

    Returns
    -------
    float
        ``P[Binomial(k, 1 - dropout_rate) < t]``.
    """
    q = 1.0 - dropout_rate
    return math.fsum(
        math.comb(neighbours, j) * q**j * dropout_rate ** (neighbours - j)
        for j in range(min(threshold, neighbours + 1))
    )


def default_neighbours(
    n_clients: int, *, max_dropout_rate: float = 0.1, failure_log2: int = -20
) -> int:
    """Default number of neighbours ``k`` of the SecAgg+ graph for ``n_clients``.

    The rule: the smallest even ``k`` such that, with the default (majority)
    threshold and independent dropouts of probability ``max_dropout_rate``,

    * the union bound over all clients of "fewer than ``t`` of a client's
      neighbours survive" (the round would abort) is at most
      ``2**failure_log2``, and
    * the probability that the surviving graph splits into two arcs (which
      would reveal two partial sums; it needs two runs of ``k/2`` consecutive
      dropped clients on the Harary ring) is at most ``n**2 * rate**k <= 2**-40``;

    capped at ``n_clients - 1`` (the complete graph, i.e. plain SecAgg). Both
    bounds grow like ``log n``, so ``k = O(log n)``.

    Parameters
    ----------
    n_clients:
        Number of clients ``n``, in ``[2, 2**20]``.
    max_dropout_rate:
        Design dropout probability per client over the whole round, in ``[0, 1)``.
    failure_log2:
        log2 of the tolerated probability that the round aborts, ``<= -1``.

    Returns
    -------
    int
        ``k``: an even number in ``[2, n - 2]``, or ``n - 1``.

    Examples
    --------
    >>> default_neighbours(10)
    9
    >>> default_neighbours(1000)
    38
    """
    if isinstance(n_clients, bool) or not isinstance(n_clients, int):
        raise InvalidParameterError(f"`n_clients` must be an integer; got {n_clients!r}")
    if not 2 <= n_clients <= MAX_CLIENTS:
        raise InvalidParameterError(f"`n_clients` must be in [2, {MAX_CLIENTS}]; got {n_clients}")
    if not 0.0 <= max_dropout_rate < 1.0:
        raise InvalidParameterError(
            f"`max_dropout_rate` must be in [0, 1); got {max_dropout_rate!r}"
        )
    if failure_log2 > -1:
        raise InvalidParameterError(f"`failure_log2` must be <= -1; got {failure_log2!r}")
    target = 2.0**failure_log2
    for k in range(2, n_clients - 1, 2):
        t = default_threshold(k)
        abort = n_clients * dropout_failure_probability(k, t, max_dropout_rate)
        split = n_clients**2 * max_dropout_rate**k
        if abort <= target and split <= 2.0**-40:
            return k
    return n_clients - 1


def consistency_quorum(n_clients: int, threshold: int) -> int:
    """Signatures over one survivor set that a client needs before it unmasks.

    Honest clients sign one survivor set per round; up to ``threshold - 1``
    colluding clients may sign several. Two different sets each signed by ``q``
    of the ``n`` registered clients share at least ``2q - n`` signers, all of
    whom would have to be colluders; ``q = floor((n + t - 1) / 2) + 1`` makes
    ``2q - n >= t``, so at most one survivor set can ever gather a quorum and
    every honest client that unmasks uses the same one.

    Parameters
    ----------
    n_clients:
        Registered clients ``n``.
    threshold:
        Shamir threshold ``t`` (the collusion bound is ``t - 1``).

    Returns
    -------
    int
        ``floor((n + t - 1) / 2) + 1`` (at least ``t``).

    Examples
    --------
    >>> consistency_quorum(100, 18)
    59
    >>> consistency_quorum(10, 6)
    8
    """
    return max(threshold, (n_clients + threshold - 1) // 2 + 1)


def quorum_shortfall(
    n_clients: int, neighbours: int, threshold: int, survivors: Collection[int], what: str
) -> str:
    """The explanation every party gives when too few clients are left for the quorum.

    Names the quorum and how it is computed, the survivors, how many dropouts the
    consistency check tolerates at this ``n`` (and the honest-but-curious protocol
    in comparison: ``k + 1 - t`` among any client's share holders) and what to change.

    Examples
    --------
    >>> print(quorum_shortfall(10, 9, 6, [0, 1, 2, 3, 4, 5, 6], "sent masked inputs"))
    ... # doctest: +NORMALIZE_WHITESPACE
    only 7 of the 10 clients sent masked inputs (survivors [0, 1, 2, 3, 4, 5, 6]); the
    consistency check of the malicious-server protocol needs a quorum of q = floor((n +
    t - 1) / 2) + 1 = 8 votes for one survivor set (n = 10 clients, threshold t = 6),
    so it tolerates at most n - q = 2 dropouts in a round of 10 (the honest-but-curious
    protocol: k + 1 - t = 4 among any client's 10 share holders); to tolerate more, run
    larger rounds, or use the honest-but-curious protocol (`active_security=False`;
    `[privacy] secagg_active_security = false`) where the server is trusted to follow
    the protocol
    """
    q = consistency_quorum(n_clients, threshold)
    alive = sorted(survivors)
    shown = str(alive) if len(alive) <= 20 else f"{alive[:20]} and {len(alive) - 20} more"
    return (
        f"only {len(alive)} of the {n_clients} clients {what} (survivors {shown}); the "
        "consistency check of the malicious-server protocol needs a quorum of "
        f"q = floor((n + t - 1) / 2) + 1 = {q} votes for one survivor set (n = {n_clients} "
        f"clients, threshold t = {threshold}), so it tolerates at most n - q = "
        f"{n_clients - q} dropouts in a round of {n_clients} (the honest-but-curious "
        f"protocol: k + 1 - t = {neighbours + 1 - threshold} among any client's "
        f"{neighbours + 1} share holders); to tolerate more, run larger rounds, or use the "
        "honest-but-curious protocol (`active_security=False`; `[privacy] "
        "secagg_active_security = false`) where the server is trusted to follow the protocol"
    )


def _binomial_upper_tail(trials: int, p: float, above: int) -> float:
    """``P[Binomial(trials, p) > above]``, summed from ``above + 1`` in log space
    until the terms vanish (fine for any ``trials`` up to ``MAX_CLIENTS``); 1.0
    when ``above`` is below the mean (the tail is then ``>= 1/2``: only ever
    compared with targets below that)."""
    if above >= trials or p <= 0.0:
        return 0.0
    if p >= 1.0 or above < trials * p:
        return 1.0
    j = above + 1
    log_term = (
        math.lgamma(trials + 1)
        - math.lgamma(j + 1)
        - math.lgamma(trials - j + 1)
        + j * math.log(p)
        + (trials - j) * math.log1p(-p)
    )
    term, total, ratio = math.exp(log_term), 0.0, p / (1.0 - p)
    while j <= trials:
        total += term
        if term < total * 1e-17:
            break
        term *= (trials - j) / (j + 1) * ratio
        j += 1
    return min(1.0, total)


def default_vote_slack(
    n_clients: int, threshold: int, *, max_dropout_rate: float = 0.1, failure_log2: int = -20
) -> int:
    """The ``vote_slack`` at which a top-up pass is almost never needed: the same
    design rule as :func:`default_neighbours` (``SecAggConfig(vote_slack=None)``).

    The smallest ``s >= 1`` such that, with independent dropouts of probability
    ``max_dropout_rate`` all falling at the consistency check, the union bound over
    the clients of "more than ``s`` of a client's ``q - 1 + s`` voting peers drop"
    is at most ``2**failure_log2``; capped at ``n - q`` (then every survivor votes
    to every other).

    Examples
    --------
    >>> [default_vote_slack(n, t) for n, t in ((10, 6), (100, 18), (1000, 20))]
    [2, 27, 111]
    """
    q = consistency_quorum(n_clients, threshold)
    cap = max(1, n_clients - q)
    target = 2.0**failure_log2

    def ok(slack: int) -> bool:
        return n_clients * _binomial_upper_tail(q - 1 + slack, max_dropout_rate, slack) <= target

    if ok(1):
        return 1
    if not ok(cap):
        return cap
    lo, hi = 1, cap  # not ok(lo), ok(hi); the tail falls as the slack grows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def voting_degree(n_survivors: int, quorum: int, slack: int) -> int:
    """How many other survivors each survivor exchanges consistency votes with.

    A client unmasks only with ``quorum`` votes (its own included) over the set it
    voted for, so it needs ``quorum - 1`` votes from others; ``slack`` more absorb
    that many dropouts (or invalid votes) among its voting peers before the
    server needs a top-up pass. Voting with every other survivor
    (``n_survivors - 1``) costs one pairwise key per pair of survivors; this
    degree cuts the keys a
    client needs on first meeting from ``n_survivors - 1`` to about
    ``quorum - 1 + slack`` without changing the quorum argument
    (:func:`consistency_quorum`: it holds whoever the votes are addressed to).

    Examples
    --------
    >>> voting_degree(100, 59, 10)
    68
    >>> voting_degree(10, 8, 1)
    8
    >>> voting_degree(9, 8, 5)
    8
    """
    return max(0, min(n_survivors - 1, quorum - 1 + slack))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one secure-aggregation round; all parties must agree.

    Validated at construction: every problem is collected and reported at once
    in one :class:`~protocols.errors.InvalidParameterError`.

    Parameters
    ----------
    n_clients:
        Number of registered clients ``n`` in ``[2, 2**20]``; client ids are
        ``0 .. n - 1``.
    vector_length:
        Length ``d`` of every client's input vector, in ``[1, 2**32 - 1]``.
    neighbours:
        Neighbours ``k`` of each client in the public SecAgg+ graph: an even
        number in ``[2, n - 2]`` (a random Harary graph) or ``n - 1`` (the
        complete graph: plain SecAgg). ``None`` picks
        :func:`default_neighbours` ``(n, max_dropout_rate=...)``.
    threshold:
        Shamir reconstruction threshold ``t`` among the ``k + 1`` share holders
        (the neighbours and the client itself), in ``[floor((k+1)/2) + 1, k + 1]``
        and ``>= 2``. ``None`` picks :func:`default_threshold` ``(k)``. Up to
        ``t - 1`` colluding holders learn nothing about a client's secrets; the
        round survives as long as ``t`` holders of every needed secret respond.
    clip_range:
        Inputs are clipped to ``[-clip_range, clip_range]`` before encoding; a
        finite float ``> 0``.
    precision_bits:
        Fixed-point precision ``q`` in ``[1, 32]``: each coordinate is encoded
        as an integer in ``[0, 2**q - 1]``.
    sign_advertisements:
        Clients authenticate their key advertisements to their neighbours with
        tags under pairwise keys from their long-term identity keys (the PKI), and
        verify their neighbours' (stops key substitution by the server).
        ``None`` (default) follows ``active_security``; ``False`` together with
        ``active_security=True`` is refused.
    max_dropout_rate:
        Design dropout rate used to choose the default ``neighbours`` and
        ``vote_slack``; in ``[0, 1)``.
    active_security:
        The malicious-server variant (Bonawitz et al. 2017, §4, carried over to
        the SecAgg+ graph): signed advertisements, the consistency-check stage
        (every client signs the survivor set it was given and unmasks only after
        verifying :func:`consistency_quorum` signatures over that same set), and
        the surviving-graph rule (no set of ``t - 1`` clients may split the
        survivors' graph). ``False`` is the honest-but-curious protocol: cheaper
        and more tolerant of dropouts, but a malicious server can then learn
        individual inputs (``docs/secagg.md``, threat model).
    pki:
        The identity keys of all ``n`` clients (an :class:`IdentityDirectory`);
        needed whenever advertisements are signed, here or as the clients' and
        server's ``identity_public_keys``.
    vote_slack:
        Active security: how many dropouts (or invalid votes) among its voting
        peers a survivor absorbs at the consistency check without a *top-up
        pass*; each survivor first exchanges votes with :func:`voting_degree`
        ``= min(|U3| - 1, quorum - 1 + vote_slack)`` others
        (:func:`~protocols.secagg.graph.voting_peers`). When voting peers drop at
        the check, the server asks the other signers for votes to the survivors
        left short of the quorum (one more message round trip) before
        forwarding. ``None`` (default): :func:`default_vote_slack` (the design
        rule of the default ``neighbours``, at ``max_dropout_rate``: a top-up is
        almost never needed, and up to ``vote_slack`` invalid votes from
        malicious clients cost no honest client its quorum); ``0``: the fewest
        pairwise keys on first meeting (≈ 30 % fewer at n = 100), a top-up
        whenever a voting peer drops at the check, and one invalid vote makes
        the honest clients that needed it refuse to unmask; ``n_clients`` or
        more: every survivor votes to every other. The security argument does
        not depend on it.

    Examples
    --------
    >>> cfg = SecAggConfig(n_clients=10, vector_length=4)
    >>> (cfg.neighbours, cfg.threshold, cfg.modulus_bits, cfg.quorum)
    (9, 6, 20, 8)
    >>> [s.value for s in cfg.stages][3:]
    ['consistency_check', 'unmasking']
    >>> SecAggConfig(n_clients=10, vector_length=4, threshold=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protocols.errors.InvalidParameterError: invalid SecAggConfig: `threshold` must be in [6, 10] for 9 neighbours (10 share holders); got 1...
    """

    n_clients: int
    vector_length: int
    neighbours: int | None = None
    threshold: int | None = None
    clip_range: float = 1.0
    precision_bits: int = 16
    sign_advertisements: bool | None = None
    max_dropout_rate: float = 0.1
    active_security: bool = True
    pki: IdentityDirectory | None = None
    vote_slack: int | None = None
    _encoder: FixedPointEncoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        n = self.n_clients
        if not _is_int(n) or not 2 <= n <= MAX_CLIENTS:
            problems.append(f"`n_clients` must be an integer in [2, {MAX_CLIENTS}]; got {n!r}")
        if not _is_int(self.vector_length) or not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            problems.append(
                f"`vector_length` must be an integer in [1, {MAX_VECTOR_LENGTH}]; "
                f"got {self.vector_length!r}"
            )
        if (
            isinstance(self.clip_range, bool)
            or not isinstance(self.clip_range, (int, float))
            or not math.isfinite(self.clip_range)
            or self.clip_range <= 0
        ):
            problems.append(f"`clip_range` must be a finite number > 0; got {self.clip_range!r}")
        if not _is_int(self.precision_bits) or not 1 <= self.precision_bits <= 32:
            problems.append(f"`precision_bits` must be in [1, 32]; got {self.precision_bits!r}")
        if not isinstance(self.active_security, bool):
            problems.append(f"`active_security` must be a bool; got {self.active_security!r}")
        sign = self.sign_advertisements
        if sign is None:
            sign = bool(self.active_security)
        if not isinstance(sign, bool):
            problems.append(f"`sign_advertisements` must be a bool or None; got {sign!r}")
        elif self.active_security is True and not sign:
            problems.append(
                "`sign_advertisements` must not be False with `active_security=True`: "
                "a malicious server could otherwise substitute the clients' public keys"
            )
        if self.pki is not None:
            if not isinstance(self.pki, IdentityDirectory):
                problems.append(
                    f"`pki` must be an IdentityDirectory; got {type(self.pki).__name__}"
                )
            elif _is_int(n) and len(self.pki) != n:
                problems.append(
                    f"`pki` must hold the identity keys of all {n} clients; got {len(self.pki)}"
                )
        if (
            isinstance(self.max_dropout_rate, bool)
            or not isinstance(self.max_dropout_rate, (int, float))
            or not 0.0 <= self.max_dropout_rate < 1.0
        ):
            problems.append(f"`max_dropout_rate` must be in [0, 1); got {self.max_dropout_rate!r}")
        n_ok = _is_int(n) and 2 <= n <= MAX_CLIENTS
        k = self.neighbours
        if k is None and n_ok and not any("max_dropout_rate" in p for p in problems):
            k = default_neighbours(n, max_dropout_rate=float(self.max_dropout_rate))
        k_ok = False
        if k is not None and n_ok:
            if not _is_int(k) or not (k == n - 1 or (k % 2 == 0 and 2 <= k <= n - 2)):
                problems.append(
                    f"`neighbours` must be n_clients - 1 = {n - 1} (plain SecAgg) or an even "
                    f"number in [2, {n - 2}] (SecAgg+); got {k!r}"
                )
            else:
                k_ok = True
        t = self.threshold
        if k_ok and k is not None:
            lo, hi = max(2, default_threshold(k)), k + 1
            if t is None:
                t = lo
            elif not _is_int(t) or not lo <= t <= hi:
                problems.append(
                    f"`threshold` must be in [{lo}, {hi}] for {k} neighbours ({k + 1} share "
                    f"holders); got {t!r}: a threshold <= half the share holders lets two "
                    "disjoint sets of holders reconstruct both secrets of one client, "
                    "and a threshold of 1 reveals them outright"
                )
        slack = self.vote_slack
        if slack is not None and (not _is_int(slack) or slack < 0):
            problems.append(f"`vote_slack` must be an integer >= 0 or None; got {slack!r}")
        if problems:
            raise InvalidParameterError("invalid SecAggConfig: " + "; ".join(problems))
        if slack is None:
            assert t is not None
            slack = default_vote_slack(n, t, max_dropout_rate=float(self.max_dropout_rate))
        object.__setattr__(self, "vote_slack", slack)
        object.__setattr__(self, "neighbours", k)
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "sign_advertisements", sign)
        object.__setattr__(
            self,
            "_encoder",
            FixedPointEncoder(
                clip_range=float(self.clip_range),
                precision_bits=self.precision_bits,
                max_summands=n,
            ),
        )

    @property
    def k(self) -> int:
        """The resolved number of neighbours."""
        assert self.neighbours is not None
        return self.neighbours

    @property
    def t(self) -> int:
        """The resolved reconstruction threshold."""
        assert self.threshold is not None
        return self.threshold

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The protocol stages of this config, in order."""
        return PROTOCOL_STAGES if self.active_security else PASSIVE_STAGES

    @property
    def quorum(self) -> int:
        """Signatures over one survivor set a client needs before unmasking
        (:func:`consistency_quorum`; only used with ``active_security``)."""
        return consistency_quorum(self.n_clients, self.t)

    @property
    def is_plain_secagg(self) -> bool:
        """True when the graph is complete (every client neighbours every other)."""
        return self.k == self.n_clients - 1

    @property
    def encoder(self) -> FixedPointEncoder:
        """The fixed-point encoder shared by clients and server."""
        return self._encoder

    @property
    def modulus_bits(self) -> int:
        """``b``: arithmetic is modulo ``2**b``; the sum of ``n`` inputs cannot overflow."""
        return self._encoder.modulus_bits
