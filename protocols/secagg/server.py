"""The server state machine of SecAgg / SecAgg+ and the record of what it saw.

The server collects the messages of one stage with :meth:`SecAggServer.receive`
(each validated in full, then committed; rejected messages leave no trace) and
closes the stage with :meth:`SecAggServer.advance`, which returns the messages
to send for the next stage (client id → bytes). After the unmasking stage
:meth:`SecAggServer.advance` computes the sum and :meth:`SecAggServer.result`
returns it.

Surviving sets (Bonawitz et al. 2017): ``U1`` advertised keys, ``U2`` sent
shares, ``U3`` sent masked inputs (their inputs are summed), ``U4`` answered
the unmask request (with ``active_security``, ``U4`` are the clients that first
signed the survivor sets in the consistency check). The server reconstructs the
self-mask seeds of ``U3`` and the masking keys of the clients in ``U2 \\ U3``
that have a neighbour in ``U3``, never both for one client (the sets are
disjoint, and each client refuses to reveal both).

An honest server aborts rather than reveal a partial sum: when it closes the
masked-input stage it checks the surviving-graph rule
(:func:`~protocols.secagg.graph.separator_size`: no ``t - 1`` survivors may split
the survivors' graph), and it rebuilds every secret from all the shares it got,
checking the extra shares against the reconstruction, before unmasking anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from protocols.secagg.config import SecAggConfig, Stage, quorum_shortfall, voting_degree
from protocols.secagg.crypto import (
    load_x25519,
    pairwise_mask_seed,
    x25519_exchange,
)
from protocols.secagg.graph import resolve_graph, split_reason, voting_peers
from protocols.secagg.messages import (
    MESSAGE_STAGE,
    ROUND_ID_BYTES,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyVote,
    ForwardedVotes,
    KeyDirectory,
    MaskedInput,
    MessageType,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    peek_type,
)
from protocols.secagg.pki import IdentityDirectory
from protocols.secagg.prg import MaskExpander
from protocols.secagg.shamir import InconsistentSharesError, combine_shares_verified

__all__ = ["AggregateResult", "ReceivedMessage", "SecAggServer", "ServerView"]

_Commit = Callable[[], int]

_SERVER_EXPECTS: dict[Stage, MessageType] = {
    Stage.ADVERTISE_KEYS: MessageType.ADVERTISE_KEYS,
    Stage.SHARE_KEYS: MessageType.SHARE_KEYS,
    Stage.MASKED_INPUT: MessageType.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK: MessageType.CONSISTENCY_VOTE,
    Stage.UNMASKING: MessageType.UNMASK_RESPONSE,
}


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted: its stage, sender and exact bytes."""

    stage: Stage
    sender: int
    data: bytes = dataclasses.field(repr=False)


@dataclass(frozen=True)
class ServerView:
    """Everything the server received in one round, in arrival order.

    This is the honest-but-curious server's view for attacks and transcripts:
    the exact bytes of every accepted client message (rejected messages change
    nothing and are not recorded), plus the public parameters.

    Attributes
    ----------
    config, round_id:
        The public parameters.
    received:
        Accepted messages in arrival order.
    sent:
        Server → client messages, as ``(stage, receiver, bytes)``.
    """

    config: SecAggConfig
    round_id: bytes
    received: tuple[ReceivedMessage, ...]
    sent: tuple[tuple[Stage, int, bytes], ...] = dataclasses.field(repr=False)

    def messages(self, stage: Stage) -> tuple[bytes, ...]:
        """The bytes of every message received at ``stage``, in arrival order."""
        return tuple(m.data for m in self.received if m.stage is stage)

    def by_stage(self) -> dict[Stage, dict[int, bytes]]:
        """Stage → sender → bytes of every received message."""
        out: dict[Stage, dict[int, bytes]] = {}
        for m in self.received:
            out.setdefault(m.stage, {})[m.sender] = m.data
        return out


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of a completed round.

    Attributes
    ----------
    sum:
        float64 decoded sum of the survivors' (clipped) inputs; per-coordinate
        error ``< len(survivors) * config.encoder.step``.
    encoded_sum:
        The exact integer sum of the survivors' encodings.
    survivors:
        Sorted ids whose inputs are in the sum (``U3``).
    responders:
        Sorted ids that answered the unmask request (``U4``).
    """

    sum: NDArray[np.float64] = dataclasses.field(repr=False)
    encoded_sum: NDArray[np.unsignedinteger] = dataclasses.field(repr=False)
    survivors: tuple[int, ...]
    responders: tuple[int, ...]


class SecAggServer:
    """The server of one secure-aggregation round.

    Parameters
    ----------
    config:
        The round's public parameters.
    round_id:
        The public 16-byte round id.
    identity_public_keys:
        Client id → raw identity public key; accepted for symmetry with the
        clients (the server cannot check the clients' authenticator tags — they
        are addressed to other clients — so it only checks who they address).
    graph:
        A precomputed :func:`~protocols.secagg.graph.make_graph`; ``None``
        computes it.
    beacon:
        The public beacon value the graph is derived from; ``None``: the round id alone.
    """

    def __init__(
        self,
        *,
        config: SecAggConfig,
        round_id: bytes,
        identity_public_keys: Mapping[int, bytes] | None = None,
        graph: Sequence[frozenset[int]] | None = None,
        beacon: bytes | None = None,
    ) -> None:
        if not isinstance(round_id, bytes) or len(round_id) != ROUND_ID_BYTES:
            raise InvalidParameterError(
                f"`round_id` must be {ROUND_ID_BYTES} bytes; got {round_id!r}"
            )
        pki = config.pki
        if pki is None and identity_public_keys is not None:
            pki = IdentityDirectory.from_mapping(identity_public_keys, config.n_clients)
        self._config = config
        self._round_id = round_id
        self._pki = pki
        self._graph = resolve_graph(config.n_clients, config.k, round_id, beacon, graph)
        self._stage = Stage.ADVERTISE_KEYS
        self._received: list[ReceivedMessage] = []
        self._sent: list[tuple[Stage, int, bytes]] = []
        self._ads: dict[int, AdvertiseKeys] = {}
        self._ad_bytes: dict[int, bytes] = {}
        self._seen_keys: set[bytes] = set()
        self._shares: dict[int, ShareKeys] = {}
        self._masked: dict[int, MaskedInput] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self._u1: frozenset[int] = frozenset()
        self._u2: frozenset[int] = frozenset()
        self._u3: frozenset[int] = frozenset()
        self._signatures: dict[int, ConsistencyVote] = {}
        # Consistency check: the survivors each survivor exchanges votes with, and
        # the top-up pass (extra recipients per voter, and their answers).
        self._vote_peers: dict[int, frozenset[int]] = {}
        self._top_up: dict[int, tuple[int, ...]] = {}
        self._top_up_votes: dict[int, ConsistencyVote] = {}
        self._result: AggregateResult | None = None

    def __repr__(self) -> str:
        return f"SecAggServer(stage={self._stage.value!r}, n_clients={self._config.n_clients})"

    @property
    def stage(self) -> Stage:
        """The stage whose messages the server is collecting."""
        return self._stage

    @property
    def graph(self) -> tuple[frozenset[int], ...]:
        """The public neighbour graph."""
        return self._graph.sets

    @property
    def view(self) -> ServerView:
        """A frozen snapshot of everything the server has received so far."""
        return ServerView(self._config, self._round_id, tuple(self._received), tuple(self._sent))

    def expected_senders(self) -> frozenset[int]:
        """Clients from which a message is still expected at the current stage."""
        stage = self._stage
        if stage is Stage.ADVERTISE_KEYS:
            return frozenset(range(self._config.n_clients)) - set(self._ads)
        if stage is Stage.SHARE_KEYS:
            return self._u1 - set(self._shares)
        if stage is Stage.MASKED_INPUT:
            return self._u2 - set(self._masked)
        if stage is Stage.CONSISTENCY_CHECK:
            if self._top_up:
                return frozenset(self._top_up) - set(self._top_up_votes)
            return self._u3 - set(self._signatures)
        if stage is Stage.UNMASKING:
            return frozenset(self._requests) - set(self._responses)
        return frozenset()

    # --------------------------------------------------------------- receiving

    def receive(self, message: bytes) -> None:
        """Validate a client message of the current stage and record it.

        Raises
        ------
        MessageError
            Malformed, forged, replayed, duplicated, unexpected-sender or
            out-of-stage message; the server's state is unchanged.
        """
        msg_type = peek_type(message)
        want = _SERVER_EXPECTS.get(self._stage)
        if msg_type is not want:
            expecting = f"a {want.name} message" if want else "no message"
            raise MessageError(
                f"server at stage {self._stage.value!r} expects {expecting}; got "
                f"{msg_type.name} (stage {MESSAGE_STAGE[msg_type].value!r})"
            )
        commit = {
            MessageType.ADVERTISE_KEYS: self._validate_advertisement,
            MessageType.SHARE_KEYS: self._validate_shares,
            MessageType.MASKED_INPUT: self._validate_masked,
            MessageType.CONSISTENCY_VOTE: self._validate_vote,
            MessageType.UNMASK_RESPONSE: self._validate_response,
        }[msg_type](message)
        sender = commit()
        self._received.append(ReceivedMessage(self._stage, sender, message))

    def _check_sender(
        self, round_id: bytes, sender: int, allowed: frozenset[int], seen: Mapping[int, object]
    ) -> None:
        if round_id != self._round_id:
            raise MessageError("message is from another round (replayed or misrouted)")
        if sender >= self._config.n_clients:
            raise MessageError(f"unknown client id {sender}")
        if sender in seen:
            raise MessageError(
                f"duplicate message from client {sender} at stage {self._stage.value!r}"
            )
        if sender not in allowed:
            raise MessageError(
                f"client {sender} is not expected at stage {self._stage.value!r} "
                "(it dropped out or never joined)"
            )

    def _validate_advertisement(self, message: bytes) -> _Commit:
        ad = AdvertiseKeys.from_bytes(message)
        self._check_sender(
            ad.round_id, ad.sender, frozenset(range(self._config.n_clients)), self._ads
        )
        if self._config.sign_advertisements:
            # The tags are addressed to the neighbours; the server can only check
            # that there is exactly one for each of them.
            receivers = [peer for peer, _ in ad.tags]
            if receivers != sorted(self._graph[ad.sender]):
                raise MessageError(
                    f"client {ad.sender} must address one advertisement tag to each neighbour "
                    f"{sorted(self._graph[ad.sender])}; got {receivers}"
                )
        elif ad.tags:
            raise MessageError(
                "unexpected authenticator tags: advertisements are not authenticated"
            )
        if ad.encryption_key in self._seen_keys or ad.masking_key in self._seen_keys:
            raise MessageError(f"client {ad.sender} advertises a public key already in use")

        def commit() -> int:
            self._ads[ad.sender] = ad
            self._ad_bytes[ad.sender] = message
            self._seen_keys.update((ad.encryption_key, ad.masking_key))
            return ad.sender

        return commit

    def _validate_shares(self, message: bytes) -> _Commit:
        shares = ShareKeys.from_bytes(message)
        self._check_sender(shares.round_id, shares.sender, self._u1, self._shares)
        receivers = {peer for peer, _ in shares.ciphertexts}
        expected = self._graph[shares.sender] & self._u1
        if receivers != expected:
            raise MessageError(
                f"client {shares.sender} must send one ciphertext to each neighbour that "
                f"advertised keys {sorted(expected)}; got {sorted(receivers)}"
            )

        def commit() -> int:
            self._shares[shares.sender] = shares
            return shares.sender

        return commit

    def _validate_masked(self, message: bytes) -> _Commit:
        masked = MaskedInput.from_bytes(message)
        self._check_sender(masked.round_id, masked.sender, self._u2, self._masked)
        if masked.modulus_bits != self._config.modulus_bits:
            raise MessageError(
                f"masked input uses modulus 2**{masked.modulus_bits}; "
                f"expected 2**{self._config.modulus_bits}"
            )
        length = len(masked.data) // masked.dtype.itemsize
        if length != self._config.vector_length:
            raise MessageError(
                f"masked input has length {length}; expected {self._config.vector_length}"
            )

        def commit() -> int:
            self._masked[masked.sender] = masked
            return masked.sender

        return commit

    def _validate_vote(self, message: bytes) -> _Commit:
        vote = ConsistencyVote.from_bytes(message)
        receivers = [peer for peer, _ in vote.tags]
        if self._top_up:
            store = self._top_up_votes
            self._check_sender(vote.round_id, vote.sender, frozenset(self._top_up), store)
            expected = list(self._top_up[vote.sender])
            what = "extra recipients of the top-up pass"
        else:
            store = self._signatures
            self._check_sender(vote.round_id, vote.sender, self._u3, store)
            expected = sorted(self._vote_peers[vote.sender])
            what = "voting peers"
        if receivers != expected:
            raise MessageError(
                f"client {vote.sender}'s consistency vote must carry one tag for each of its "
                f"{len(expected)} {what}; got {len(receivers)} tags"
            )

        def commit() -> int:
            store[vote.sender] = vote
            return vote.sender

        return commit

    def _validate_response(self, message: bytes) -> _Commit:
        resp = UnmaskResponse.from_bytes(message)
        self._check_sender(resp.round_id, resp.sender, frozenset(self._requests), self._responses)
        request = self._requests[resp.sender]
        seed_owners = tuple(o for o, _ in resp.mask_seed_shares)
        key_owners = tuple(o for o, _ in resp.key_shares)
        if seed_owners != request.survivors or key_owners != request.dropped:
            raise MessageError(
                f"client {resp.sender}'s unmask response does not answer the request: "
                f"seed shares for {list(seed_owners)} (asked {list(request.survivors)}), "
                f"key shares for {list(key_owners)} (asked {list(request.dropped)})"
            )

        def commit() -> int:
            self._responses[resp.sender] = resp
            return resp.sender

        return commit

    # --------------------------------------------------------------- advancing

    def advance(self) -> dict[int, bytes]:
        """Close the current stage.

        Returns
        -------
        dict[int, bytes]
            Client id → the message to send it for the next stage (empty after
            the unmasking stage, when the result is ready).

        Raises
        ------
        ProtocolAbort
            Fewer than ``threshold`` clients survived the stage, or a needed
            secret has fewer than ``threshold`` shares. Nothing is reconstructed
            and no partial sum is released.
        """
        stage = self._stage
        if stage in (Stage.DONE, Stage.ABORTED):
            raise ProtocolAbort(stage.value, "the round is over")
        if stage is Stage.ADVERTISE_KEYS:
            self._u1 = frozenset(self._ads)
            self._require(len(self._u1), "clients advertised keys")
            out = {}
            for u in sorted(self._u1):
                peers = sorted(self._graph[u] & self._u1)
                ads = tuple(
                    dataclasses.replace(self._ads[v], tags=((u, tag),))
                    if (tag := self._ads[v].tag_for(u)) is not None
                    else self._ads[v]
                    for v in peers
                )
                out[u] = KeyDirectory(self._round_id, u, ads).to_bytes()
            return self._send(Stage.SHARE_KEYS, out)
        if stage is Stage.SHARE_KEYS:
            self._u2 = frozenset(self._shares)
            self._require(len(self._u2), "clients shared their keys")
            inbox: dict[int, list[tuple[int, bytes]]] = {u: [] for u in self._u2}
            for sender in sorted(self._u2):
                for receiver, ct in self._shares[sender].ciphertexts:
                    if receiver in inbox:
                        inbox[receiver].append((sender, ct))
            out = {
                u: ShareDelivery(self._round_id, u, tuple(entries)).to_bytes()
                for u, entries in inbox.items()
            }
            return self._send(Stage.MASKED_INPUT, out)
        if stage is Stage.MASKED_INPUT:
            self._u3 = frozenset(self._masked)
            self._require(len(self._u3), "clients sent masked inputs")
            size = self._graph.separator_size(self._u3)
            if size is not None and size < self._config.t:
                self._stage = Stage.ABORTED
                raise ProtocolAbort(
                    stage.value,
                    "the server aborts instead of unmasking: " + split_reason(size, self._config.t),
                )
            if self._config.active_security:
                if len(self._u3) < self._config.quorum:
                    self._stage = Stage.ABORTED
                    raise ProtocolAbort(
                        stage.value,
                        "the server aborts before the consistency check: "
                        + self._shortfall(self._u3, "sent masked inputs"),
                    )
                cfg = self._config
                assert cfg.vote_slack is not None  # resolved by SecAggConfig
                degree = voting_degree(len(self._u3), cfg.quorum, cfg.vote_slack)
                vote_peers = voting_peers(self._u3, degree, self._graph.order)
                shared, survivors = tuple(sorted(self._u2)), tuple(sorted(self._u3))
                out = {
                    u: ConsistencyRequest(
                        self._round_id,
                        u,
                        cfg.n_clients,
                        shared,
                        survivors,
                        tuple(sorted(vote_peers[u])),
                    ).to_bytes()
                    for u in survivors
                }
                self._vote_peers = vote_peers
                return self._send(Stage.CONSISTENCY_CHECK, out)
            out = {}
            for u in sorted(self._u3):
                request = self._request_for(u)
                self._requests[u] = request
                out[u] = request.to_bytes()
            return self._send(Stage.UNMASKING, out)
        if stage is Stage.CONSISTENCY_CHECK:
            signers = sorted(self._signatures)
            quorum = self._config.quorum
            if len(signers) < quorum:
                self._stage = Stage.ABORTED
                raise ProtocolAbort(
                    stage.value,
                    "the round cannot be unmasked: "
                    + self._shortfall(signers, "voted for the survivor set"),
                )
            tags = {v: dict(self._signatures[v].tags) for v in signers}
            for v, vote in self._top_up_votes.items():
                tags[v].update(vote.tags)
            voters_of: dict[int, list[int]] = {u: [] for u in signers}
            for v in signers:  # ascending, so every list is sorted
                for u in tags[v]:
                    if u in voters_of:
                        voters_of[u].append(v)
            if not self._top_up:
                top_up = self._top_up_requests(signers, voters_of)
                if top_up:
                    # Some voting peers dropped at the check: ask the other signers
                    # for votes to the survivors short of the quorum (the same vote,
                    # more recipients), then forward.
                    self._top_up = top_up
                    shared, survivors = tuple(sorted(self._u2)), tuple(sorted(self._u3))
                    out = {
                        v: ConsistencyRequest(
                            self._round_id, v, self._config.n_clients, shared, survivors, extra
                        ).to_bytes()
                        for v, extra in top_up.items()
                    }
                    return self._send(Stage.CONSISTENCY_CHECK, out)
            out = {}
            for u in signers:
                # Every vote addressed to u (its voting peers that voted, and the
                # signers that answered the top-up pass for it).
                voters = voters_of[u]
                if len(voters) + 1 < quorum:
                    continue  # u cannot reach the quorum: it cannot unmask
                self._requests[u] = self._request_for(u)
                out[u] = ForwardedVotes(
                    self._round_id, u, tuple((v, tags[v][u]) for v in voters)
                ).to_bytes()
            return self._send(Stage.UNMASKING, out)
        # Stage.UNMASKING: reconstruct and unmask.
        self._require(len(self._responses), "clients answered the unmask request")
        seed_shares: dict[int, dict[int, int]] = {u: {} for u in self._u3}
        key_shares: dict[int, dict[int, int]] = {}
        for holder, resp in self._responses.items():
            for owner, value in resp.mask_seed_shares:
                seed_shares[owner][holder] = value
            for owner, value in resp.key_shares:
                key_shares.setdefault(owner, {})[holder] = value
        dropped = sorted(v for v in self._u2 - self._u3 if self._graph[v] & self._u3)
        # Dry run: every needed secret must have enough shares before any is rebuilt.
        for owner in sorted(self._u3):
            self._require_shares(owner, len(seed_shares[owner]), "self-mask seed")
        for owner in dropped:
            self._require_shares(owner, len(key_shares.get(owner, {})), "masking key")
        self._result = self._unmask(seed_shares, key_shares, dropped)
        self._stage = Stage.DONE
        return {}

    def _top_up_requests(
        self, signers: Sequence[int], voters_of: Mapping[int, Sequence[int]]
    ) -> dict[int, tuple[int, ...]]:
        """Voter → the extra recipients it is asked to vote to.

        Every signer short of ``quorum - 1`` votes from others gets as many more
        as it misses, plus ``vote_slack``, from the signers that have not voted
        to it, nearest first on the public ring (when there are enough of them to
        reach the quorum; otherwise it cannot unmask and is skipped).
        """
        cfg = self._config
        need = cfg.quorum - 1
        assert cfg.vote_slack is not None
        order = self._graph.order or tuple(range(cfg.n_clients))
        position = {u: i for i, u in enumerate(order)}
        m = len(order)
        extra: dict[int, set[int]] = {}
        for u in signers:
            missing = need - len(voters_of[u])
            if missing <= 0:
                continue
            have = set(voters_of[u])
            candidates = [v for v in signers if v != u and v not in have]
            if len(candidates) < missing:
                continue  # cannot reach the quorum however many vote
            pu = position[u]

            def ring_distance(v: int, pu: int = pu) -> tuple[int, int]:
                gap = abs(position[v] - pu)
                return (min(gap, m - gap), v)

            for v in sorted(candidates, key=ring_distance)[: missing + cfg.vote_slack]:
                extra.setdefault(v, set()).add(u)
        return {v: tuple(sorted(us)) for v, us in sorted(extra.items())}

    def _shortfall(self, survivors: Collection[int], what: str) -> str:
        cfg = self._config
        return quorum_shortfall(cfg.n_clients, cfg.k, cfg.t, survivors, what)

    def _request_for(self, u: int) -> UnmaskRequest:
        owners = (self._graph[u] & self._u2) | {u}
        return UnmaskRequest(
            self._round_id,
            u,
            tuple(sorted(owners & self._u3)),
            tuple(sorted(owners - self._u3)),
        )

    def result(self) -> AggregateResult:
        """The decoded sum; only after the unmasking stage has been advanced."""
        if self._result is None:
            raise ProtocolAbort(self._stage.value, "the round has not completed")
        return self._result

    def _unmask(
        self,
        seed_shares: Mapping[int, Mapping[int, int]],
        key_shares: Mapping[int, Mapping[int, int]],
        dropped: Sequence[int],
    ) -> AggregateResult:
        cfg = self._config
        d, dtype = cfg.vector_length, cfg.encoder.dtype
        # Rebuild and check every secret before touching the masked inputs: any
        # disagreement aborts with nothing unmasked.
        seeds = {u: self._rebuild(seed_shares[u], u, "self-mask seed") for u in sorted(self._u3)}
        keys = {}
        for v in dropped:
            s_key = load_x25519(self._rebuild(key_shares[v], v, "masking key"))
            if s_key.public_key().public_bytes_raw() != self._ads[v].masking_key:
                self._stage = Stage.ABORTED
                raise ProtocolAbort(
                    Stage.UNMASKING.value,
                    f"the reconstructed masking key of client {v} does not match its "
                    f"advertised public key (inconsistent shares from holders "
                    f"{sorted(key_shares[v])}); nothing was unmasked",
                )
            keys[v] = s_key
        acc = np.zeros(d, dtype=dtype)
        expander = MaskExpander(d, dtype)
        for u in sorted(self._u3):
            np.add(acc, self._masked[u].values(), out=acc)
        for u in sorted(self._u3):
            np.subtract(acc, expander.expand(seeds[u]), out=acc)
        for v in dropped:
            s_key = keys[v]
            for w in sorted(self._graph[v] & self._u3):
                seed = pairwise_mask_seed(
                    x25519_exchange(s_key, self._ads[w].masking_key), self._round_id, v, w
                )
                # w added +PRG if w < v and -PRG if w > v; undo it.
                if w < v:
                    np.subtract(acc, expander.expand(seed), out=acc)
                else:
                    np.add(acc, expander.expand(seed), out=acc)
        bits = cfg.modulus_bits
        if bits < 8 * dtype.itemsize:
            np.bitwise_and(acc, dtype.type((1 << bits) - 1), out=acc)
        survivors = tuple(sorted(self._u3))
        # Range check (cheap input validation): honest clipped encodings sum to at
        # most m (2**q - 1) per coordinate; more proves an out-of-range encoding.
        ceiling = len(survivors) * cfg.encoder.levels
        peak = int(acc.max())
        if peak > ceiling:
            self._stage = Stage.ABORTED
            raise ProtocolAbort(
                Stage.UNMASKING.value,
                f"range check failed: a coordinate of the encoded sum is {peak}, above the "
                f"{ceiling} that {len(survivors)} clipped inputs can reach; a client sent an "
                "out-of-range encoding (the sum is not released)",
            )
        total = cfg.encoder.decode_sum(acc, n_summands=len(survivors))
        return AggregateResult(total, acc, survivors, tuple(sorted(self._responses)))

    def _rebuild(self, shares: Mapping[int, int], owner: int, what: str) -> bytes:
        try:
            return combine_shares_verified(shares, threshold=self._config.t)
        except InconsistentSharesError as exc:
            self._stage = Stage.ABORTED
            raise ProtocolAbort(
                Stage.UNMASKING.value,
                f"the shares of client {owner}'s {what} disagree: holders "
                f"{list(exc.suspects)} sent shares inconsistent with the others "
                f"(all holders: {list(exc.holders)}); nothing was unmasked",
            ) from None

    def _state(self) -> tuple[object, ...]:
        """Everything that can change during the round: for tests that check a
        rejected message leaves the server byte-for-byte unchanged."""
        return (
            self._stage,
            tuple(self._received),
            tuple(self._sent),
            tuple(sorted(self._ad_bytes.items())),
            frozenset(self._seen_keys),
            tuple(sorted((k, v.to_bytes()) for k, v in self._shares.items())),
            tuple(sorted((k, v.to_bytes()) for k, v in self._masked.items())),
            tuple(sorted((k, v.to_bytes()) for k, v in self._signatures.items())),
            tuple(sorted(self._vote_peers.items())),
            tuple(sorted(self._top_up.items())),
            tuple(sorted((k, v.to_bytes()) for k, v in self._top_up_votes.items())),
            tuple(sorted((k, v.to_bytes()) for k, v in self._requests.items())),
            tuple(sorted((k, v.to_bytes()) for k, v in self._responses.items())),
            self._u1,
            self._u2,
            self._u3,
        )

    def _require(self, count: int, what: str) -> None:
        t = self._config.t
        if count < t:
            stage = self._stage
            self._stage = Stage.ABORTED
            raise ProtocolAbort(
                stage.value, f"only {count} {what}; at least threshold = {t} must survive"
            )

    def _require_shares(self, owner: int, count: int, what: str) -> None:
        t = self._config.t
        if count < t:
            self._stage = Stage.ABORTED
            raise ProtocolAbort(
                Stage.UNMASKING.value,
                f"cannot rebuild the {what} of client {owner}: {count} of its share holders "
                f"survived, threshold {t}",
            )

    def _send(self, stage: Stage, out: dict[int, bytes]) -> dict[int, bytes]:
        self._stage = stage
        self._sent.extend((stage, u, data) for u, data in sorted(out.items()))
        return out
