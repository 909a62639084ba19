"""``cfpo up``: the embedded stack on this machine, from the command line, until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cfpo.cli.stack import Stack, StackError, StackSettings, stop_on_signals
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
    log_max_mib: float = typer.Option(
        StackSettings.model_fields["log_max_mib"].default, help="rotate each service's log at this size, MiB"
    ),
    log_backups: int = typer.Option(
        StackSettings.model_fields["log_backups"].default, help="rotated logs kept per service (<name>.log.1 ...)"
    ),
) -> None:
    """Start the whole stack on this machine (Redis, generation, reward, control API, learner, rollout worker,
    Prometheus), print its URLs, and stop everything cleanly on Ctrl-C (or SIGTERM, or the terminal closing)."""
    if model is None:
        model = prepare_model(tiny=True, directory=TINY_MODEL_DIR.resolve())
    try:
        settings = StackSettings(
            model=model.resolve(),
            runs_dir=runs_dir,
            state_dir=runs_dir / "stack",
            prometheus=prometheus,
            log_max_mib=log_max_mib,
            log_backups=log_backups,
            **StackSettings.offset_ports(port_offset),
        )
    except ValidationError as error:
        console.print(f"[red]error:[/] {describe_validation_error(error)}", highlight=False)
        raise typer.Exit(2) from None
    raise typer.Exit(serve(Stack(settings)))


def serve(stack: Stack) -> int:
    """``cfpo up`` once configured (tests serve a stack of cheap services): start the stack, print its URLs, watch it
    until Ctrl-C, SIGTERM or SIGHUP, stop it; the exit code. The stop comes last whatever went wrong before it."""
    stop_on_signals()
    code = 1
    try:
        with console.status("starting") as status:
            stack.start(on_status=status.update)
        _print_urls(stack)
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        code = 0
    except StackError as error:
        console.print(f"[red]error:[/] {error}")
    finally:
        with console.status("stopping"):
            stack.stop()
    console.print("stopped")
    return code


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
