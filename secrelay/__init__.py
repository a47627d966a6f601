"""secrelay: privacy-preserving relay learning of CTR models.

The entry points are loaded lazily (``import secrelay`` stays light, no torch):
``secrelay.run(config, run_dir)``, ``secrelay.resume(run_dir)`` and
``secrelay.load_config(path)``; the privacy audit is ``secrelay.audit.audit(run_dir)``.
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
)

__version__ = "0.1.0"

_LAZY = {
    "run": "secrelay.experiment",
    "resume": "secrelay.experiment",
    "load_config": "secrelay.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'secrelay' has no attribute {name!r}")


__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "DataFormatError",
    "InvalidParameterError",
    "MessageError",
    "ProtocolAbort",
    "SecrelayError",
    "UnsupportedEventError",
    "__version__",
    "load_config",
    "resume",
    "run",
]
