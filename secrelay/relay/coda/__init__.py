"""CoDA: on-device learning with cloud-coordinated data augmentation (method 3).

Paper: R. Gu, C. Niu, Y. Yan, F. Wu, S. Tang, R. Jia, C. Lyu, G. Chen, "On-Device
Learning with Cloud-Coordinated Data Augmentation for Extreme Model Personalization
in Recommender Systems", arXiv:2201.10382 (2022).

The method ``method.name = "coda"`` runs the whole pipeline once per device:

1. cloud (:mod:`~secrelay.relay.coda.matching`, :mod:`~secrelay.relay.coda.cloud`):
   train the cloud CTR model M0 on the pre-regulation data; build the pool users'
   vectors (mean of one feature over their samples) and a KNN index; keep the pool
   in a deduplicated sample store;
2. device → cloud: the device's own vector, computed from its local samples, in
   a ``QueryMessage``; cloud → device: the K nearest pool users' samples in
   batches (≤ 12 a day), each a zlib + base64 ``ReplyMessage`` blob
   (:mod:`~secrelay.relay.coda.payload`);
3. device (:mod:`~secrelay.relay.coda.device`): decode the batches into its
   bounded matched-sample table (:mod:`~secrelay.relay.coda.storage`), filter them
   with the personalized classifier (Algorithm 2, threshold σ;
   :mod:`~secrelay.relay.coda.filtering`), and fine-tune M0 on local + kept samples
   with validation-gated mini-batch updates (Algorithm 3;
   :mod:`~secrelay.relay.coda.training`); publish the result as M.

The device steps run through the run's executor
(:mod:`~secrelay.relay.coda.program`); the matching stays on the server.

Each run also scores, on the same devices, the baselines **Cloud** (M0 without
fine-tuning) and **Local** (plain fine-tuning of M0 on the local samples), the
ablation **Local+gate** (Algorithm 3 without matched samples) and every σ in
``sigma_sweep``, so that one run fills a row of the results table.

Options (``[method.options]``) are documented on :class:`CoDAOptions`.

Differential privacy (``[privacy] dp_sgd = true``; ``docs/coda.md``, *Differential
privacy*; :mod:`~secrelay.relay.coda.privacy`): the classifier (Algorithm 2) and
every CTR model trained on device data (each σ, and the Local baseline) train with
example-level DP-SGD through Opacus; each training appends a ledger record (unit
``"example"``, the device). Their sampling rates and step counts are fixed from
public sizes before the round, so :meth:`CoDAMethod.planned_privacy_records` is
exactly what a device with matched rows spends. Algorithm 3's validation gate is a
non-private decision on held-out local rows, so ``dp_sgd`` requires
``method.options.gate = false``; ``user_level_dp`` and ``secure_aggregation`` are
refused (CoDA releases no aggregate).

:class:`CoDAMethod` (:mod:`~secrelay.relay.coda.method`) is registered in
:mod:`secrelay.relay`, not here. Every public name is re-exported here.
"""

from secrelay.relay.coda.cloud import (
    CloudSampleStore,
    CoDACloud,
    DailyQuota,
    batch_replies,
    make_batches,
    match_reply,
)
from secrelay.relay.coda.device import CoDADevice, device_user_vector
from secrelay.relay.coda.filtering import (
    CLASSIFIER_BATCH_SIZE,
    FilterResult,
    classifier_negatives,
    filter_matched,
    filter_matched_private,
)
from secrelay.relay.coda.matching import (
    KNNMatcher,
    VectorMode,
    default_user_feature,
    field_embedding_table,
    user_vectors,
)
from secrelay.relay.coda.method import CoDAMethod
from secrelay.relay.coda.options import CoDAOptions
from secrelay.relay.coda.payload import (
    BATCH_TOPIC,
    MATCH_TOPIC,
    PAYLOAD_MAGIC,
    SampleBatch,
    decode_payload,
    encode_payload,
    match_request,
)
from secrelay.relay.coda.privacy import (
    DPUse,
    calibrated_noise_multiplier,
    matched_rows_bound,
    plan_dp_uses,
)
from secrelay.relay.coda.privatize import SamplePrivatizer
from secrelay.relay.coda.program import CoDAProgram, CoDATask, UserVectorProgram
from secrelay.relay.coda.storage import ModelStore, SampleTable
from secrelay.relay.coda.training import (
    DPSGDSettings,
    GatedTrainResult,
    PrivateTrainResult,
    gated_train,
    private_train,
)

__all__ = [
    "BATCH_TOPIC",
    "CLASSIFIER_BATCH_SIZE",
    "MATCH_TOPIC",
    "PAYLOAD_MAGIC",
    "CloudSampleStore",
    "CoDACloud",
    "CoDADevice",
    "CoDAMethod",
    "CoDAOptions",
    "CoDAProgram",
    "CoDATask",
    "DPSGDSettings",
    "DPUse",
    "DailyQuota",
    "FilterResult",
    "GatedTrainResult",
    "KNNMatcher",
    "ModelStore",
    "PrivateTrainResult",
    "SampleBatch",
    "SamplePrivatizer",
    "SampleTable",
    "UserVectorProgram",
    "VectorMode",
    "batch_replies",
    "calibrated_noise_multiplier",
    "classifier_negatives",
    "decode_payload",
    "default_user_feature",
    "device_user_vector",
    "encode_payload",
    "field_embedding_table",
    "filter_matched",
    "filter_matched_private",
    "gated_train",
    "make_batches",
    "match_reply",
    "match_request",
    "matched_rows_bound",
    "plan_dp_uses",
    "private_train",
    "user_vectors",
]
