"""secrelay: privacy-preserving relay learning of CTR models.

The public API is loaded lazily (``import secrelay`` stays light, no torch until a
name that needs it is used):

- running: ``secrelay.simulate(method=..., strategy=..., privacy=..., data=...)``
  (no TOML), ``secrelay.run(config, run_dir)``, ``secrelay.resume(run_dir)``,
  ``secrelay.load_config(path)``; the privacy audit is
  ``secrelay.audit(run_dir)`` (an ``AuditReport``; also
  ``from secrelay.audit import audit``);
- extending (``docs/architecture.md``, ``examples/extending/``): the base classes
  ``Method`` (with ``LoopMethod``, ``RunContext``), ``Strategy``, ``CTRModel`` and
  ``PrivacyAccountant``, and their registries' ``register_method``,
  ``register_strategy``, ``register_model``, ``register_dataset`` and
  ``register_accountant``; ``PrivacyPlan`` and ``PrivacyConfig`` for privacy.
"""

from typing import Any

from protocols.errors import (
    BudgetExceededError,
    ConfigError,
    DataFormatError,
    InvalidParameterError,
    MessageError,
    ProtocolAbort,
    SecrelayError,
    UnsupportedEventError,
    exit_code,
)

__version__ = "0.1.0"

_LAZY = {
    "run": "secrelay.experiment",
    "resume": "secrelay.experiment",
    "RunResult": "secrelay.experiment",
    "simulate": "secrelay.api",
    "load_config": "secrelay.config",
    "read_toml": "secrelay.config",
    "RunConfig": "secrelay.config",
    "PrivacyConfig": "secrelay.config",
    "Method": "secrelay.methods",
    "LoopMethod": "secrelay.methods",
    "RunContext": "secrelay.methods",
    "register_method": "secrelay.methods",
    "Strategy": "secrelay.federated.strategies",
    "register_strategy": "secrelay.federated.strategies",
    "CTRModel": "secrelay.models",
    "register_model": "secrelay.models",
    "CTRDataset": "secrelay.data",
    "register_dataset": "secrelay.data",
    "PrivacyAccountant": "protocols.dp",
    "register_accountant": "protocols.dp",
    "PrivacyPlan": "secrelay.privacy.plan",
    "AuditReport": "secrelay.auditing",
    "AuditError": "secrelay.auditing",
}


def __getattr__(name: str) -> Any:
    if name == "audit":  # the module is callable: secrelay.audit(run_dir)
        import importlib

        return importlib.import_module("secrelay.audit")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'secrelay' has no attribute {name!r}")


__all__ = [
    "AuditError",
    "AuditReport",
    "BudgetExceededError",
    "CTRDataset",
    "CTRModel",
    "ConfigError",
    "DataFormatError",
    "InvalidParameterError",
    "LoopMethod",
    "MessageError",
    "Method",
    "PrivacyAccountant",
    "PrivacyConfig",
    "PrivacyPlan",
    "ProtocolAbort",
    "RunConfig",
    "RunContext",
    "RunResult",
    "SecrelayError",
    "Strategy",
    "UnsupportedEventError",
    "__version__",
    "audit",
    "exit_code",
    "load_config",
    "read_toml",
    "register_accountant",
    "register_dataset",
    "register_method",
    "register_model",
    "register_strategy",
    "resume",
    "run",
    "simulate",
]


def __dir__() -> list[str]:
    return sorted(__all__)
