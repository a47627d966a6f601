"""The library's exception hierarchy.

It lives in :mod:`protocols` (the bottom layer) so that every layer can raise and
catch the same types; :mod:`secrelay` re-exports it. Each subclass also inherits
the matching built-in, so ``except ValueError`` keeps working for callers that do
not know about secrelay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocols.dp.ledger import LedgerRecord

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


class SecrelayError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidParameterError(SecrelayError, ValueError):
    """An argument is outside its valid range or of the wrong kind.

    The message names the argument, echoes the value and says what to change.
    """


class ConfigError(InvalidParameterError):
    """A run configuration is malformed (unknown key, wrong type, out of range)."""


class DataFormatError(SecrelayError, ValueError):
    """An input data file is malformed; the message names the file, line and reason."""


class MessageError(SecrelayError, ValueError):
    """A protocol message is malformed, forged, replayed or re-routed; it was rejected
    and the receiver's state is unchanged."""


class ProtocolAbort(SecrelayError, RuntimeError):
    """A multi-party protocol cannot complete (for example too few survivors).

    Attributes
    ----------
    stage:
        The protocol stage at which the abort happened.
    reason:
        Human-readable reason.
    privacy_records:
        The DP releases (:class:`~protocols.dp.ledger.LedgerRecord`) that happened
        before the abort, so a ledger can still charge them.
    """

    def __init__(
        self, stage: str, reason: str, *, privacy_records: tuple[LedgerRecord, ...] = ()
    ) -> None:
        super().__init__(f"protocol aborted at stage {stage!r}: {reason}")
        self.stage = stage
        self.reason = reason
        self.privacy_records: tuple[LedgerRecord, ...] = tuple(privacy_records)

    def add_privacy_records(self, records: Iterable[LedgerRecord]) -> None:
        """Append releases made before the abort (each layer adds its own)."""
        self.privacy_records = (*self.privacy_records, *records)


class BudgetExceededError(SecrelayError, RuntimeError):
    """A privacy budget would be exceeded; the release was refused before it happened."""


class UnsupportedEventError(SecrelayError, TypeError):
    """An accountant cannot account a privacy event (names the sub-event)."""


#: Process exit codes of the command lines, by error class (the first match wins;
#: anything else is 1): 2 bad usage or configuration, 3 bad input data, 4 a protocol
#: abort, 5 a refused privacy budget.
EXIT_CODES: tuple[tuple[type[SecrelayError], int], ...] = (
    (DataFormatError, 3),
    (ProtocolAbort, 4),
    (BudgetExceededError, 5),
    (ConfigError, 2),
    (InvalidParameterError, 2),
)


def exit_code(err: BaseException) -> int:
    """The command-line exit code of ``err`` (:data:`EXIT_CODES`; 1 otherwise)."""
    return next((code for cls, code in EXIT_CODES if isinstance(err, cls)), 1)
