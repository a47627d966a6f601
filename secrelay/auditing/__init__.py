"""The parts of ``secrelay audit``: what a run directory shows (:mod:`.evidence`, with
the ledger cross-check), the run's flows and their protection (:mod:`.flows`), the
attack grid's empirical bounds (:mod:`.empirical`) and the typed report
(:mod:`.report`). The entry point is :func:`secrelay.audit.audit`."""

from secrelay.auditing.empirical import EmpiricalBound
from secrelay.auditing.evidence import AuditError, LedgerCheck
from secrelay.auditing.flows import Flow
from secrelay.auditing.report import AccountantEpsilon, AuditReport, UnitEpsilon

__all__ = [
    "AccountantEpsilon",
    "AuditError",
    "AuditReport",
    "EmpiricalBound",
    "Flow",
    "LedgerCheck",
    "UnitEpsilon",
]
