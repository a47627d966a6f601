"""The Flower objects: ``ServerApp`` and ``ClientApp`` for a secrelay run config.

Deployed (``flwr run``), both read the run config file named by the Flower run
config key ``config`` (``[tool.flwr.app.config]`` of the app's ``pyproject.toml``,
path relative to the app directory) and the optional ``round-timeout`` (seconds).
Programmatically (a simulation, the tests), :func:`make_server_app` and
:func:`make_client_app` take a :class:`~secrelay.config.RunConfig` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from secrelay.config import RunConfig, load_config
from secrelay.federated.client import DeviceData
from secrelay.flower.device import handle_register, handle_secagg, handle_train
from secrelay.flower.job import FlowerJob
from secrelay.flower.server import FlowerRunResult, run_flower_server

__all__ = ["client_app", "make_client_app", "make_server_app", "server_app"]

_JOBS: dict[str, FlowerJob] = {}


def _job_for(config: RunConfig) -> FlowerJob:
    """One job per config and process (its data set is built once per worker)."""
    key = repr(config.to_dict())
    if key not in _JOBS:
        _JOBS[key] = FlowerJob(config)
    return _JOBS[key]


def _config_from(context: Context) -> RunConfig:
    path = Path(str(context.run_config.get("config", "secrelay.toml")))
    return load_config(path)


def make_client_app(
    config: RunConfig | Callable[[Context], RunConfig],
    *,
    device_data: Callable[[int, Context], DeviceData] | None = None,
    directory: Callable[[int], bytes] | None = None,
    beacon: Callable[[int, bytes], bytes] | None = None,
) -> ClientApp:
    """A ClientApp running the device side of ``config`` (or of the config a
    callable reads from the Flower context).

    ``device_data(device_id, context)`` loads this device's own rows (a real device
    reads its local store); default: the device's split of the run's data set, which
    the simulation builds once per worker process. ``directory(device_id)`` (a trusted
    PKI) and ``beacon(round, round_id)`` (a public beacon) make each device refuse a
    round whose identity keys or beacon differ from them (docs/deploy.md).
    """
    app = ClientApp()

    def job(context: Context) -> FlowerJob:
        j = _job_for(config(context) if callable(config) else config)
        if device_data is not None:
            j.loader = lambda dev: device_data(dev, context)
        j.directory, j.beacon = directory, beacon
        return j

    @app.query("secrelay_register")
    def register(msg: Message, context: Context) -> Message:
        return handle_register(job(context), msg, context)

    @app.train("secrelay")
    def train(msg: Message, context: Context) -> Message:
        return handle_train(job(context), msg, context)

    @app.query("secrelay_secagg")
    def secagg(msg: Message, context: Context) -> Message:
        return handle_secagg(job(context), msg, context)

    return app


def make_server_app(
    config: RunConfig | Callable[[Context], RunConfig],
    *,
    on_result: Callable[[FlowerRunResult], None] | None = None,
    timeout: float | None = None,
    beacon: Callable[[int, bytes], bytes] | None = None,
) -> ServerApp:
    """A ServerApp running ``config``; ``on_result`` receives the final models and
    round records; ``beacon(round, round_id)``: the public beacon (default: drawn)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config(context) if callable(config) else config
        wait = context.run_config.get("round-timeout", timeout)
        seconds = float(str(wait)) if wait else None
        result = run_flower_server(grid, cfg, timeout=seconds, beacon=beacon)
        if on_result is not None:
            on_result(result)

    return app


#: Entry points for ``flwr run`` (``[tool.flwr.app.components]``).
server_app = make_server_app(_config_from)
client_app = make_client_app(_config_from)
