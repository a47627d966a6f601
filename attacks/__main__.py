"""``python -m attacks CONFIG --out DIR``: the trade-off grid (see :mod:`attacks.cli`)."""

from attacks.cli import app

app(prog_name="python -m attacks")
