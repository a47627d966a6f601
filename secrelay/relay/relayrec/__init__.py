"""RelayRec: cloud–device relay learning of CTR models (method ``"relayrec"``).

Deng et al., "RelayRec: Empowering Privacy-Preserving CTR Prediction via
Cloud-Device Relay Learning", IPSN 2023. Three stages:

* **Clustered meta-learning on the cloud** (Algorithm 1,
  :mod:`~secrelay.relay.relayrec.cloud`): xDeepFM server model → user embeddings →
  k-means into K clusters → MAML of the device model (LR or DNN) per cluster →
  fine-tuning of each of the K initial models on all cloud data.
* **Automated model selector** (Algorithm 2,
  :mod:`~secrelay.relay.relayrec.selector`): item categories, preference vectors
  p_u and an MLP s(p_u) → k_u trained on the cloud users.
* **Personalized collaborative learning on the devices** (Algorithm 3,
  :mod:`~secrelay.relay.relayrec.device` and
  :mod:`~secrelay.relay.relayrec.strategy`): every device downloads all K initial
  models and the item space, computes p_u from its own train data, obtains k_u (by
  default through a :class:`~secrelay.federated.messages.QueryMessage` /
  ``ReplyMessage`` pair — the flow a CKKS layer will encrypt — or by running the
  downloaded selector locally), keeps k_u in its private state, and in each round
  trains with the FedProx objective μ/2‖w − w_k‖² towards its chosen model; the
  server aggregates per model
  (:class:`~secrelay.federated.strategies.ClusteredStrategy`, sample-weighted), so
  devices that chose different models never mix.

Every component can be swapped for the paper's ablations and baselines
(:class:`~secrelay.relay.relayrec.options.RelayRecOptions`).

Modules, one job each: ``options`` (``[method.options]``), ``cloud`` (Algorithm 1
and the K initial models), ``selector`` (Algorithm 2), ``device`` (a device's
choice of initial model), ``strategy`` (the collaboration strategies) and
``method`` (:class:`RelayRecMethod`, which the runner drives; it is registered in
:mod:`secrelay.relay`, not here). Every public name is re-exported here.
"""

from secrelay.relay.relayrec.cloud import (
    MAMLConfig,
    MetaTask,
    build_initial_models,
    cluster_data,
    cluster_users,
    make_meta_tasks,
    maml_step,
    maml_train,
    model_keys,
    train_normal,
    user_representations,
)
from secrelay.relay.relayrec.device import (
    ITEM_SPACE_TOPIC,
    SELECT_TOPIC,
    SELECTOR_TOPIC,
    select_device_key,
)
from secrelay.relay.relayrec.method import RelayRecMethod
from secrelay.relay.relayrec.options import RelayRecOptions
from secrelay.relay.relayrec.selector import (
    ItemSpace,
    SelectorWeights,
    fit_item_space,
    preference_vector,
    selector_logits,
    train_selector,
)
from secrelay.relay.relayrec.strategy import SharedUpdateStrategy

__all__ = [
    "ITEM_SPACE_TOPIC",
    "SELECTOR_TOPIC",
    "SELECT_TOPIC",
    "ItemSpace",
    "MAMLConfig",
    "MetaTask",
    "RelayRecMethod",
    "RelayRecOptions",
    "SelectorWeights",
    "SharedUpdateStrategy",
    "build_initial_models",
    "cluster_data",
    "cluster_users",
    "fit_item_space",
    "make_meta_tasks",
    "maml_step",
    "maml_train",
    "model_keys",
    "preference_vector",
    "select_device_key",
    "selector_logits",
    "train_normal",
    "train_selector",
    "user_representations",
]
