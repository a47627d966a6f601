"""Differential-privacy primitives: events, accountants, mechanisms, the privacy ledger.

Arrays/tensors in and out; nothing here knows about CTR models or relay learning,
and nothing imports :mod:`secrelay` or :mod:`attacks`. See ``docs/dp.md``.

Submodules
----------
:mod:`~protocols.dp.events`
    Immutable, nestable privacy events (``GaussianEvent``, ``PoissonSampledEvent``, ...).
:mod:`~protocols.dp.accountants`
    ``PRVAccountant`` (default, tight) and ``RDPAccountant``; registry.
:mod:`~protocols.dp.calibration`
    ``calibrate_noise_multiplier``.
:mod:`~protocols.dp.ledger`
    ``PrivacyLedger``, ``LedgerRecord``, ``PrivacyBudget``.
:mod:`~protocols.dp.mechanisms`
    Clipping and the Gaussian mechanism on sums.
:mod:`~protocols.dp.distributed`
    Exact discrete Gaussian sampler, integer encoding, distributed noise for SecAgg.
:mod:`~protocols.dp.ldp`
    Local DP for a scalar in [0, 1].
:mod:`~protocols.dp.local_training`
    ``make_private_local_training`` over Opacus: the torch side. Not imported here
    (``import protocols.dp`` loads neither torch nor Opacus); import its names from
    :mod:`protocols.dp.local_training` explicitly.
:mod:`~protocols.dp.rng`
    ``make_generator``, ``SecureGenerator``.
:mod:`~protocols.dp.correlated`, :mod:`~protocols.dp.tree`, :mod:`~protocols.dp.matrix_factorization`
    Correlated-noise prefix sums without amplification: DP-FTRL's tree aggregation
    and banded matrix factorization (``TreeAggregationNoise``, ``BandedMatrixNoise``).
:mod:`~protocols.dp.adaptive_clip`
    Quantile-based adaptive clipping and its joint noise multiplier.
"""

from protocols.dp.accountants import (
    DEFAULT_RDP_ORDERS,
    PrivacyAccountant,
    PrivacyAccountingWarning,
    PRVAccountant,
    RDPAccountant,
    available_accountants,
    make_accountant,
    register_accountant,
)
from protocols.dp.adaptive_clip import (
    joint_noise_multiplier,
    noisy_clipped_fraction,
    quantile_clip_update,
    update_noise_multiplier,
)
from protocols.dp.calibration import (
    calibrate_noise_multiplier,
    epsilon_for,
    smallest_noise_within,
)
from protocols.dp.correlated import (
    CorrelatedNoise,
    gaussian_increment,
    stream_sensitivity_squared,
)
from protocols.dp.distributed import (
    DistributedDiscreteGaussianPlan,
    dequantize,
    discrete_gaussian,
    discrete_gaussian_pmf,
    from_modular,
    quantize,
    rounded_l2_bound,
    to_modular,
)
from protocols.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    PoissonSampledEvent,
    PureEpsilonEvent,
    RandomizedResponseEvent,
    SelfComposedEvent,
    ZCDPEvent,
    event_from_dict,
)
from protocols.dp.ldp import gaussian_report, randomized_response, randomized_response_estimate
from protocols.dp.ledger import (
    ADJACENCIES,
    Adjacency,
    BudgetReport,
    EpsilonPoint,
    LedgerConflictError,
    LedgerRecord,
    PrivacyBudget,
    PrivacyLedger,
    PrivacyUnit,
)
from protocols.dp.matrix_factorization import (
    BandedMatrixEvent,
    BandedMatrixNoise,
    banded_sqrt_factorization,
    prefix_sum_matrix,
    sqrt_toeplitz_coefficients,
)
from protocols.dp.mechanisms import clip_by_l2_norm, clip_update, gaussian_mechanism, l2_norm
from protocols.dp.rng import (
    RANDOMNESS_MODES,
    RandomGenerator,
    Randomness,
    SecureGenerator,
    check_randomness,
    make_generator,
)
from protocols.dp.tree import TreeAggregationEvent, TreeAggregationNoise, tree_depth

__all__ = [
    "ADJACENCIES",
    "DEFAULT_RDP_ORDERS",
    "RANDOMNESS_MODES",
    "Adjacency",
    "BandedMatrixEvent",
    "BandedMatrixNoise",
    "BudgetReport",
    "ComposedEvent",
    "CorrelatedNoise",
    "DistributedDiscreteGaussianEvent",
    "DistributedDiscreteGaussianPlan",
    "DpEvent",
    "EpsilonPoint",
    "GaussianEvent",
    "LaplaceEvent",
    "LedgerConflictError",
    "LedgerRecord",
    "NoOpEvent",
    "PRVAccountant",
    "PoissonSampledEvent",
    "PrivacyAccountant",
    "PrivacyAccountingWarning",
    "PrivacyBudget",
    "PrivacyLedger",
    "PrivacyUnit",
    "PureEpsilonEvent",
    "RDPAccountant",
    "RandomGenerator",
    "RandomizedResponseEvent",
    "Randomness",
    "SecureGenerator",
    "SelfComposedEvent",
    "TreeAggregationEvent",
    "TreeAggregationNoise",
    "ZCDPEvent",
    "available_accountants",
    "banded_sqrt_factorization",
    "calibrate_noise_multiplier",
    "check_randomness",
    "clip_by_l2_norm",
    "clip_update",
    "dequantize",
    "discrete_gaussian",
    "discrete_gaussian_pmf",
    "epsilon_for",
    "event_from_dict",
    "from_modular",
    "gaussian_increment",
    "gaussian_mechanism",
    "gaussian_report",
    "joint_noise_multiplier",
    "l2_norm",
    "make_accountant",
    "make_generator",
    "noisy_clipped_fraction",
    "prefix_sum_matrix",
    "quantile_clip_update",
    "quantize",
    "randomized_response",
    "randomized_response_estimate",
    "register_accountant",
    "rounded_l2_bound",
    "smallest_noise_within",
    "sqrt_toeplitz_coefficients",
    "stream_sensitivity_squared",
    "to_modular",
    "tree_depth",
    "update_noise_multiplier",
]
