"""The ``secrelay-attack`` command (also ``python -m attacks``): the trade-off grid.

``secrelay`` never imports ``attacks`` (the layering rule), so the attack command is
its own console script rather than a ``secrelay`` subcommand. Exit codes follow
``secrelay``'s: 0 success, 2 bad usage or configuration, 3 bad input data, 4 a
protocol abort, 5 a refused privacy budget, 1 anything unexpected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from secrelay import (
    SecrelayError,
    exit_code,
)

app = typer.Typer(
    name="secrelay-attack",
    help="The utility–privacy trade-off grid with the attack suite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)
out = Console()


@app.command()
def main(
    config: Annotated[
        Path,
        typer.Argument(help="Trade-off TOML: a run config plus an attack table (docs/attacks.md)."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory of the report.")] = Path(
        "runs/attack"
    ),
    rounds: Annotated[int | None, typer.Option(help="Override federated.rounds.")] = None,
    data_path: Annotated[
        str | None, typer.Option("--data-path", help="Override data.path.")
    ] = None,
    reuse: Annotated[
        bool,
        typer.Option(help="Re-run only the attacks on settings already trained in --out."),
    ] = False,
) -> None:
    """Train every protection setting of CONFIG, run every applicable attack, and write
    OUT/report.json, OUT/report.md and PNG plots."""
    from attacks.report import attack

    overrides: dict[str, dict[str, object]] = {}
    if rounds is not None:
        overrides["federated"] = {"rounds": rounds}
    if data_path is not None:
        overrides["data"] = {"path": data_path}
    try:
        report = attack(
            config,
            out_dir,
            reuse=reuse,
            log=lambda s: console.print(s, markup=False),
            **cast("dict[str, Any]", overrides),
        )
    except SecrelayError as e:
        code = exit_code(e)
        console.print(Text.assemble(("error: ", "bold red"), str(e)))
        raise typer.Exit(code) from None
    names = [s.name for s in report.settings]
    table = Table(title=f"trade-off report {out_dir} (leakage metric per setting)")
    table.add_column("attack")
    for n in names:
        table.add_column(n)
    table.add_row("gAUC", *[_num(s.metrics.get("gauc")) for s in report.settings])
    for a in dict.fromkeys(e.attack for e in report.entries):
        row = [a]
        for n in names:
            cell = next((c for c in report.entries if c.setting == n and c.attack == a), None)
            row.append("—" if cell is None or not cell.applicable else _num(cell.value.value))
        table.add_row(*row)
    out.print(table)
    out.print(f"report: {out_dir / 'report.md'} (json and plots alongside)")


def _num(v: object) -> str:
    return "n/a" if not isinstance(v, (int, float)) or v != v else f"{v:.3f}"


def run() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
