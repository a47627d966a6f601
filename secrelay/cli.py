"""The ``secrelay`` command line (Typer).

Exit codes: 0 success, 2 bad usage or configuration, 3 bad input data, 4 a
protocol abort, 5 a refused privacy budget, 1 anything unexpected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from protocols.errors import (
    BudgetExceededError,
    ConfigError,
    DataFormatError,
    InvalidParameterError,
    ProtocolAbort,
    SecrelayError,
)

app = typer.Typer(
    name="secrelay",
    help="Privacy-preserving relay learning of CTR models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

EXIT_CODES: dict[type[SecrelayError], int] = {
    DataFormatError: 3,
    ProtocolAbort: 4,
    BudgetExceededError: 5,
    ConfigError: 2,
    InvalidParameterError: 2,
}


def _fail(err: SecrelayError) -> None:
    code = next((c for t, c in EXIT_CODES.items() if isinstance(err, t)), 1)
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code)


def _metrics_table(title: str, rows: list[tuple[str, dict[str, object]]]) -> Table:
    table = Table(title=title)
    for col in ("", "gAUC", "AUC", "logloss", "rows", "gAUC users (skipped)"):
        table.add_column(col)

    def f(v: object) -> str:
        return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    for name, m in rows:
        table.add_row(
            name,
            f(m.get("gauc")),
            f(m.get("auc")),
            f(m.get("logloss")),
            f(m.get("n")),
            f"{m.get('gauc_users')} ({m.get('gauc_users_skipped')})",
        )
    return table


@app.command()
def train(
    model: Annotated[
        str, typer.Option(help="Model: lr, dnn, widedeep, deepfm, dcnv2, xdeepfm.")
    ] = "deepfm",
    data: Annotated[
        str, typer.Option(help="Data set: synthetic, movielens100k, libfm, csv, parquet.")
    ] = "synthetic",
    path: Annotated[str | None, typer.Option(help="Data directory or file.")] = None,
    split: Annotated[
        str, typer.Option(help="temporal (global 80/20 by time) or random.")
    ] = "temporal",
    epochs: Annotated[int, typer.Option(help="Maximum training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 256,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    embedding_dim: Annotated[int, typer.Option(help="Embedding size per field.")] = 16,
    patience: Annotated[
        int, typer.Option(help="Early stopping patience (epochs) on a validation slice.")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the metrics here.")
    ] = None,
) -> None:
    """Centralized training of one CTR model (baselines, the oracle); prints AUC/logloss/gAUC."""
    from secrelay.centralized import train_centralized

    try:
        result = train_centralized(
            model=model,
            data=data,
            path=path,
            split=split,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            embedding_dim=embedding_dim,
            patience=patience,
            seed=seed,
            progress=True,
            log=lambda s: console.print(s),
        )
    except SecrelayError as e:
        _fail(e)
        return
    out.print(
        _metrics_table(
            f"{model} on {data} ({split} split), best epoch {result['best_epoch']}",
            [("test", result["test"]), ("validation", result["valid"])],
        )
    )
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2, default=float))


@app.command(name="run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="TOML configuration file.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<run.name>).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing run in the directory.")
    ] = False,
    rounds: Annotated[int | None, typer.Option(help="Override federated.rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override run.seed.")] = None,
    data_path: Annotated[
        str | None, typer.Option("--data-path", help="Override data.path.")
    ] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop after this round (resumable).")
    ] = None,
) -> None:
    """Run a federated / relay experiment from a TOML config (progress bar, JSON-lines metrics)."""
    from secrelay.config import load_config
    from secrelay.experiment import run

    try:
        overrides: dict[str, dict[str, object]] = {}
        if rounds is not None:
            overrides["federated"] = {"rounds": rounds}
        if seed is not None:
            overrides["run"] = {"seed": seed}
        if data_path is not None:
            overrides["data"] = {"path": data_path}
        cfg = load_config(config, **overrides)
        rd = out_dir or Path("runs") / cfg.run.name
        result = run(
            cfg, rd, overwrite=overwrite, log=lambda s: console.print(s), stop_after=stop_after
        )
    except SecrelayError as e:
        _fail(e)
        return
    _report(result)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding checkpoint.pt.")],
    stop_after: Annotated[
        int | None, typer.Option(help="Stop after this round (resumable).")
    ] = None,
) -> None:
    """Continue a checkpointed run."""
    from secrelay.experiment import resume as resume_run

    try:
        result = resume_run(run_dir, log=lambda s: console.print(s), stop_after=stop_after)
    except SecrelayError as e:
        _fail(e)
        return
    _report(result)


def _report(result: object) -> None:
    from secrelay.experiment import RunResult

    assert isinstance(result, RunResult)
    rows = [("cloud model (round 0)", result.records[0])]
    if len(result.records) > 1:
        rows.append((f"after round {result.records[-1]['round']}", result.records[-1]))
    out.print(_metrics_table(f"run {result.run_dir}", rows))
    out.print(f"metrics: {result.run_dir / 'metrics.jsonl'}")


@app.command()
def demo(
    data: Annotated[
        str, typer.Option(help="synthetic (embedded default) or movielens100k.")
    ] = "synthetic",
    path: Annotated[str | None, typer.Option(help="Data directory (movielens100k).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/demo"),
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """The compliance demo: relay learning from the cloud model to devices on the embedded data."""
    from secrelay.demo import run_demo

    try:
        run_demo(data=data, path=path, out_dir=out_dir, rounds=rounds, seed=seed, console=out)
    except SecrelayError as e:
        _fail(e)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
