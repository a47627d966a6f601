"""The client state machine of SecAgg / SecAgg+.

A :class:`SecAggClient` holds one client's input vector and secrets for one
round. Messages go in as bytes and replies come out as bytes, so it runs
in-process or over any transport::

    ad    = client.advertise_keys()          # stage ADVERTISE_KEYS
    share = client.handle(key_directory)     # stage SHARE_KEYS
    y     = client.handle(share_delivery)    # stage MASKED_INPUT
    resp  = client.handle(unmask_request)    # stage UNMASKING

Every incoming message is fully validated (format, round, addressing, stage,
signatures, AEAD tags, protocol rules) before anything is committed: on
:class:`~protocols.errors.MessageError` the client's state is unchanged and the
message may simply be dropped. :class:`~protocols.errors.ProtocolAbort` (too few
share holders) is terminal and reveals nothing.

Security rule enforced here: the client never reveals both the self-mask seed
share and the masking-key share of the same owner (Bonawitz et al. 2017, §4),
even across repeated unmask requests.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import ArrayLike, NDArray

from protocols.errors import InvalidParameterError, MessageError, ProtocolAbort
from protocols.secagg.config import SecAggConfig, Stage
from protocols.secagg.crypto import (
    advertisement_payload,
    aead_decrypt,
    aead_encrypt,
    associated_data,
    generate_x25519,
    load_x25519,
    pairwise_mask_seed,
    share_encryption_key,
    sign,
    verify_signature,
    x25519_exchange,
)
from protocols.secagg.graph import neighbour_graph
from protocols.secagg.messages import (
    MESSAGE_STAGE,
    ROUND_ID_BYTES,
    AdvertiseKeys,
    KeyDirectory,
    MessageType,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    peek_type,
)
from protocols.secagg.messages import MaskedInput as MaskedInputMessage
from protocols.secagg.prg import MaskExpander
from protocols.secagg.rng import SecureRandom
from protocols.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split_secret

__all__ = ["SecAggClient", "ShareKind"]

_CLIENT_EXPECTS: dict[Stage, MessageType] = {
    Stage.SHARE_KEYS: MessageType.KEY_DIRECTORY,
    Stage.MASKED_INPUT: MessageType.SHARE_DELIVERY,
    Stage.UNMASKING: MessageType.UNMASK_REQUEST,
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
        CSPRNG for keys, mask seeds, Shamir coefficients, nonces and stochastic
        rounding; ``None`` draws a fresh key from the OS (secure mode).
    identity_key:
        This client's long-term Ed25519 key; required iff
        ``config.sign_advertisements``.
    identity_public_keys:
        Client id → raw 32-byte Ed25519 public key of (at least) every
        neighbour; required iff ``config.sign_advertisements``.
    graph:
        A precomputed :func:`~protocols.secagg.graph.neighbour_graph` for this
        config and round id (saves work when many clients run in one process);
        ``None`` computes it.
    """

    def __init__(
        self,
        client_id: int,
        vector: ArrayLike,
        *,
        config: SecAggConfig,
        round_id: bytes,
        rng: SecureRandom | None = None,
        identity_key: Ed25519PrivateKey | None = None,
        identity_public_keys: Mapping[int, bytes] | None = None,
        graph: Sequence[frozenset[int]] | None = None,
    ) -> None:
        problems = []
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
        if config.sign_advertisements and (identity_key is None or identity_public_keys is None):
            problems.append(
                "`identity_key` and `identity_public_keys` are required when "
                "`config.sign_advertisements` is True"
            )
        if graph is not None and len(graph) != config.n_clients:
            problems.append(f"`graph` must have {config.n_clients} entries; got {len(graph)}")
        if problems:
            raise InvalidParameterError("; ".join(problems))
        self._id = client_id
        self._config = config
        self._round_id = round_id
        self._rng = rng if rng is not None else SecureRandom()
        self._vector = arr.copy()
        self._identity_key = identity_key
        self._identity_public_keys = dict(identity_public_keys or {})
        if graph is None:
            graph = neighbour_graph(config.n_clients, config.k, round_id)
        self._neighbours = frozenset(graph[client_id])
        self._stage = Stage.ADVERTISE_KEYS
        # Secrets (never logged or repr'd).
        self._c_sk = b""
        self._c_pk = b""
        self._s_sk = b""
        self._s_pk = b""
        self._c_key: X25519PrivateKey | None = None
        self._s_key: X25519PrivateKey | None = None
        self._directory: dict[int, AdvertiseKeys] = {}
        self._own_shares: tuple[int, int] = (0, 0)
        self._mask_seed = b""
        self._held: dict[int, tuple[int, int]] = {}
        self._mask_peers: frozenset[int] = frozenset()
        self._revealed: dict[int, ShareKind] = {}

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

        Returns
        -------
        bytes
            An ``ADVERTISE_KEYS`` message for the server.
        """
        self._require_stage(Stage.ADVERTISE_KEYS, "advertise_keys()")
        c_sk, c_pk = generate_x25519(self._rng)
        s_sk, s_pk = generate_x25519(self._rng)
        signature = b""
        if self._config.sign_advertisements:
            assert self._identity_key is not None
            signature = sign(
                self._identity_key, advertisement_payload(self._round_id, self._id, c_pk, s_pk)
            )
        msg = AdvertiseKeys(self._round_id, self._id, c_pk, s_pk, signature).to_bytes()
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
                pk = self._identity_public_keys.get(ad.sender)
                if pk is None:
                    raise MessageError(f"no identity key known for client {ad.sender}")
                verify_signature(
                    pk,
                    advertisement_payload(
                        self._round_id, ad.sender, ad.encryption_key, ad.masking_key
                    ),
                    ad.signature,
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
        # Validation done: draw randomness and build the reply.
        mask_seed = self._rng.bytes(32)
        seed_shares = split_secret(mask_seed, threshold=t, holder_ids=holders, rng=self._rng)
        key_shares = split_secret(self._s_sk, threshold=t, holder_ids=holders, rng=self._rng)
        ciphertexts = []
        for peer in holders[1:]:
            key = share_encryption_key(
                x25519_exchange(self._loaded(self._c_key), ads[peer].encryption_key),
                self._round_id,
                self._id,
                peer,
            )
            plaintext = (
                struct.pack(">II", self._id, peer)
                + share_to_bytes(seed_shares[peer])
                + share_to_bytes(key_shares[peer])
            )
            ad_bytes = associated_data(self._round_id, Stage.SHARE_KEYS.code, self._id, peer)
            ciphertexts.append((peer, aead_encrypt(key, plaintext, ad_bytes, self._rng)))
        reply = ShareKeys(self._round_id, self._id, tuple(ciphertexts)).to_bytes()
        self._directory = ads
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
            ad = self._directory.get(sender)
            if ad is None:
                raise MessageError(
                    f"client {self._id}: shares from client {sender}, which is not a "
                    "neighbour that advertised keys"
                )
            key = share_encryption_key(
                x25519_exchange(self._loaded(self._c_key), ad.encryption_key),
                self._round_id,
                sender,
                self._id,
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
        self._stage = Stage.UNMASKING
        return reply

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
        for owner in sorted(cover):
            kind = ShareKind.MASK_SEED if owner in survivors else ShareKind.MASKING_KEY
            previous = self._revealed.get(owner)
            if previous is not None and previous is not kind:
                raise MessageError(
                    f"client {self._id} refuses to reveal the {kind.value} share of client "
                    f"{owner}: it already revealed its {previous.value} share, and both "
                    "together would unmask that client's input"
                )
        t = self._config.t
        if len(survivors) < t:
            self._abort(
                Stage.UNMASKING,
                f"{len(survivors)} of client {self._id}'s share holders survived; threshold {t}",
            )
        reply = UnmaskResponse(
            self._round_id,
            self._id,
            tuple((o, self._held[o][0]) for o in sorted(survivors)),
            tuple((o, self._held[o][1]) for o in sorted(dropped)),
        ).to_bytes()
        for owner in survivors:
            self._revealed[owner] = ShareKind.MASK_SEED
        for owner in dropped:
            self._revealed[owner] = ShareKind.MASKING_KEY
        return reply

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
        want = _CLIENT_EXPECTS.get(self._stage)
        if expected is not None and msg_type is not expected:
            raise MessageError(f"expected a {expected.name} message; got {msg_type.name}")
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
