"""Privacy primitives: secure aggregation, differential privacy, homomorphic encryption.

This package knows nothing of CTR models or relay learning: its functions take
arrays or bytes and return arrays or bytes. It never imports :mod:`secrelay` or
:mod:`attacks`.
"""

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

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "DataFormatError",
    "InvalidParameterError",
    "MessageError",
    "ProtocolAbort",
    "SecrelayError",
    "UnsupportedEventError",
]
