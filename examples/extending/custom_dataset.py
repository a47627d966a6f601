"""Extension point: a data set.

Two ways in. ``secrelay.register_dataset(name, loader)`` makes a loader available
by name (``[data] name = "..."`` in TOML, ``data="..."`` here); or pass a
``CTRDataset`` object straight to ``simulate``. Either way the runner applies the
regulation split (cloud / device) and the per-device train/test split.

Run: ``python examples/extending/custom_dataset.py``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import secrelay
from secrelay.data import make_synthetic

try:
    from _tiny import TINY
except ImportError:  # pragma: no cover
    from examples.extending._tiny import TINY


def load_clicks(path: str | Path | None, **options: Any) -> secrelay.CTRDataset:
    """A loader: ``(path, **options) -> CTRDataset``. A real one would read ``path``
    (see ``secrelay.data.load_csv`` for CSV/Parquet with a ``TabularSpec``)."""
    return make_synthetic(n_users=options.get("n_users", 30), samples_per_user=24, seed=7)


secrelay.register_dataset("clicks", load_clicks)


def main() -> tuple[float, float]:
    tiny = {k: v for k, v in TINY.items() if k != "data_options"}
    # Bit-identical runs need reproducible randomness: under the default ("secure") the
    # device sample of every round is drawn from OS entropy.
    tiny["privacy"] = {"randomness": "reproducible"}
    by_name = secrelay.simulate(
        data="clicks", data_options={"n_users": 30}, federated={"rounds": 2}, **tiny
    )
    in_memory = secrelay.simulate(
        data=load_clicks(None, n_users=30), federated={"rounds": 2}, **tiny
    )
    a, b = by_name.final["final"]["gauc"], in_memory.final["final"]["gauc"]
    print(f"registered loader: gAUC {a:.4f}; same data in memory: gAUC {b:.4f}")
    return a, b


if __name__ == "__main__":
    main()
