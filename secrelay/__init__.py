"""secrelay: privacy-preserving relay learning of CTR models."""

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
]
