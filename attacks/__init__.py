"""Adversaries that measure what still leaks (``docs/attacks.md``).

Each attack consumes only a frozen *view* that the threat model grants — the
server's transcript (:class:`ServerView`), the released models
(:class:`ReleaseView`), the cloud data the server owns — and reports a leakage
metric with a confidence interval. This package reaches :mod:`secrelay` only through
the names its packages export (``tests/test_layering.py``), and ``secrelay`` never
imports it.

Entry points:

- ``attacks.attack(config, out)`` (``secrelay-attack CONFIG --out DIR``,
  ``python -m attacks CONFIG --out DIR``): the utility–privacy trade-off grid;
- the attacks, usable one by one: :class:`InteractedItemAttack`,
  :class:`LossThresholdAttack`, :class:`ReferenceAttack`, :class:`LiRAAttack`,
  :class:`AttributeInferenceAttack`, :class:`ClusterInferenceAttack`,
  :class:`GradientInversionAttack` (update inversion), :class:`LocalCTRAttack` (LCFT's
  local-CTR query), :class:`NeighbourhoodAttack` and :class:`ReidentificationAttack`
  (CoDA's batch fetches and privatized samples);
- the ε audits: :func:`audit_gaussian_sum` (many runs) and :class:`CanaryAudit`
  (one run);
- the statistics: :func:`clopper_pearson`, :func:`roc_summary`,
  :func:`epsilon_lower_bound`, :func:`one_run_epsilon_lower_bound`.

Names load lazily, so ``import attacks`` stays light.
"""

from typing import Any

_LAZY = {
    "attack": "attacks.report",
    "run_attacks": "attacks.report",
    "Entry": "attacks.report",
    "TradeoffReport": "attacks.report",
    "AttackConfig": "attacks.config",
    "PRESETS": "attacks.config",
    "Setting": "attacks.config",
    "load_attack_config": "attacks.config",
    "ModelLayout": "attacks.views",
    "ReleaseView": "attacks.views",
    "ServerView": "attacks.views",
    "InteractedItemAttack": "attacks.items",
    "ItemInferenceResult": "attacks.items",
    "detect_rows": "attacks.items",
    "LiRAAttack": "attacks.membership",
    "LossThresholdAttack": "attacks.membership",
    "MembershipResult": "attacks.membership",
    "ReferenceAttack": "attacks.membership",
    "membership_game": "attacks.membership",
    "AttributeInferenceAttack": "attacks.attributes",
    "AttributeResult": "attacks.attributes",
    "ClusterInferenceAttack": "attacks.clusters",
    "GradientInversionAttack": "attacks.inversion",
    "InversionResult": "attacks.inversion",
    "Reconstruction": "attacks.inversion",
    "inversion_run": "attacks.inversion",
    "planted_batches": "attacks.inversion",
    "LocalCTRAttack": "attacks.lcft",
    "LocalCTRResult": "attacks.lcft",
    "ldp_sweep": "attacks.lcft",
    "NeighbourhoodAttack": "attacks.coda",
    "NeighbourhoodResult": "attacks.coda",
    "ReidentificationAttack": "attacks.coda",
    "ReidentificationResult": "attacks.coda",
    "reidentification_sweep": "attacks.coda",
    "ClusterResult": "attacks.clusters",
    "AuditResult": "attacks.audit",
    "CanaryAudit": "attacks.audit",
    "audit_gaussian_sum": "attacks.audit",
    "insert_canaries": "attacks.audit",
    "one_run_guesses": "attacks.audit",
    "Estimate": "attacks.stats",
    "RocSummary": "attacks.stats",
    "clopper_pearson": "attacks.stats",
    "epsilon_lower_bound": "attacks.stats",
    "mean_estimate": "attacks.stats",
    "one_run_epsilon_ceiling": "attacks.stats",
    "one_run_epsilon_lower_bound": "attacks.stats",
    "roc_summary": "attacks.stats",
    "Recipe": "attacks.training",
    "train_from": "attacks.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attacks' has no attribute {name!r}")


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
