"""``cfpo up``: the embedded stack on this machine, from the command line, until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cfpo.cli.stack import Stack, StackError, StackSettings, stop_on_sigterm
from cfpo.config import describe_validation_error
from cfpo.models import prepare_model

console = Console()
TINY_MODEL_DIR = Path("models/tiny")


def up(
    model: Path = typer.Option(
        None,
        envvar="CFPO_MODEL",
        help=f"model directory to serve and train; default: the tiny test model in {TINY_MODEL_DIR}",
    ),
    runs_dir: Path = typer.Option(Path("runs"), help="where runs write their files"),
    port_offset: int = typer.Option(0, help="add this to every default port"),
    prometheus: bool = typer.Option(True, help="start Prometheus when it is installed"),
) -> None:
    """Start the whole stack on this machine (Redis, generation, reward, control API, learner, rollout worker,
    Prometheus), print its URLs, and stop everything cleanly on Ctrl-C."""
    if model is None:
        model = prepare_model(tiny=True, directory=TINY_MODEL_DIR.resolve())
    try:
        settings = StackSettings(
            model=model.resolve(),
            runs_dir=runs_dir,
            state_dir=runs_dir / "stack",
            prometheus=prometheus,
            **StackSettings.offset_ports(port_offset),
        )
    except ValidationError as error:
        console.print(f"[red]error:[/] {describe_validation_error(error)}", highlight=False)
        raise typer.Exit(2) from None
    stack = Stack(settings)
    stop_on_sigterm()
    try:
        with console.status("starting") as status:
            stack.start(on_status=status.update)
        _print_urls(stack)
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        with console.status("stopping"):
            stack.stop()
        console.print("stopped")
    except StackError as error:
        stack.stop()
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None


def _print_urls(stack: Stack) -> None:
    table = Table(title=f"cfpo stack up, serving {stack.settings.model}")
    table.add_column("service")
    table.add_column("address")
    for service in stack.services:
        table.add_row(service.name, service.url or "")
    console.print(table)
    console.print(
        f"logs: {stack.logs}\nsubmit a run: cfpo run submit configs/demo-tiny.yaml   (Ctrl-C stops everything)"
    )
