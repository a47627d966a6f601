"""The client state machine of SecAgg / SecAgg+.

A :class:`SecAggClient` holds one client's input vector and secrets for one
round. Messages go in as bytes and replies come out as bytes, so it runs
in-process or over any transport::

    ad    = client.advertise_keys()          # stage ADVERTISE_KEYS
    share = client.handle(key_directory)     # stage SHARE_KEYS
    y     = client.handle(share_delivery)    # stage MASKED_INPUT
    sig   = client.handle(consistency_req)   # stage CONSISTENCY_CHECK (active security)
    resp  = client.handle(signed_survivors)  # stage UNMASKING (an UNMASK_REQUEST when passive)

Every incoming message is fully validated (format, round, addressing, stage,
authenticator tags, AEAD tags, protocol rules) before anything is committed, and
randomness is drawn only after every check has passed: on
:class:`~protocols.errors.MessageError` the client's state — its CSPRNG position
included — is unchanged and the message may simply be dropped.
:class:`~protocols.errors.ProtocolAbort` (too few share holders, or evidence
that the server is cheating) is terminal and reveals nothing.

Security rules enforced here:

* the client never reveals both the self-mask seed share and the masking-key
  share of the same owner (Bonawitz et al. 2017, §4), even across repeated
  requests;
* with ``active_security`` it signs (votes for) exactly one survivor set per
  round, unmasks only after verifying a quorum of votes for that same set
  (so every honest client reveals the same kind of share for each owner), and
  refuses survivor sets that a coalition of ``t - 1`` clients could split into
  separately learnable partial sums (:func:`~protocols.secagg.graph.separator_size`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from protocols.secagg.config import SecAggConfig, Stage, quorum_shortfall
from protocols.secagg.crypto import (
    advertisement_payload,
    aead_decrypt,
    aead_encrypt,
    associated_data,
    auth_tag,
    consistency_payload,
    generate_x25519,
    load_x25519,
    pairwise_mask_seed,
    share_encryption_key,
    verify_auth_tag,
    x25519_exchange,
)
from protocols.secagg.graph import resolve_graph, split_reason
from protocols.secagg.messages import (
    MESSAGE_STAGE,
    ROUND_ID_BYTES,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencyVote,
    ForwardedVotes,
    KeyDirectory,
    MessageType,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    peek_type,
)
from protocols.secagg.messages import MaskedInput as MaskedInputMessage
from protocols.secagg.pki import IdentityDirectory, IdentityKey
from protocols.secagg.prg import MaskExpander
from protocols.secagg.rng import SecureRandom
from protocols.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split_secret

__all__ = ["SecAggClient", "ShareKind"]

_PASSIVE_EXPECTS: dict[Stage, MessageType] = {
    Stage.SHARE_KEYS: MessageType.KEY_DIRECTORY,
    Stage.MASKED_INPUT: MessageType.SHARE_DELIVERY,
    Stage.UNMASKING: MessageType.UNMASK_REQUEST,
}
_ACTIVE_EXPECTS: dict[Stage, MessageType] = {
    Stage.SHARE_KEYS: MessageType.KEY_DIRECTORY,
    Stage.MASKED_INPUT: MessageType.SHARE_DELIVERY,
    Stage.CONSISTENCY_CHECK: MessageType.CONSISTENCY_REQUEST,
    Stage.UNMASKING: MessageType.FORWARDED_VOTES,
}


class ShareKind(str, Enum):
    """Which secret of an owner a share belongs to."""

    MASK_SEED = "self-mask seed"
    MASKING_KEY = "masking key"


class SecAggClient:
    """One client of one secure-aggregation round.

    Parameters
    ----------
    client_id:
        This client's id in ``[0, n_clients)``.
    vector:
        The input, a 1-D array of ``config.vector_length`` finite floats; it is
        clipped to ``[-clip_range, clip_range]`` when encoded.
    config:
        The round's public parameters.
    round_id:
        The public 16-byte round id (fresh for every round; it seeds the
        neighbour graph and is bound into every key derivation and AEAD).
    rng:
        The library's CSPRNG (:class:`SecureRandom`) for keys, mask seeds, Shamir
        coefficients, nonces and stochastic rounding; ``None`` keys a fresh one
        from the OS (secure mode). Any other type is refused.
    identity_key:
        This client's long-term :class:`~protocols.secagg.pki.IdentityKey`;
        required iff ``config.sign_advertisements`` (always under ``active_security``).
    identity_public_keys:
        Client id → raw 32-byte identity public key of every client; needed when
        advertisements are authenticated and ``config.pki`` is not set
        (``config.pki`` wins).
    graph:
        A precomputed :func:`~protocols.secagg.graph.make_graph` (or
        :func:`~protocols.secagg.graph.neighbour_graph`) for this config, round
        id and beacon (saves work when many clients run in one process);
        ``None`` computes it.
    beacon:
        The public beacon value the graph is derived from
        (:func:`~protocols.secagg.graph.ring_order`); ``None``: the round id alone.
    """

    def __init__(
        self,
        client_id: int,
        vector: ArrayLike,
        *,
        config: SecAggConfig,
        round_id: bytes,
        rng: SecureRandom | None = None,
        identity_key: IdentityKey | None = None,
        identity_public_keys: Mapping[int, bytes] | None = None,
        graph: Sequence[frozenset[int]] | None = None,
        beacon: bytes | None = None,
    ) -> None:
        problems = []
        if rng is not None and not isinstance(rng, SecureRandom):
            problems.append(
                f"`rng` must be a SecureRandom (the library's CSPRNG) or None; got "
                f"{type(rng).__name__}: its output would become private keys and mask seeds"
            )
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            problems.append(f"`client_id` must be an integer; got {client_id!r}")
        elif not 0 <= client_id < config.n_clients:
            problems.append(f"`client_id` must be in [0, {config.n_clients}); got {client_id}")
        if not isinstance(round_id, bytes) or len(round_id) != ROUND_ID_BYTES:
            problems.append(f"`round_id` must be {ROUND_ID_BYTES} bytes; got {round_id!r}")
        arr = np.asarray(vector, dtype=np.float64)
        if arr.shape != (config.vector_length,):
            problems.append(f"`vector` must have shape ({config.vector_length},); got {arr.shape}")
        elif not np.all(np.isfinite(arr)):
            problems.append("`vector` must be finite")
        pki = config.pki
        if identity_key is not None and not isinstance(identity_key, IdentityKey):
            problems.append(
                f"`identity_key` must be an IdentityKey; got {type(identity_key).__name__}"
            )
        if config.sign_advertisements:
            if identity_key is None:
                problems.append(
                    "`identity_key` is required when advertisements are signed "
                    "(`config.sign_advertisements`, always on under `active_security`)"
                )
            if pki is None and identity_public_keys is None:
                problems.append(
                    "the clients' identity keys are required when advertisements are signed: "
                    "set `config.pki` or pass `identity_public_keys`"
                )
        if graph is not None and len(graph) != config.n_clients:
            problems.append(f"`graph` must have {config.n_clients} entries; got {len(graph)}")
        if problems:
            raise InvalidParameterError("; ".join(problems))
        if pki is None and identity_public_keys is not None and config.sign_advertisements:
            pki = IdentityDirectory.from_mapping(identity_public_keys, config.n_clients)
        self._id = client_id
        self._config = config
        self._round_id = round_id
        self._rng = rng if rng is not None else SecureRandom()
        self._vector = arr.copy()
        self._identity_key = identity_key
        self._pki = pki
        self._graph = resolve_graph(config.n_clients, config.k, round_id, beacon, graph)
        self._neighbours = frozenset(self._graph[client_id])
        self._expects = _ACTIVE_EXPECTS if config.active_security else _PASSIVE_EXPECTS
        self._stage = Stage.ADVERTISE_KEYS
        # Secrets (never logged or repr'd).
        self._c_sk = b""
        self._c_pk = b""
        self._s_sk = b""
        self._s_pk = b""
        self._c_key: X25519PrivateKey | None = None
        self._s_key: X25519PrivateKey | None = None
        self._directory: dict[int, AdvertiseKeys] = {}
        # Neighbour → the key its share ciphertext to this client is sealed with
        # (derived with the outbound key at share_keys: one agreement per peer).
        self._inbound_keys: dict[int, bytes] = {}
        self._own_shares: tuple[int, int] = (0, 0)
        self._mask_seed = b""
        self._held: dict[int, tuple[int, int]] = {}
        self._mask_peers: frozenset[int] = frozenset()
        self._revealed: dict[int, ShareKind] = {}
        # Consistency check: the one survivor set this client voted for.
        self._signed_request: ConsistencyRequest | None = None
        self._signed_payload = b""
        self._vote = b""

    def __repr__(self) -> str:
        return f"SecAggClient(client_id={self._id}, stage={self._stage.value!r})"

    @property
    def client_id(self) -> int:
        """This client's id."""
        return self._id

    @property
    def stage(self) -> Stage:
        """The stage whose input the client expects next."""
        return self._stage

    @property
    def neighbours(self) -> frozenset[int]:
        """This client's neighbours in the public graph."""
        return self._neighbours

    @property
    def revealed(self) -> Mapping[int, ShareKind]:
        """Owner id → kind of share this client has revealed to the server."""
        return dict(self._revealed)

    # ------------------------------------------------------------------ stages

    def advertise_keys(self) -> bytes:
        """Stage 0: generate the two X25519 key pairs and advertise the public keys.

        With authenticated advertisements the message carries one tag per
        neighbour, under the pairwise key from the PKI.

        Returns
        -------
        bytes
            An ``ADVERTISE_KEYS`` message for the server.
        """
        self._require_stage(Stage.ADVERTISE_KEYS, "advertise_keys()")
        c_sk, c_pk = generate_x25519(self._rng)
        s_sk, s_pk = generate_x25519(self._rng)
        tags: tuple[tuple[int, bytes], ...] = ()
        if self._config.sign_advertisements:
            tags = tuple(
                (
                    v,
                    auth_tag(
                        self._pairwise(v),
                        advertisement_payload(self._round_id, self._id, v, c_pk, s_pk),
                        self._id,
                        v,
                    ),
                )
                for v in sorted(self._neighbours)
            )
        msg = AdvertiseKeys(self._round_id, self._id, c_pk, s_pk, tags).to_bytes()
        self._c_sk, self._c_pk, self._s_sk, self._s_pk = c_sk, c_pk, s_sk, s_pk
        self._c_key, self._s_key = load_x25519(c_sk), load_x25519(s_sk)
        self._stage = Stage.SHARE_KEYS
        return msg

    def handle(self, message: bytes) -> bytes:
        """Process a server message of the current stage and return the reply.

        Raises
        ------
        MessageError
            Malformed, forged, replayed, re-routed or out-of-stage message
            (state unchanged).
        ProtocolAbort
            Too few share holders survive (terminal).
        """
        msg_type = self._check_incoming(message)
        if msg_type is MessageType.KEY_DIRECTORY:
            return self.share_keys(message)
        if msg_type is MessageType.SHARE_DELIVERY:
            return self.masked_input(message)
        if msg_type is MessageType.CONSISTENCY_REQUEST:
            return self.consistency_check(message)
        if msg_type is MessageType.FORWARDED_VOTES:
            return self.unmask_signed(message)
        return self.unmask(message)

    def share_keys(self, message: bytes) -> bytes:
        """Stage 1: verify the neighbours' keys, share the secrets, encrypt the shares.

        Parameters
        ----------
        message:
            A ``KEY_DIRECTORY`` message.

        Returns
        -------
        bytes
            A ``SHARE_KEYS`` message: one AES-GCM ciphertext per neighbour.
        """
        self._check_incoming(message, MessageType.KEY_DIRECTORY)
        directory = KeyDirectory.from_bytes(message)
        self._check_addressing(directory.round_id, directory.receiver)
        own_keys = {self._c_pk, self._s_pk}
        seen_keys: set[bytes] = set(own_keys)
        ads: dict[int, AdvertiseKeys] = {}
        for ad in directory.advertisements:
            if ad.sender not in self._neighbours:
                raise MessageError(
                    f"client {self._id}: key directory holds client {ad.sender}, "
                    "which is not a neighbour"
                )
            if self._config.sign_advertisements:
                tag = ad.tag_for(self._id)
                if tag is None:
                    raise MessageError(
                        f"client {self._id}: the advertisement of client {ad.sender} carries "
                        "no tag for it (unauthenticated keys are refused)"
                    )
                verify_auth_tag(
                    self._pairwise(ad.sender),
                    advertisement_payload(
                        self._round_id, ad.sender, self._id, ad.encryption_key, ad.masking_key
                    ),
                    ad.sender,
                    self._id,
                    tag,
                    f"the key advertisement of client {ad.sender}",
                )
            for key in (ad.encryption_key, ad.masking_key):
                if key in seen_keys:
                    raise MessageError(
                        f"client {self._id}: public key of client {ad.sender} is reused"
                    )
                seen_keys.add(key)
            ads[ad.sender] = ad
        holders = [self._id, *sorted(ads)]
        t = self._config.t
        if len(holders) < t:
            self._abort(
                Stage.SHARE_KEYS,
                f"{len(holders)} of client {self._id}'s {self._config.k + 1} share holders "
                f"survived (itself included); threshold {t}",
            )
        # Every key agreement can still fail: do them all before drawing anything.
        channel_secrets = {
            peer: x25519_exchange(self._loaded(self._c_key), ads[peer].encryption_key)
            for peer in holders[1:]
        }
        channel_keys = {
            peer: share_encryption_key(secret, self._round_id, self._id, peer)
            for peer, secret in channel_secrets.items()
        }
        inbound_keys = {
            peer: share_encryption_key(secret, self._round_id, peer, self._id)
            for peer, secret in channel_secrets.items()
        }
        # Validation done: draw randomness and build the reply.
        mask_seed = self._rng.bytes(32)
        seed_shares = split_secret(mask_seed, threshold=t, holder_ids=holders, rng=self._rng)
        key_shares = split_secret(self._s_sk, threshold=t, holder_ids=holders, rng=self._rng)
        ciphertexts = []
        for peer in holders[1:]:
            key = channel_keys[peer]
            plaintext = (
                struct.pack(">II", self._id, peer)
                + share_to_bytes(seed_shares[peer])
                + share_to_bytes(key_shares[peer])
            )
            ad_bytes = associated_data(self._round_id, Stage.SHARE_KEYS.code, self._id, peer)
            ciphertexts.append((peer, aead_encrypt(key, plaintext, ad_bytes, self._rng)))
        reply = ShareKeys(self._round_id, self._id, tuple(ciphertexts)).to_bytes()
        self._directory = ads
        self._inbound_keys = inbound_keys
        self._mask_seed = mask_seed
        self._own_shares = (seed_shares[self._id], key_shares[self._id])
        self._stage = Stage.MASKED_INPUT
        return reply

    def masked_input(self, message: bytes) -> bytes:
        """Stage 2: store the neighbours' shares and send the masked input.

        Parameters
        ----------
        message:
            A ``SHARE_DELIVERY`` message with the shares addressed to this client.

        Returns
        -------
        bytes
            A ``MASKED_INPUT`` message: ``encode(x) + PRG(b_u) + Σ ±PRG(s_uv) mod 2**b``.
        """
        self._check_incoming(message, MessageType.SHARE_DELIVERY)
        delivery = ShareDelivery.from_bytes(message)
        self._check_addressing(delivery.round_id, delivery.receiver)
        held: dict[int, tuple[int, int]] = {}
        for sender, ct in delivery.ciphertexts:
            key = self._inbound_keys.get(sender)
            if key is None:
                raise MessageError(
                    f"client {self._id}: shares from client {sender}, which is not a "
                    "neighbour that advertised keys"
                )
            ad_bytes = associated_data(self._round_id, Stage.SHARE_KEYS.code, sender, self._id)
            plaintext = aead_decrypt(key, ct, ad_bytes)
            src, dst = struct.unpack_from(">II", plaintext)
            if (src, dst) != (sender, self._id):
                raise MessageError(
                    f"client {self._id}: ciphertext names sender {src} and receiver {dst}; "
                    f"expected {sender} and {self._id}"
                )
            held[sender] = (
                share_from_bytes(plaintext[8 : 8 + SHARE_BYTES]),
                share_from_bytes(plaintext[8 + SHARE_BYTES :]),
            )
        t = self._config.t
        if len(held) + 1 < t:
            self._abort(
                Stage.MASKED_INPUT,
                f"{len(held) + 1} of client {self._id}'s share holders survived "
                f"(itself included); threshold {t}",
            )
        pair_seeds = {
            peer: pairwise_mask_seed(
                x25519_exchange(self._loaded(self._s_key), self._directory[peer].masking_key),
                self._round_id,
                self._id,
                peer,
            )
            for peer in sorted(held)
        }
        masked = self._mask(pair_seeds)
        reply = MaskedInputMessage(
            self._round_id, self._id, self._config.modulus_bits, masked.tobytes()
        ).to_bytes()
        held[self._id] = self._own_shares
        self._held = held
        self._mask_peers = frozenset(pair_seeds)
        self._stage = Stage.CONSISTENCY_CHECK if self._config.active_security else Stage.UNMASKING
        return reply

    def consistency_check(self, message: bytes) -> bytes:
        """Stage 3 (active security): check the survivor sets and sign them.

        The client checks that the sets are possible from where it stands — it
        is a survivor, every neighbour whose shares it holds is in ``U2`` and
        every neighbour in ``U2`` delivered its shares (so the pairwise masks the
        server will face are exactly the edges of the public graph among ``U3``),
        enough of its share holders and enough signers for the quorum survived,
        and no ``t - 1`` survivors can split the survivors' graph into separately
        learnable partial sums — then signs them: one authenticator tag, under the
        pairwise key from the PKI, for each survivor the request names as a
        recipient (every other survivor by default; the honest server names the
        voting peers of :func:`~protocols.secagg.graph.voting_peers`). Whom the
        tags go to cannot change which set they vouch for. It signs one survivor
        set per round: the identical request is answered again; a request for
        the same sets with other recipients (the server's top-up pass, when some
        voting peers dropped at the check) is answered with tags over the same
        sets for those recipients, until the client unmasks; a request for any
        other sets is refused.

        Parameters
        ----------
        message:
            A ``CONSISTENCY_REQUEST`` message.

        Returns
        -------
        bytes
            A ``CONSISTENCY_VOTE`` message: one tag per requested recipient.

        Raises
        ------
        MessageError
            Malformed, misaddressed, a second, different survivor set, or more
            recipients after the client has unmasked.
        ProtocolAbort
            The sets are impossible or unsafe (the client reveals nothing).
        """
        self._check_incoming(message, MessageType.CONSISTENCY_REQUEST)
        request = ConsistencyRequest.from_bytes(message)
        self._check_addressing(request.round_id, request.receiver)
        signed = self._signed_request
        if signed is not None:
            if request == signed:
                return self._vote
            if (request.n_clients, request.shared, request.survivors) != (
                signed.n_clients,
                signed.shared,
                signed.survivors,
            ):
                raise MessageError(
                    f"client {self._id} refuses to sign a second, different survivor set: "
                    "it signs one set per round"
                )
            if self._revealed:
                raise MessageError(
                    f"client {self._id} has already unmasked: it casts no more votes"
                )
            # Top-up: the same vote (tags over the same sets) for more recipients.
            tags = tuple(
                (w, auth_tag(self._pairwise(w), self._signed_payload, self._id, w))
                for w in request.vote_recipients()
            )
            return ConsistencyVote(self._round_id, self._id, tags).to_bytes()
        cfg = self._config
        stage = Stage.CONSISTENCY_CHECK
        if request.n_clients != cfg.n_clients:
            raise MessageError(
                f"client {self._id}: the survivor sets cover {request.n_clients} clients; "
                f"the round has {cfg.n_clients}"
            )
        shared, survivors = frozenset(request.shared), frozenset(request.survivors)
        if self._id not in survivors:
            self._abort(
                stage,
                f"client {self._id} sent its masked input but the server lists it as dropped",
            )
        holders = set(self._held) - {self._id}
        expected = self._neighbours & shared
        if holders != expected:
            self._abort(
                stage,
                f"client {self._id}'s neighbours in U2 are {sorted(expected)}, but it holds "
                f"shares from {sorted(holders)}: the server withheld or invented shares",
            )
        owners_alive = len((holders | {self._id}) & survivors)
        if owners_alive < cfg.t:
            self._abort(
                stage,
                f"{owners_alive} of client {self._id}'s share holders survived; threshold {cfg.t}",
            )
        if len(survivors) < cfg.quorum:
            self._abort(
                stage,
                f"client {self._id} refuses to vote, as the quorum can never be reached: "
                + quorum_shortfall(cfg.n_clients, cfg.k, cfg.t, survivors, "are survivors"),
            )
        self._check_graph(stage, survivors)
        shared_bits, survivor_bits = request.bitmaps()
        payload = consistency_payload(self._round_id, cfg.n_clients, shared_bits, survivor_bits)
        tags = tuple(
            (w, auth_tag(self._pairwise(w), payload, self._id, w))
            for w in request.vote_recipients()
        )
        reply = ConsistencyVote(self._round_id, self._id, tags).to_bytes()
        self._signed_request = request
        self._signed_payload = payload
        self._vote = reply
        self._stage = Stage.UNMASKING
        return reply

    def unmask_signed(self, message: bytes) -> bytes:
        """Stage 4 (active security): verify the quorum of votes, then unmask.

        A forwarded vote counts if its tag verifies, under the key this client
        shares with the voter, over the survivor sets *this* client voted for and
        the voter is a survivor of those sets; together with this client there
        must be at least ``config.quorum`` of them (a vote that does not verify —
        cast for another set, or forged — simply does not count; verification
        stops once the quorum is reached). Then the client
        reveals the self-mask seed shares of its owners in ``U3`` and the
        masking-key shares of its owners in ``U2 \\ U3``, both read from the sets
        it voted for (nothing the server says at this stage can change them).

        Parameters
        ----------
        message:
            A ``FORWARDED_VOTES`` message.

        Returns
        -------
        bytes
            An ``UNMASK_RESPONSE`` message.

        Raises
        ------
        ProtocolAbort
            Too few or invalid votes: the server showed different survivor sets
            to different clients, or cannot prove it did not.
        """
        self._check_incoming(message, MessageType.FORWARDED_VOTES)
        bundle = ForwardedVotes.from_bytes(message)
        self._check_addressing(bundle.round_id, bundle.receiver)
        request = self._signed_request
        assert request is not None
        survivors = frozenset(request.survivors)
        stage = Stage.UNMASKING
        valid = 0
        needed = self._config.quorum - 1  # its own vote counts too
        invalid: list[int] = []
        for voter, tag in bundle.tags:
            if valid >= needed:
                break  # the quorum is reached: further votes cannot change anything
            if voter not in survivors:
                invalid.append(voter)  # not a survivor of this set: never counts
                continue
            try:
                verify_auth_tag(
                    self._pairwise(voter),
                    self._signed_payload,
                    voter,
                    self._id,
                    tag,
                    f"the survivor set (voter {voter})",
                )
            except MessageError:
                invalid.append(voter)  # a vote for another set, or forged: never counts
                continue
            valid += 1
        if valid < needed:
            detail = (
                f"; the votes of clients {invalid[:10]} do not verify over the survivor set "
                "this client signed (the server showed different survivor sets to different "
                "clients, or forged votes)"
                if invalid
                else ""
            )
            self._abort(
                stage,
                f"client {self._id} has {valid + 1} votes (its own included) for the survivor "
                f"set it signed; the quorum is {self._config.quorum}; refusing to unmask" + detail,
            )
        owners = sorted(self._held)
        seed_owners = tuple(o for o in owners if o in survivors)
        key_owners = tuple(o for o in owners if o not in survivors)
        self._check_never_both(seed_owners, key_owners)
        return self._respond(seed_owners, key_owners)

    def unmask(self, message: bytes) -> bytes:
        """Stage 3: reveal survivors' self-mask shares and dropped clients' key shares.

        The request must partition exactly the owners whose shares this client
        holds (itself and the neighbours that delivered shares) into survivors
        and dropped clients; this client must be a survivor. A repeated request
        is answered only if no owner changes sides (never both secrets).

        Parameters
        ----------
        message:
            An ``UNMASK_REQUEST`` message.

        Returns
        -------
        bytes
            An ``UNMASK_RESPONSE`` message.
        """
        self._check_incoming(message, MessageType.UNMASK_REQUEST)
        request = UnmaskRequest.from_bytes(message)
        self._check_addressing(request.round_id, request.receiver)
        survivors, dropped = set(request.survivors), set(request.dropped)
        if self._id not in survivors:
            raise MessageError(
                f"client {self._id} is listed as dropped, but it sent its masked input; "
                "refusing to reveal its own masking key"
            )
        cover = set(self._held)
        if survivors | dropped != cover:
            unknown = sorted((survivors | dropped) - cover)
            missing = sorted(cover - survivors - dropped)
            raise MessageError(
                f"client {self._id}: unmask request must list exactly the owners of its "
                f"shares {sorted(cover)}; unknown {unknown}, missing {missing}"
            )
        self._check_never_both(tuple(sorted(survivors)), tuple(sorted(dropped)))
        t = self._config.t
        if len(survivors) < t:
            self._abort(
                Stage.UNMASKING,
                f"{len(survivors)} of client {self._id}'s share holders survived; threshold {t}",
            )
        return self._respond(tuple(sorted(survivors)), tuple(sorted(dropped)))

    def _check_never_both(self, seed_owners: Sequence[int], key_owners: Sequence[int]) -> None:
        for owners, kind in (
            (seed_owners, ShareKind.MASK_SEED),
            (key_owners, ShareKind.MASKING_KEY),
        ):
            for owner in owners:
                previous = self._revealed.get(owner)
                if previous is not None and previous is not kind:
                    raise MessageError(
                        f"client {self._id} refuses to reveal the {kind.value} share of client "
                        f"{owner}: it already revealed its {previous.value} share, and both "
                        "together would unmask that client's input"
                    )

    def _respond(self, seed_owners: Sequence[int], key_owners: Sequence[int]) -> bytes:
        reply = UnmaskResponse(
            self._round_id,
            self._id,
            tuple((o, self._held[o][0]) for o in seed_owners),
            tuple((o, self._held[o][1]) for o in key_owners),
        ).to_bytes()
        for owner in seed_owners:
            self._revealed[owner] = ShareKind.MASK_SEED
        for owner in key_owners:
            self._revealed[owner] = ShareKind.MASKING_KEY
        return reply

    def _pairwise(self, peer: int) -> bytes:
        """The long-term key shared with ``peer`` (from the PKI)."""
        assert self._identity_key is not None and self._pki is not None
        return self._identity_key.pairwise_key(self._pki.public_key(peer))

    def _check_graph(self, stage: Stage, survivors: frozenset[int]) -> None:
        size = self._graph.separator_size(survivors)
        t = self._config.t
        if size is not None and size < t:
            self._abort(
                stage, f"client {self._id} refuses the survivor set: " + split_reason(size, t)
            )

    def _state(self) -> tuple[object, ...]:
        """Everything that can change during the round (secrets included): for tests
        that check a rejected message leaves the client byte-for-byte unchanged."""
        return (
            self._stage,
            self._rng.bytes_drawn,
            self._c_sk,
            self._c_pk,
            self._s_sk,
            self._s_pk,
            tuple(sorted((k, v.to_bytes()) for k, v in self._directory.items())),
            tuple(sorted(self._inbound_keys.items())),
            self._own_shares,
            self._mask_seed,
            tuple(sorted(self._held.items())),
            self._mask_peers,
            tuple(sorted(self._revealed.items())),
            self._signed_request,
            self._signed_payload,
            self._vote,
        )

    # ----------------------------------------------------------------- helpers

    def _mask(self, pair_seeds: Mapping[int, bytes]) -> NDArray[np.unsignedinteger]:
        encoder = self._config.encoder
        dtype = encoder.dtype
        d = self._config.vector_length
        acc = encoder.encode(self._vector, rng=self._rng)
        expander = MaskExpander(d, dtype)
        np.add(acc, expander.expand(self._mask_seed), out=acc)
        for peer, seed in pair_seeds.items():
            mask = expander.expand(seed)
            if self._id < peer:
                np.add(acc, mask, out=acc)
            else:
                np.subtract(acc, mask, out=acc)
        bits = self._config.modulus_bits
        if bits < 8 * dtype.itemsize:
            np.bitwise_and(acc, dtype.type((1 << bits) - 1), out=acc)
        return acc

    def _loaded(self, key: X25519PrivateKey | None) -> X25519PrivateKey:
        if key is None:
            raise MessageError(f"client {self._id} has not advertised its keys yet")
        return key

    def _require_stage(self, stage: Stage, what: str) -> None:
        if self._stage is Stage.ABORTED:
            raise ProtocolAbort(self._stage.value, f"client {self._id} has already aborted")
        if self._stage is not stage:
            raise MessageError(
                f"client {self._id}: {what} belongs to stage {stage.value!r}, "
                f"but the client is at stage {self._stage.value!r}"
            )

    def _check_incoming(self, message: bytes, expected: MessageType | None = None) -> MessageType:
        msg_type = peek_type(message)
        if self._stage is Stage.ABORTED:
            raise ProtocolAbort(self._stage.value, f"client {self._id} has already aborted")
        want = self._expects.get(self._stage)
        if expected is not None and msg_type is not expected:
            raise MessageError(f"expected a {expected.name} message; got {msg_type.name}")
        if (
            msg_type is MessageType.CONSISTENCY_REQUEST
            and self._stage is Stage.UNMASKING
            and self._signed_request is not None
        ):
            return msg_type  # a repeated request (answered if identical) or a top-up
        if msg_type is not want:
            expecting = f"a {want.name} message" if want else "no message (call advertise_keys())"
            raise MessageError(
                f"client {self._id} at stage {self._stage.value!r} expects {expecting}; got "
                f"{msg_type.name} (stage {MESSAGE_STAGE[msg_type].value!r})"
            )
        return msg_type

    def _check_addressing(self, round_id: bytes, receiver: int) -> None:
        if round_id != self._round_id:
            raise MessageError(f"client {self._id}: message is from another round")
        if receiver != self._id:
            raise MessageError(f"client {self._id}: message is addressed to client {receiver}")

    def _abort(self, stage: Stage, reason: str) -> None:
        self._stage = Stage.ABORTED
        raise ProtocolAbort(stage.value, reason)
