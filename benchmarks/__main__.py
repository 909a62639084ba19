"""``python -m benchmarks [NAMES...] [--model tiny|smollm2|PATH] [--shape demo|rollout_heavy] [--smoke] [--out DIR]``
(= ``cfpo bench``).

Runs the named benchmarks (default: all four) for each workload shape (default: both) in one session per shape,
sharing one stack, prints each table and writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (``<name>-<shape>``
for a shape other than the demo's).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from benchmarks import async_vs_sync, overhead, peer_trl, weight_sync
from benchmarks.placement import PlacementError
from benchmarks.report import publish
from benchmarks.session import BenchError, Session
from benchmarks.settings import BENCHMARKS, BenchSettings
from cfpo.cli.stack import StackError
from cfpo.config import describe_validation_error

MODULES = {"async_vs_sync": async_vs_sync, "overhead": overhead, "weight_sync": weight_sync, "peer_trl": peer_trl}
FIELDS = BenchSettings.model_fields
console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets whole table rows


def main(
    names: list[str] = typer.Argument(None, help=f"benchmarks to run, of: {', '.join(BENCHMARKS)} (default: all)"),
    model: str = typer.Option(None, help=FIELDS["model"].description + " (default: tiny)"),
    smoke: bool = typer.Option(False, help=FIELDS["smoke"].description),
    out: Path = typer.Option(None, help=FIELDS["out"].description),
    work: Path = typer.Option(None, help=FIELDS["work"].description + " (default: runs/bench)"),
    models_dir: Path = typer.Option(None, help=FIELDS["models_dir"].description + " (default: models)"),
    port_offset: int = typer.Option(None, help=FIELDS["port_offset"].description + " (default: 1500)"),
    shape: list[str] = typer.Option(None, help=FIELDS["shapes"].description + " (default: both; repeatable)"),
) -> None:
    """Benchmarks of the pipeline: asynchronous vs synchronous, overhead, weight sync, and TRL as a peer."""
    given = {
        "benchmarks": tuple(names) if names else None,
        "model": model,
        "smoke": smoke,
        "out": out,
        "work": work,
        "models_dir": models_dir,
        "port_offset": port_offset,
        "shapes": tuple(shape) if shape else None,
    }
    try:
        settings = BenchSettings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as error:
        console.print(f"[red]error:[/] {describe_validation_error(error)}", highlight=False)
        raise typer.Exit(2) from None
    os.environ.setdefault("TQDM_DISABLE", "1")  # model loading bars would break the progress display
    signal.signal(signal.SIGTERM, _interrupt)  # stop the stack on SIGTERM too, not only on Ctrl-C
    try:
        for each in settings.shapes:
            _run_shape(settings.model_copy(update={"shape": each}))
    except (BenchError, StackError, PlacementError) as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted; the stack is stopped")
        raise typer.Exit(130) from None


def _run_shape(settings: BenchSettings) -> None:
    """One session (one stack) for the benchmarks of ``settings.shape``."""
    names = settings.shape_benchmarks
    if not names:
        return
    modules = [MODULES[name] for name in names]
    planned = set().union(*(m.planned_runs(settings.scale) for m in modules))
    console.print(
        f"benchmarks {', '.join(names)} on {settings.label}, {settings.shape} shape"
        f"{' (smoke)' if settings.smoke else ''}: {len(planned)} pipeline runs of {settings.scale.steps} "
        f"steps; results in {settings.out_dir}"
    )
    with Session(settings, console, len(planned)) as session:
        for name, module in zip(names, modules):
            load_before, started = os.getloadavg(), time.perf_counter()
            result, tables = module.run(session)
            context = {
                "model": settings.label,
                "model_dir": str(session.model_dir),
                "smoke": settings.smoke,
                "shape": settings.shape,
                "scale": settings.scale.model_dump(mode="json"),
                "workload": settings.workload,
                "seconds": time.perf_counter() - started,
                "load_average": {"before": load_before, "after": os.getloadavg()},
            }
            path = publish(console, settings.out_dir, settings.result_name(name), name, result, tables, context)
            console.print(f"wrote {path}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    typer.run(main)
