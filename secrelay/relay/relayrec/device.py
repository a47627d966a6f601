"""RelayRec's device side, Algorithm 3 steps 1–2: which initial model a device
starts from.

At set-up (round 0) every device downloads the item space, computes its preference
vector p_u from its own train data and obtains k_u from the selector — by a
:class:`~secrelay.federated.messages.QueryMessage` the server answers (in the clear,
or encrypted under CKKS with ``privacy.he_selector``,
:mod:`~secrelay.relay.relayrec.he_selector`) or by running the downloaded selector
locally; the
``random`` and ``optimal`` ablations choose otherwise. The device keeps k_u in its
private state. Every message crosses the run's
:class:`~secrelay.federated.transcript.Channel`, so the transcript shows what left
the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from secrelay.federated.client import DeviceData, ModelSpec, load_flat_parameters
from secrelay.federated.messages import SERVER, ModelDownload, QueryMessage, ReplyMessage
from secrelay.federated.transcript import Channel
from secrelay.metrics import logloss
from secrelay.relay.relayrec.he_selector import HESelectorServer, encrypted_select
from secrelay.relay.relayrec.options import RelayRecOptions
from secrelay.relay.relayrec.selector import ItemSpace, SelectorWeights, selector_logits
from secrelay.training import predict

__all__ = ["ITEM_SPACE_TOPIC", "SELECTOR_TOPIC", "SELECT_TOPIC", "select_device_key"]

SELECT_TOPIC = "relayrec/select"
ITEM_SPACE_TOPIC = "relayrec/item_space"
SELECTOR_TOPIC = "relayrec/selector"


def select_device_key(
    device: DeviceData,
    *,
    opts: RelayRecOptions,
    keys: tuple[str, ...],
    channel: Channel,
    item_space: ItemSpace,
    selector: SelectorWeights,
    initial: Mapping[str, np.ndarray],
    spec: ModelSpec,
    seed: int,
    he: HESelectorServer | None = None,
) -> str:
    """Algorithm 3, steps 1–2, for one device: which initial model it starts from.

    The server's part (answering a query) is the only code here that reads a
    device's message; the device's part reads only its own data and what it
    downloaded. Every message goes through ``channel`` (round 0). With ``he`` (the
    server of ``privacy.he_selector``) the query is encrypted
    (:func:`~secrelay.relay.relayrec.he_selector.encrypted_select`): the server sees a
    CKKS ciphertext of p_u, never p_u.
    """
    dev = device.device_id
    if opts.selection == "random":
        rng = np.random.default_rng(np.random.SeedSequence([seed, dev, 17]))
        return keys[int(rng.integers(len(keys)))]
    if opts.selection == "optimal":
        down = channel.send(
            ModelDownload(sender=SERVER, receiver=dev, round=0, models=dict(initial))
        )
        assert isinstance(down, ModelDownload)
        model = spec.build()
        losses = []
        for key in keys:
            load_flat_parameters(model, down.models[key])
            losses.append(logloss(device.train.y, predict(model, device.train)))
        return keys[int(np.argmin(losses))]
    # The learned selector: the device computes p_u on its own train data.
    pub = channel.send(
        ReplyMessage(
            sender=SERVER, receiver=dev, round=0, topic=ITEM_SPACE_TOPIC, arrays=item_space.arrays()
        )
    )
    assert isinstance(pub, ReplyMessage)
    p_u = ItemSpace.from_arrays(device.train.schema, pub.arrays).preference(device.train)
    if he is not None:
        return keys[int(np.argmax(encrypted_select(dev, p_u, channel=channel, server=he)))]
    if opts.selector_path == "local":
        w = channel.send(
            ReplyMessage(
                sender=SERVER, receiver=dev, round=0, topic=SELECTOR_TOPIC, arrays=selector.arrays()
            )
        )
        assert isinstance(w, ReplyMessage)
        scores = selector_logits(SelectorWeights.from_arrays(w.arrays), p_u)
    else:
        q = channel.send(
            QueryMessage(
                sender=dev, receiver=SERVER, round=0, topic=SELECT_TOPIC, arrays={"p_u": p_u}
            )
        )
        assert isinstance(q, QueryMessage)
        answer = selector_logits(selector, q.arrays["p_u"])  # server side
        r = channel.send(
            ReplyMessage(
                sender=SERVER, receiver=dev, round=0, topic=SELECT_TOPIC, arrays={"scores": answer}
            )
        )
        assert isinstance(r, ReplyMessage)
        scores = r.arrays["scores"]
    return keys[int(np.argmax(scores))]
