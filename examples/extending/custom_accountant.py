"""Extension point: a privacy accountant.

An accountant turns the ledger's privacy events into ε. Registered accountants are
chosen by name (``privacy.accountant``), used for calibration, budgets and
``secrelay audit``. Here: an RDP accountant restricted to integer orders — coarser,
so its ε is never below the built-in RDP accountant's (a quick sanity check that a
run's claim does not hinge on the choice of orders).

Run: ``python examples/extending/custom_accountant.py``
"""

from __future__ import annotations

import secrelay
from protocols.dp import RDPAccountant
from secrelay.audit import audit

try:
    from _tiny import TINY
except ImportError:  # pragma: no cover
    from examples.extending._tiny import TINY


class IntegerOrderRDP(RDPAccountant):
    """RDP over the integer orders 2..64 only."""

    name = "rdp_int"

    def __init__(self) -> None:
        super().__init__(orders=tuple(float(a) for a in range(2, 65)))


secrelay.register_accountant("rdp_int", IntegerOrderRDP)


def main() -> dict[str, float]:
    result = secrelay.simulate(
        strategy_params={"weighting": "uniform"},
        privacy={
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "noise_multiplier": 1.0,
            "accountant": "rdp_int",
        },
        federated={"rounds": 2, "sampling": "poisson", "sample_rate": 0.3},
        **TINY,
    )
    report = audit(result.run_dir, accountant="rdp_int", comparison="rdp", write=False)
    eps = {f.accountant: f.epsilon for f in report.user.figures}
    print(f"user-level ε: {eps['rdp_int']:.3f} (integer orders) vs {eps['rdp']:.3f} (RDP)")
    return eps


if __name__ == "__main__":
    main()
