"""The built-in methods: federated learning from the cloud model, RelayRec, LCFT,
CoDA and MetaUA.

Each relay method lives in its own module and defines a
:class:`secrelay.methods.Method`; they are registered in
:data:`secrelay.methods.METHODS` here, in one place, so a method module can be
imported and used without side effects. The runner imports this package.
"""

from secrelay.methods import METHODS, FederatedMethod, Method
from secrelay.relay.coda import CoDAMethod
from secrelay.relay.lcft import LCFTMethod
from secrelay.relay.metaua import MetaUAMethod
from secrelay.relay.relayrec import RelayRecMethod

BUILTIN_METHODS: tuple[type[Method], ...] = (
    FederatedMethod,
    RelayRecMethod,
    LCFTMethod,
    CoDAMethod,
    MetaUAMethod,
)

for _cls in BUILTIN_METHODS:
    METHODS.register(_cls.name, _cls)

__all__ = [
    "BUILTIN_METHODS",
    "CoDAMethod",
    "FederatedMethod",
    "LCFTMethod",
    "MetaUAMethod",
    "RelayRecMethod",
]
