"""The relay learning methods: RelayRec, LCFT, CoDA and MetaUA.

Each method lives in its own module and registers a
:class:`secrelay.experiment.Method` under its name when imported; importing this
package imports every submodule, so ``method.name = "relayrec"`` in a config finds
it.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
