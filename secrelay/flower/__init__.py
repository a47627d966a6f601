"""secrelay as a Flower app (the ``secrelay[flower]`` extra).

The secure relay round runs between processes over Flower's transport: a
``ServerApp`` drives the same :class:`~secrelay.federated.loop.FederatedLoop`, strategies
and user-level DP sums as an in-process run, and each ``ClientApp`` (one per device)
trains locally, keeps its contribution, and takes part in **secrelay's own SecAgg+**
(:mod:`protocols.secagg`), whose stage messages travel as bytes inside Flower
``Message`` content. Flower's SecAgg+ mod is not used.

Modules: :mod:`~secrelay.flower.job` (what both sides build from one run config),
:mod:`~secrelay.flower.device` (the ClientApp's handlers), :mod:`~secrelay.flower.server`
(the ServerApp's executor and secure sum), :mod:`~secrelay.flower.app` (the Flower
objects and the ``server_app`` / ``client_app`` entry points). Only those modules
import ``flwr``; importing this package does not. See ``docs/deploy.md``.
"""

from __future__ import annotations

import importlib.util

from protocols.errors import ConfigError

__all__ = ["flower_available", "require_flower"]


def flower_available() -> bool:
    """Whether the optional ``flwr`` package is installed."""
    return importlib.util.find_spec("flwr") is not None


def require_flower() -> None:
    """Raise :class:`ConfigError` naming the extra when ``flwr`` is missing."""
    if not flower_available():
        raise ConfigError(
            "the Flower app needs flwr: install the extra with `pip install 'secrelay[flower]'`"
        )
