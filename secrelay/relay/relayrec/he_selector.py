"""RelayRec's selector under CKKS (``[privacy] he_selector = true``): the server
evaluates the selector on an encrypted p_u and never sees it in the clear.

**The HE-friendly selector.** s(p) = W2ᵀ (W1ᵀ z + b1)² + b2 with z = (p − m)/s: the
MLP of :mod:`~secrelay.relay.relayrec.selector` with the ReLU replaced by a square,
trained the same way on the cloud users' (p_u, cluster) pairs
(:func:`train_square_selector`). A square is the one activation CKKS evaluates with
a single multiplication; the standardisation folds into the first layer.

**The flow** (round 0, one device; every message through the run's channel):

====================  ==========================================================
server → device       ``ReplyMessage`` :data:`HE_LAYOUT_TOPIC`: the public layout
                      (d, H, K, radix) and the CKKS parameters — no weight
device → server       ``QueryMessage`` :data:`HE_CONTEXT_TOPIC`: the public context
                      (relinearisation key + the layout's Galois keys), ``blob``
device → server       ``QueryMessage`` ``relayrec/select``: Enc(p_u), ``blob`` only
server → device       ``ReplyMessage`` ``relayrec/select``: the encrypted logits
device                decrypts, takes the argmax, keeps k_u private
====================  ==========================================================

The logits the device decrypts are s(p_u) + g(p_u) for a term g common to every
output (:meth:`~protocols.he.SquareNetwork.from_layers`), so the argmax is the
plaintext selector's; the reply's other slots carry partial sums of the hidden
units, i.e. information about the selector, which is not secret from devices here
(``selector_path = "local"`` downloads it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from protocols.errors import MessageError
from protocols.he import (
    CKKSParameters,
    PublicContext,
    SecretContext,
    SquareNetwork,
    SquareNetworkLayout,
)
from secrelay.federated.messages import SERVER, QueryMessage, ReplyMessage
from secrelay.federated.transcript import Channel
from secrelay.relay.relayrec.selector import SelectorArrays, fit_selector_net, selector_inputs

__all__ = [
    "HE_CONTEXT_TOPIC",
    "HE_LAYOUT_TOPIC",
    "HESelectorServer",
    "HESelectorStats",
    "SquareSelectorWeights",
    "encrypted_select",
    "square_selector_logits",
    "train_square_selector",
]

HE_LAYOUT_TOPIC = "relayrec/he_layout"
HE_CONTEXT_TOPIC = "relayrec/he_context"
_SELECT_TOPIC = "relayrec/select"  # = device.SELECT_TOPIC (not imported: no cycle)


@dataclass(frozen=True, eq=False)
class SquareSelectorWeights(SelectorArrays):
    """s(p) = W2ᵀ (W1ᵀ (p − m)/s + b1)² + b2 as numpy arrays (``w1`` (d, H), ``w2``
    (H, K))."""

    def network(self, params: CKKSParameters, *, radix: int = 4) -> SquareNetwork:
        """The same function on raw p (standardisation folded into the first layer:
        W1' = diag(1/s) W1, b1' = b1 − (m/s)ᵀ W1) as a packed CKKS plan."""
        w1 = self.w1 / self.scale[:, None]
        b1 = self.b1 - (self.mean / self.scale) @ self.w1
        return SquareNetwork.from_layers(w1, b1, self.w2, self.b2, params=params, radix=radix)


def square_selector_logits(weights: SquareSelectorWeights, p: np.ndarray) -> np.ndarray:
    """The square selector's scores for ``p`` (``(d,)`` → ``(K,)``, ``(n, d)`` → ``(n, K)``)."""
    z = (np.asarray(p, dtype=np.float64) - weights.mean) / weights.scale
    h = (z @ weights.w1 + weights.b1) ** 2
    out: np.ndarray = h @ weights.w2 + weights.b2
    return out


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def train_square_selector(
    prefs: np.ndarray,
    labels: np.ndarray,
    num_outputs: int,
    *,
    hidden: int = 32,
    epochs: int = 300,
    lr: float = 0.01,
    seed: int = 0,
    balance: bool = False,
) -> tuple[SquareSelectorWeights, float]:
    """Train the HE-friendly selector (square activation) with cross-entropy (full
    batch, Adam), as :func:`~secrelay.relay.relayrec.selector.train_selector` trains the
    ReLU MLP. Returns the selector and its training accuracy."""
    x, y, mean, scale = selector_inputs(prefs, labels, num_outputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        l1 = nn.Linear(x.shape[1], hidden)
        l2 = nn.Linear(hidden, num_outputs)
        # Square activations grow fast: start the first layer small.
        with torch.no_grad():
            l1.weight.mul_(0.5)
        net = nn.Sequential(l1, _Square(), l2)
    arrays = fit_selector_net(
        net, (x - mean) / scale, y, num_outputs=num_outputs, epochs=epochs, lr=lr, balance=balance
    )
    weights = SquareSelectorWeights(mean=mean, scale=scale, **arrays)
    acc = float((square_selector_logits(weights, x).argmax(axis=1) == y).mean())
    return weights, acc


@dataclass
class HESelectorStats:
    """HE traffic and time of the selection phase, summed over devices.

    ``plaintext_agreement`` counts devices whose encrypted choice equals the plaintext
    square selector's on the same p_u — the experimenter's check of the simulation
    (computed where both are known), not something any party learns.
    """

    devices: int = 0
    context_bytes: int = 0
    query_bytes: int = 0
    reply_bytes: int = 0
    keygen_seconds: float = 0.0
    device_seconds: float = 0.0
    server_seconds: float = 0.0
    plaintext_agreement: int = 0

    def as_metrics(self) -> dict[str, float]:
        n = max(self.devices, 1)
        return {
            "he/selector_devices": float(self.devices),
            "he/selector_context_bytes_mean": self.context_bytes / n,
            "he/selector_query_bytes_mean": self.query_bytes / n,
            "he/selector_reply_bytes_mean": self.reply_bytes / n,
            "he/selector_keygen_seconds_mean": self.keygen_seconds / n,
            "he/selector_device_seconds_mean": self.device_seconds / n,
            "he/selector_server_seconds_mean": self.server_seconds / n,
            "he/selector_plaintext_agreement": self.plaintext_agreement / n,
        }


@dataclass(eq=False)
class HESelectorServer:
    """The server's side: the selector as a packed CKKS plan, answering encrypted
    queries (one :class:`~protocols.he.PublicContext` per device, kept only for the
    query)."""

    weights: SquareSelectorWeights
    params: CKKSParameters
    radix: int = 4
    stats: HESelectorStats = field(default_factory=HESelectorStats)

    def __post_init__(self) -> None:
        self.network = self.weights.network(self.params, radix=self.radix)
        self.layout = self.network.layout

    def layout_message(self, device: int) -> ReplyMessage:
        """What a device is told before it encrypts: the layout and the parameters."""
        return ReplyMessage(
            sender=SERVER,
            receiver=device,
            round=0,
            topic=HE_LAYOUT_TOPIC,
            arrays={
                "layout": self.layout.to_array(),
                "params": np.frombuffer(self.params.to_bytes(), dtype=np.uint8),
            },
        )

    def answer(self, context: QueryMessage, query: QueryMessage) -> ReplyMessage:
        """Evaluate the selector on the device's ciphertext.

        Raises
        ------
        MessageError
            Wrong topics, a plaintext payload on the query, a context or ciphertext
            that does not load (corrupted, secret key attached, other parameters).
        """
        t = time.perf_counter()
        if context.topic != HE_CONTEXT_TOPIC or query.topic != _SELECT_TOPIC:
            raise MessageError(f"expected {HE_CONTEXT_TOPIC!r} then {_SELECT_TOPIC!r} queries")
        if context.sender != query.sender or query.arrays:
            raise MessageError("an encrypted selector query carries one device's ciphertext only")
        ctx = PublicContext.from_bytes(context.blob)
        missing = set(self.layout.galois_steps) - set(ctx.galois_steps)
        if ctx.params != self.params or missing or not ctx.has_relin_keys:
            raise MessageError(
                f"the device's HE context does not fit the selector (parameters match: "
                f"{ctx.params == self.params}; missing Galois steps {sorted(missing)}; "
                f"relinearisation key: {ctx.has_relin_keys})"
            )
        ct = ctx.load_ciphertexts(query.blob, count=1)[0]
        blob = ctx.dump_ciphertexts(self.network.evaluate(ctx, ct))
        self.stats.server_seconds += time.perf_counter() - t
        return ReplyMessage(
            sender=SERVER, receiver=query.sender, round=query.round, topic=_SELECT_TOPIC, blob=blob
        )


def encrypted_select(
    device: int, p_u: np.ndarray, *, channel: Channel, server: HESelectorServer
) -> np.ndarray:
    """One device's encrypted selector query; returns the decrypted logits (the device
    takes the argmax). The device part reads only its p_u and what it received."""
    stats = server.stats
    lay_msg = channel.send(server.layout_message(device))
    assert isinstance(lay_msg, ReplyMessage)
    # --- device: keys for exactly the published layout --------------------------------
    t = time.perf_counter()
    params = CKKSParameters.from_bytes(lay_msg.arrays["params"].tobytes())
    layout = SquareNetworkLayout.from_array(lay_msg.arrays["layout"], params)
    keys = SecretContext(params, galois_steps=layout.galois_steps, relin_keys=True)
    t_key = time.perf_counter() - t
    t = time.perf_counter()
    ctx_blob = keys.serialize()
    query_blob = keys.encrypt(layout.encode_input(p_u))
    t_dev = time.perf_counter() - t
    ctx_msg = channel.send(
        QueryMessage(sender=device, receiver=SERVER, round=0, topic=HE_CONTEXT_TOPIC, blob=ctx_blob)
    )
    query = channel.send(
        QueryMessage(sender=device, receiver=SERVER, round=0, topic=_SELECT_TOPIC, blob=query_blob)
    )
    assert isinstance(ctx_msg, QueryMessage) and isinstance(query, QueryMessage)
    # --- server ------------------------------------------------------------------------
    reply = channel.send(server.answer(ctx_msg, query))
    assert isinstance(reply, ReplyMessage)
    # --- device: decrypt and decode ----------------------------------------------------
    t = time.perf_counter()
    logits = layout.decode_output(keys.decrypt(reply.blob, count=layout.groups))
    t_dev += time.perf_counter() - t
    stats.devices += 1
    stats.context_bytes += len(ctx_blob)
    stats.query_bytes += len(query_blob)
    stats.reply_bytes += len(reply.blob)
    stats.keygen_seconds += t_key
    stats.device_seconds += t_dev
    return logits
