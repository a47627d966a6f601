"""Entry points of the example Flower app: the ServerApp and ClientApp of the run
config ``secrelay.toml`` next to this file (both sides read the same file)."""

from __future__ import annotations

from pathlib import Path

from secrelay.config import load_config
from secrelay.flower.app import make_client_app, make_server_app

CONFIG = load_config(Path(__file__).with_name("secrelay.toml"))

server_app = make_server_app(CONFIG)
client_app = make_client_app(CONFIG)
