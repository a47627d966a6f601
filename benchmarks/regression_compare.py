"""Compare two outputs of ``benchmarks/regression_subset.sh`` (before / after a change).

    python benchmarks/regression_compare.py BEFORE_DIR AFTER_DIR

Prints one line per run: ``same`` when every round's gAUC, AUC and logloss and the
ledger length are equal to the last bit, otherwise the first difference. Exits 1 if
any run differs or is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(before: Path, after: Path) -> int:
    bad = 0
    for f in sorted(before.glob("*.json")):
        g = after / f.name
        if not g.exists():
            print(f"{f.stem:20s} MISSING in {after}")
            bad += 1
            continue
        a, b = json.loads(f.read_text()), json.loads(g.read_text())
        if a == b:
            last = a["rounds"][-1]
            print(f"{f.stem:20s} same  (round {last['round']}: gAUC {last['gauc']})")
            continue
        bad += 1
        for ra, rb in zip(a["rounds"], b["rounds"]):
            if ra != rb:
                print(f"{f.stem:20s} DIFFERS at round {ra['round']}: {ra} vs {rb}")
                break
        else:
            print(
                f"{f.stem:20s} DIFFERS: {a.get('ledger_lines')} vs {b.get('ledger_lines')} ledger lines"
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
