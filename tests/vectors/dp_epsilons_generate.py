"""Regenerate ``dp_epsilons.json``: our accountants' ε next to Google dp_accounting's.

Run from the repository root: ``python tests/vectors/dp_epsilons_generate.py``.
The test ``tests/protocols/dp/test_dp_accountants.py::test_pinned_vectors`` checks
that our accountants still reproduce ``epsilon`` and that it agrees with the
independent ``reference_epsilon`` (PLD for "prv", RDP for "rdp") within 2 %.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dp_accounting as dpa
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from protocols.dp import make_accountant
from protocols.dp.events import (
    ComposedEvent,
    DpEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)

CASES: list[tuple[float, float, int, float]] = [
    # (sample_rate, noise_multiplier, steps, delta)
    (0.01, 1.0, 1000, 1e-5),  # the team's orientation numbers: RDP ≈ 2.10, PRV ≈ 1.84
    (0.1, 1.0, 100, 1e-5),
    (0.004, 1.1, 10000, 1e-5),
    (1.0, 2.0, 10, 1e-6),
    (0.05, 0.8, 500, 1e-6),
]


def ours(event: DpEvent, delta: float, accountant: str) -> float:
    return make_accountant(accountant).compose(event).get_epsilon(delta=delta)


def reference(q: float, z: float, steps: int, delta: float, accountant: str) -> float:
    inner = (
        dpa.GaussianDpEvent(z) if q == 1.0 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    )
    event = dpa.SelfComposedDpEvent(inner, steps)
    acc = (
        pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        if accountant == "prv"
        else rdp_privacy_accountant.RdpAccountant()
    )
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def main() -> None:
    logging.disable(logging.WARNING)
    rows = []
    for q, z, steps, delta in CASES:
        inner: DpEvent = GaussianEvent(z) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(z))
        event = SelfComposedEvent(inner, steps)
        for accountant in ("prv", "rdp"):
            rows.append(
                {
                    "accountant": accountant,
                    "delta": delta,
                    "event": event.to_dict(),
                    "epsilon": ours(event, delta, accountant),
                    "reference": "dp_accounting "
                    + ("PLD (1e-4 grid)" if accountant == "prv" else "RDP"),
                    "reference_epsilon": reference(q, z, steps, delta, accountant),
                }
            )
    # A heterogeneous composition (two phases with different q and z).
    het = ComposedEvent(
        [
            SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 500),
            SelfComposedEvent(PoissonSampledEvent(0.02, GaussianEvent(1.5)), 300),
        ]
    )
    het_ref = dpa.ComposedDpEvent(
        [
            dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0)), 500),
            dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.02, dpa.GaussianDpEvent(1.5)), 300),
        ]
    )
    for accountant in ("prv", "rdp"):
        acc = (
            pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
            if accountant == "prv"
            else rdp_privacy_accountant.RdpAccountant()
        )
        acc.compose(het_ref)
        rows.append(
            {
                "accountant": accountant,
                "delta": 1e-5,
                "event": het.to_dict(),
                "epsilon": ours(het, 1e-5, accountant),
                "reference": "dp_accounting "
                + ("PLD (1e-4 grid)" if accountant == "prv" else "RDP"),
                "reference_epsilon": float(acc.get_epsilon(1e-5)),
            }
        )
    out = Path(__file__).with_name("dp_epsilons.json")
    out.write_text(json.dumps({"format": 1, "vectors": rows}, indent=2) + "\n")
    print(f"wrote {len(rows)} vectors to {out}")


if __name__ == "__main__":
    main()
