"""Privacy-preserving training paths that wrap the CTR models.

Submodules
----------
:mod:`~secrelay.privacy.dp_embedding`
    ``SparseEmbeddingDPSGD``: example-level DP-SGD whose embedding tables are clipped
    with ghost norms and updated sparsely, so a step's cost does not grow with the
    vocabulary.
:mod:`~secrelay.privacy.ghost_norms`
    The per-layer maths of ``SparseEmbeddingDPSGD``: per-example gradient norms and
    clipped sums from a layer's recorded inputs and output gradients.
:mod:`~secrelay.privacy.dpsgd`
    ``DPSGDTrainer``: a ``LocalTrainer`` running example-level DP-SGD through Opacus
    (Poisson sampling, ghost clipping by default) that returns its ledger records.
:mod:`~secrelay.privacy.user_dp`
    User-level DP on the aggregates (DP-FedAvg) as wrappers: ``ClipUpdate`` (on the
    device), the common base ``UserLevelDPSum`` and ``CentralGaussianSum`` (server
    noise on plaintext sums).
:mod:`~secrelay.privacy.distributed_dp`
    ``DistributedGaussianSum``: the same wrapper under SecAgg+, with distributed
    discrete Gaussian noise added on the devices before masking.
:mod:`~secrelay.privacy.correlated_dp`
    ``CorrelatedNoiseSum``: DP-FTRL (tree aggregation) and banded matrix factorization
    as user-level DP sums, without amplification (server-added noise).
:mod:`~secrelay.privacy.plan`
    ``PrivacyPlan``: the privacy problems of a config (checked before data loads),
    composition into a ``FederatedLoop`` at build time, and the records a round
    could spend (budget dry runs).
:mod:`~secrelay.privacy.session`
    ``PrivacySession``: a run's ledger (``privacy_ledger.jsonl``), budget checks before
    each round, and ledger/checkpoint reconciliation on resume.

The run-level report is :func:`secrelay.audit.audit` (``secrelay audit RUN_DIR``).
See ``docs/privacy.md``.
"""
