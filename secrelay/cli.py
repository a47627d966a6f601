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
from rich.text import Text

from protocols.errors import (
    SecrelayError,
    exit_code,
)

app = typer.Typer(
    name="secrelay",
    help="Privacy-preserving relay learning of CTR models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        from secrelay import __version__

        out.print(f"secrelay {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Privacy-preserving relay learning of CTR models."""


def _read_options(path: Path | None) -> dict[str, object]:
    """A TOML file of loader options (``--data-options``); ``{}`` without one."""
    if path is None:
        return {}
    from secrelay.config import read_toml  # the config stack loads only when used

    data = read_toml(path, "--data-options file")
    return dict(data.get("data", {}).get("options", data))


def _interrupted(run_dir: Path) -> None:
    """Ctrl-C: the last completed round is checkpointed; say how to continue."""
    console.print(
        f"[yellow]interrupted[/yellow]; the last completed round is checkpointed — "
        f"continue with `secrelay resume {run_dir}`"
    )
    raise typer.Exit(code=130)


def _fail(err: SecrelayError) -> None:
    code = exit_code(err)
    # The message is text, not markup: "[federated]" must not vanish as a style tag.
    console.print(Text.assemble(("error: ", "bold red"), str(err)))
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
    data_options: Annotated[
        Path | None,
        typer.Option(
            "--data-options",
            help="TOML file of loader options (a CSV/Parquet file's columns, a libFM field "
            "map; libFM infers one when omitted). Same keys as [data.options].",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="temporal (global 80/20 by time) or random.")
    ] = "temporal",
    epochs: Annotated[int, typer.Option(help="Maximum training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 256,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-3,
    optimizer: Annotated[
        str, typer.Option(help="adam, adagrad (sparse-friendly) or sgd.")
    ] = "adam",
    weight_decay: Annotated[float, typer.Option(help="L2 penalty (>= 0).")] = 0.0,
    embedding_dim: Annotated[int, typer.Option(help="Embedding size per field.")] = 16,
    patience: Annotated[
        int, typer.Option(help="Early stopping patience (epochs) on a validation slice.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the metrics here.")
    ] = None,
) -> None:
    """Centralized training of one CTR model (baselines, the oracle); prints AUC/logloss/gAUC."""
    from secrelay.centralized import train_centralized

    try:
        options = _read_options(data_options)
        result = train_centralized(
            model=model,
            data=data,
            path=path,
            data_options=options,
            split=split,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            embedding_dim=embedding_dim,
            patience=patience,
            seed=seed,
            progress=True,
            log=lambda s: console.print(s, markup=False),
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
            cfg,
            rd,
            overwrite=overwrite,
            log=lambda s: console.print(s, markup=False),
            stop_after=stop_after,
        )
    except SecrelayError as e:
        _fail(e)
        return
    except KeyboardInterrupt:
        _interrupted(rd)
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
        result = resume_run(
            run_dir, log=lambda s: console.print(s, markup=False), stop_after=stop_after
        )
    except SecrelayError as e:
        _fail(e)
        return
    except KeyboardInterrupt:
        _interrupted(run_dir)
    _report(result)


def _report(result: object) -> None:
    from secrelay.experiment import RunResult

    assert isinstance(result, RunResult)
    rows = [("cloud model (round 0)", result.records[0])]
    if len(result.records) > 1:
        rows.append((f"after round {result.records[-1]['round']}", result.records[-1]))
    out.print(_metrics_table(f"run {result.run_dir}", rows))
    out.print(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    _write_report(result.run_dir)


def _write_report(run_dir: Path) -> None:
    """Write the run report; a failure to write it is a warning, not a lost run."""
    from secrelay.report import write_report

    try:
        files = write_report(run_dir)
    except (SecrelayError, OSError) as e:
        console.print(Text.assemble(("warning: ", "bold yellow"), f"no run report: {e}"))
        return
    out.print(f"report: {files.html} (Markdown: {files.markdown.name})")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds config.json).")],
) -> None:
    """The run report: RUN_DIR/report.html (self-contained) and report.md.

    Configuration, metrics per round with plots, the ledger and ε over rounds, the
    privacy contract filled in with this run's flows, and attack results where run.
    """
    from secrelay.report import write_report

    try:
        files = write_report(run_dir)
    except SecrelayError as e:
        _fail(e)
        return
    out.print(f"report: {files.html}")
    out.print(f"markdown: {files.markdown} (figures alongside)")


@app.command()
def demo(
    data: Annotated[
        str, typer.Option(help="synthetic (embedded default) or movielens100k.")
    ] = "synthetic",
    path: Annotated[str | None, typer.Option(help="Data directory (movielens100k).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/demo"),
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    epsilon: Annotated[
        float, typer.Option(help="User-level ε of the protected pipeline (its budget too).")
    ] = 8.0,
    dp_sgd: Annotated[
        bool,
        typer.Option("--dp-sgd", help="Also run DP-SGD on the devices (example level, same ε)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the runs already in the output directory.")
    ] = False,
) -> None:
    """The compliance demo: protected relay learning against the non-private run and baselines.

    Runs RelayRec with SecAgg+, user-level DP and the CKKS selector, RelayRec in the
    clear, the cloud model and standalone fine-tuning; ends with accuracy, ε per unit,
    what the server saw per flow, and the report's path.
    """
    from secrelay.demo import run_demo

    try:
        run_demo(
            data=data,
            path=path,
            out_dir=out_dir,
            rounds=rounds,
            seed=seed,
            epsilon=epsilon,
            dp_sgd=dp_sgd,
            console=out,
            overwrite=overwrite,
        )
    except SecrelayError as e:
        _fail(e)


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds config.json).")],
    accountant: Annotated[
        str | None, typer.Option(help="Accountant of the headline ε (default: the run's).")
    ] = None,
    compare: Annotated[
        str, typer.Option(help="Second accountant shown for comparison ('' for none).")
    ] = "rdp",
) -> None:
    """The privacy report of a run, checked against the run: ε per unit (device users,
    examples, pool users) against budgets, every flow with its protection, and the
    empirical lower bound where the attack grid audited the run.

    Fails (exit 3) when the privacy ledger is missing, truncated or corrupt against the
    run's metrics, checkpoint and config. Writes RUN_DIR/audit.json, audit.md and
    audit_epsilon.png.
    """
    from secrelay.audit import audit as run_audit
    from secrelay.auditing.report import comparison_bound_note

    try:
        result = run_audit(
            run_dir,
            accountant=accountant,
            comparison=compare or None,
            log=lambda s: console.print(s, markup=False),
        )
    except SecrelayError as e:
        _fail(e)
        return
    report = result.to_dict()

    def f(v: object) -> str:
        return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    def budget(unit: str, a: str, value: object) -> str:
        u = next(x for x in result.units if x.unit == unit)
        fig = next((x for x in u.figures if x.accountant == a), None)
        if fig is not None and fig.budget is None and u.budget is not None:
            return f"({f(u.budget)}: {result.accountant} only)"  # a calibration target
        shown = f(u.budget if u.budget is not None else value)
        return shown + (" OVER BUDGET" if (unit, a) in result.over_budget else "")

    table = Table(title=f"privacy audit of {run_dir} (δ = {report['delta']:g})")
    for col in ("unit", "accountant", "ε (min)", "ε (median)", "ε (max)", "budget"):
        table.add_column(col)
    user = report["user_level"]
    for a in report["accountants"]:
        eps = user["epsilon"].get(a) if user.get("records") else None
        table.add_row(
            "user (global)",
            a,
            "",
            "",
            f(eps) if eps is not None else "∞",
            budget("user", a, user.get("budget")),
        )
    adjacency = report.get("adjacency", {})
    pd = user.get("per_device")
    if pd:
        table.add_row(
            f"user (per device, {pd['devices']})",
            report["accountant"],
            f(pd["min"]),
            f(pd["median"]),
            f(pd["max"]),
            "",
        )
    ex = report["example_level"]
    for a in report["accountants"]:
        spent = ex["epsilon"].get(a)
        if spent:
            table.add_row(
                f"example ({ex['devices']} devices)",
                a,
                f(spent["min"]),
                f(spent["median"]),
                f(spent["max"]),
                budget("example", a, ex.get("budget")),
            )
    pool = report["pool_user_level"]
    for a in report["accountants"]:
        spent = pool["epsilon"].get(a)
        if spent:
            table.add_row(
                f"pool user ({pool['pool_users']} pool users)",
                a,
                f(spent["min"]),
                f(spent["median"]),
                f(spent["max"]),
                "",
            )
    out.print(table)
    for unit, a in result.over_budget:
        u = next(x for x in result.units if x.unit == unit)
        out.print(
            f"OVER BUDGET: {unit}-level ε = {f(u.epsilon(a))} ({a}) exceeds the budget "
            f"{f(u.budget)} ({u.budget_key})"
            + comparison_bound_note(
                a,
                result.accountant,
                u.epsilon(result.accountant),
                result.accountant in u.over_budget,
            ),
            markup=False,
        )
    for w in report.get("warnings", []):
        out.print(f"WARNING: {w}", markup=False)
    for b in result.empirical:
        out.print(
            f"empirical ({b.attack}, {b.design}, {b.regime}): {b.unit}-level ε ≥ "
            f"{b.epsilon_lower:.3f} against the accountant's {f(b.epsilon_upper)} for the "
            f"audited release (run: {f(b.run_epsilon)})",
            markup=False,
        )
    if not result.empirical:
        out.print("empirical lower bound: not audited (no attack_audit.json)", markup=False)
    out.print(
        f"randomness: {report.get('randomness')}; adjacency: user "
        f"{adjacency.get('user') or '—'}, example {adjacency.get('example') or '—'}",
        markup=False,
    )
    out.print(f"flows (evidence: {result.flow_evidence}):", markup=False)
    for flow in result.flows:
        mark = "PLAINTEXT" if flow.status == "plaintext" else flow.status
        n = "" if flow.messages is None else f", {flow.messages} messages"
        out.print(
            f"  {flow.direction} {flow.name} ({flow.content}{n}): [{mark}] {flow.protection}",
            markup=False,
        )
    for m in report["mechanisms"]:
        share = "" if m["share"] is None else f", share {100 * m['share']:.0f} %"
        out.print(
            f"{m['unit']}: {m['mechanism']} ({m.get('adjacency')}) — {m['records']} records, "
            f"ε alone {f(m['epsilon_alone'][report['accountant']])}{share}",
            markup=False,
        )
    for note in report["notes"]:
        out.print(f"note: {note}", markup=False)
    plot = Path(run_dir) / "audit_epsilon.png"
    extra = "json and plot alongside" if plot.exists() else "json alongside; no ε plot"
    out.print(f"report: {Path(run_dir) / 'audit.md'} ({extra})")


@app.command(name="he-check")
def he_check(
    blob: Annotated[Path, typer.Argument(help="An HE envelope (context or ciphertexts).")],
    context: Annotated[
        Path | None,
        typer.Option(help="The public context the ciphertexts in BLOB were made under."),
    ] = None,
) -> None:
    """Check an HE artefact as a server would receive it (docs/he.md).

    A public context is loaded and summarised (parameters at 128-bit security, the
    Galois steps and relinearisation key it carries, its size); a context carrying a
    secret key, a corrupted or truncated envelope, weak parameters or ciphertexts that
    do not load under --context are refused with exit code 3.
    """
    from protocols.errors import MessageError
    from protocols.he import EnvelopeKind, PublicContext
    from protocols.he.envelope import peek_kind

    try:
        data = blob.read_bytes()
        kind = peek_kind(data)
        if kind is EnvelopeKind.CIPHERTEXTS:
            if context is None:
                raise MessageError("checking ciphertexts needs --context (the public context)")
            ctx = PublicContext.from_bytes(context.read_bytes())
            cts = ctx.load_ciphertexts(data)
            out.print(f"{blob}: {len(cts)} fresh ciphertext(s), {len(data)} bytes, under {ctx!r}")
            return
        ctx = PublicContext.from_bytes(data)
    except MessageError as e:
        console.print(Text.assemble(("error: ", "bold red"), str(e)))
        raise typer.Exit(3) from None
    except OSError as e:
        console.print(Text.assemble(("error: ", "bold red"), str(e)))
        raise typer.Exit(2) from None
    p = ctx.params
    out.print(
        f"{blob}: public HE context, N = {p.poly_modulus_degree}, primes "
        f"{list(p.coeff_mod_bit_sizes)} ({p.total_bits} bits, 128-bit security), scale "
        f"2^{p.scale_bits}, depth {p.depth}; Galois steps {sorted(ctx.galois_steps)}; "
        f"relinearisation key: {'yes' if ctx.has_relin_keys else 'no'}; {ctx.nbytes} bytes",
        markup=False,
    )


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
