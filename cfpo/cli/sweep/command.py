"""``cfpo sweep SPEC.yaml``: run a sweep's grid through the pipeline with progress, then write its report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cfpo.cli.progress import RunProgress, duration, status
from cfpo.cli.stack import stop_on_signals
from cfpo.config import ConfigError

console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets whole table rows
# the report's metrics that fit a terminal, with short headers; report.md has them all
TABLE_COLUMNS = {
    "final_reward": "reward",
    "heldout_after": "held-out",
    "behaviour_clip_frac_max": "clip max (beh.)",
    "behaviour_kl_k3_max": "KL max (beh.)",
    "proximal_kl_k3_max": "KL max (prox.)",
    "behaviour_ratio_deviation_max": "max|r-1| (beh.)",
}


def sweep(
    spec_file: Path = typer.Argument(..., help="sweep spec (YAML), e.g. configs/sweep-tiny.yaml"),
    out: Path = typer.Option(
        None, help="sweep directory: cells.json, report, and (embedded) runs and stack; default runs/sweeps/<name>"
    ),
    api: str = typer.Option(None, help="use the stack at this control API instead of starting one"),
    runs_dir: Path = typer.Option(None, help="with --api: where that stack's learner writes its run directories"),
    port_offset: int = typer.Option(0, help="embedded stack: add this to every default port"),
    report_only: bool = typer.Option(False, help="only rebuild the report from the runs already done"),
) -> None:
    """Run every cell of a sweep (loss x anchor x staleness k x iterations x minibatches x seed) not yet done, one
    run per cell, and write results.csv, report.md and figures. Stopped, the same command resumes it."""
    from cfpo.cli.sweep.grid import load_sweep

    try:
        spec = load_sweep(spec_file)
    except ConfigError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None
    if api and runs_dir is None:
        console.print(
            "[red]error:[/] --runs-dir: with --api, give the directory where that stack's learner writes "
            "runs (e.g. its shared volume), so the report can read them"
        )
        raise typer.Exit(2)
    out = out or Path("runs/sweeps") / spec.name
    out.mkdir(parents=True, exist_ok=True)
    command = "cfpo sweep " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["sweep"] else shlex.join(sys.argv)
    model = _model(spec)
    stop_on_signals()
    try:
        if not report_only:
            _run_cells(spec, model, out, api, runs_dir, port_offset)
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume the sweep")
        raise typer.Exit(130) from None
    _report(spec, out, runs_dir or out / "runs", command)


def _model(spec) -> Path:
    from cfpo.models import prepare_model

    model = spec.model.resolve()
    if spec.prepare != "none" and not (model / "config.json").exists():
        with status(console, f"preparing the {spec.prepare} model in {model}"):
            prepare_model(spec.prepare == "tiny", model)
    return model


def _run_cells(spec, model: Path, out: Path, api_url: str | None, runs_dir: Path | None, port_offset: int) -> None:
    from cfpo.cli.runs import Api
    from cfpo.cli.stack import Stack, StackError, StackSettings
    from cfpo.cli.sweep.grid import CellBook, SweepRunner, pending_cells

    pending, total = len(pending_cells(spec, CellBook(out))), len(spec.cells())
    console.print(f"sweep {spec.name}: {total - pending} of {total} cells done, {pending} to run")
    if not pending:
        return
    # The stack's state (Redis, logs, Prometheus) beside the runs, under runs/: neither belongs with the report.
    settings = StackSettings(
        model=model, state_dir=out / "runs" / "stack", runs_dir=out / "runs", **StackSettings.offset_ports(port_offset)
    )
    stack = None if api_url else Stack(settings)
    try:
        if stack is not None:
            with status(console, "starting the stack") as update:
                stack.start(on_status=update)
        runner = SweepRunner(spec, model, out, Api(api_url if stack is None else stack.control_url))
        with RunProgress(console) as progress:
            cells = (
                None if progress.bar is None else progress.bar.add_task("cells", total=total, completed=total - pending)
            )
            ran: list[float] = []  # seconds of each cell run so far, for the time the sweep has left

            def on_progress(cell, run: dict, steps) -> None:
                if stack is not None:
                    stack.check_alive()
                progress.show(cell.key, run, steps)

            def on_cell(cell, record) -> None:
                ran.append(record.seconds or 0.0)
                if cells is not None and progress.bar is not None:
                    progress.bar.advance(cells)
                left = pending - len(ran)
                pace = f"; about {duration(left * sum(ran) / len(ran))} left" if left else ""
                reason = f" ({record.reason})" if record.reason else ""
                ended = f"cell {cell.key}: {record.state}{reason} in {duration(ran[-1])}"
                progress.note(f"{ended}; {len(ran)} of {pending} cells run{pace}")

            runner.run(on_progress, on_cell)
    except StackError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    finally:
        if stack is not None:
            with status(console, "stopping the stack"):
                stack.stop()


def _report(spec, out: Path, runs_dir: Path, command: str) -> None:
    from cfpo.cli.report import ReportError
    from cfpo.cli.sweep.grid import CellBook
    from cfpo.cli.sweep.report import aggregate, collect, write

    try:
        results = collect(spec, CellBook(out), runs_dir)
    except ReportError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(1) from None
    written = write(spec, results, out, command)
    table = Table(title=f"sweep {spec.name} (mean over seeds)")
    for header in ("loss", "anchor", "k", "iters", "mb", *TABLE_COLUMNS.values()):
        table.add_column(header, justify="right")
    for a in aggregate(results):
        table.add_row(
            a.loss,
            a.ratio_reference,
            str(a.staleness_k),
            str(a.iterations),
            str(a.minibatches),
            *("–" if a.means[key] is None else f"{a.means[key]:.3f}" for key in TABLE_COLUMNS),
        )
    console.print(table)
    failed = [r for r in results if r.state != "succeeded"]
    if failed:
        console.print(f"[yellow]{len(failed)} cell(s) did not succeed[/]; see {out / 'report.md'}")
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    if failed:
        raise typer.Exit(1)
