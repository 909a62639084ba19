"""``cfpo run submit|list|show|cancel|watch``: the control API from the command line, over HTTP.

The API is found at $CFPO_API_URL (default http://127.0.0.1:8080) and its token in $CFPO_API_TOKEN. Every failure
(no API there, a refused token, an invalid spec) prints one line saying what is wrong and exits with status 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from cfpo.cli.progress import RunProgress, follow_steps, number, state_of
from cfpo.clients.control import ControlApiError, ControlClient
from cfpo.config import ConfigError, read_yaml_mapping

run_app = typer.Typer(no_args_is_help=True, help="Submit, list, show, cancel and watch runs (the control API).")
console = Console()


class Api(ControlClient):
    """The control API for a command line: every failure prints one line and exits with status 1."""

    def call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            return super().call(method, path, **kwargs)
        except ControlApiError as error:
            _fail(str(error))


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _read_spec(path: Path) -> dict:
    """The YAML spec as sent; a relative ``model`` is made absolute here (from the current directory, as
    ``cfpo serve generation --model`` reads it), since the API compares it with what generation serves."""
    try:
        data = read_yaml_mapping(path)
    except ConfigError as error:
        _fail(str(error))
    if isinstance(data.get("model"), str) and not Path(data["model"]).is_absolute():
        data["model"] = str(Path(data["model"]).resolve())
    return data


@run_app.command()
def submit(
    spec: Path = typer.Argument(..., help="run spec (YAML), as for the learner and rollout workers"),
    name: str = typer.Option(None, help="a label for people"),
    model: str = typer.Option(
        None,
        help="the model directory as the stack sees it, instead of the spec's "
        "(compose and Helm: /data/models/smollm2-135m-instruct)",
    ),
) -> None:
    """Validate and queue a run; prints its id."""
    body = _read_spec(spec) | ({"name": name} if name else {}) | ({"model": model} if model else {})
    record = Api().submit(body)
    console.print(f"submitted run [bold]{record['id']}[/bold] ({record['state']})", highlight=False)


def _loss_and_model(run: dict) -> tuple[str, str]:
    """A stored spec that no longer validates comes back as null (``spec_error`` says why)."""
    spec = run["spec"]
    return (spec["learner"]["loss"]["name"], spec["model"]) if spec else ("(invalid spec)", "(invalid spec)")


@run_app.command("list")
def list_runs(
    state: str = typer.Option(None, help="only runs in this state"), limit: int = typer.Option(20, min=1, max=1000)
) -> None:
    """The newest runs, newest first."""
    params = {"limit": limit} | ({"state": state} if state else {})
    runs = Api().call("GET", "/v1/runs", params=params)["runs"]
    table = Table("id", "name", "state", "steps", "loss", "model", "created", "reason")
    for run in runs:
        table.add_row(
            run["id"],
            run["name"] or "",
            state_of(run),
            f"{run['steps_done']}/{run['steps'] or '?'}",
            *_loss_and_model(run),
            _when(run["created_at"]),
            run["reason"] or "",
        )
    console.print(table)


@run_app.command()
def show(run_id: str = typer.Argument(..., help="the run's id")) -> None:
    """A run's state, progress, staleness and latest metrics."""
    run = Api().run(run_id)
    staleness = run["staleness"]
    table = Table(show_header=False, box=None)
    for label, value in (
        ("id", run["id"]),
        ("name", run["name"]),
        ("state", state_of(run)),
        ("reason", run["reason"]),
        ("cancel asked", run["cancel_reason"]),
        ("spec", run["spec_error"] and f"no longer valid: {run['spec_error']}"),
        ("model", _loss_and_model(run)[1]),
        ("loss", _loss_and_model(run)[0]),
        ("steps", f"{run['steps_done']}/{run['steps'] or '?'}"),
        ("version", run["version"]),
        (
            "staleness",
            staleness and f"{staleness['mode']}, bound {staleness['bound']}, latest mean {staleness['latest_mean']}",
        ),
        ("worker", run["worker"]),
        ("created", _when(run["created_at"])),
        ("started", _when(run["started_at"])),
        ("finished", _when(run["finished_at"])),
        ("heartbeat", _when(run["heartbeat_at"])),
    ):
        if value is not None:
            table.add_row(label, str(value))
    console.print(table)
    if run["metrics"]:
        metrics = Table("metric", "value", title="latest step")
        for key, value in sorted(run["metrics"].items()):
            metrics.add_row(key, number(value))
        console.print(metrics)


@run_app.command()
def cancel(
    run_id: str = typer.Argument(..., help="the run's id"),
    reason: str = typer.Option("cancelled from the command line", help="recorded with the run"),
) -> None:
    """Cancel a queued run, or ask a running one to stop at its next step."""
    run = Api().call("POST", f"/v1/runs/{run_id}/cancel", json={"reason": reason})
    console.print(f"run {run['id']}: {state_of(run)}", highlight=False)


@run_app.command()
def watch(
    run_id: str = typer.Argument(..., help="the run's id"),
    interval: float = typer.Option(2.0, min=0.1, help="seconds between polls"),
) -> None:
    """Follow a run until it ends: a line per step when the output is not a terminal (a bar on one), with reward,
    KL and clip fraction against the sampler, seconds per step and the time left.

    Exits 0 when the run succeeded, 1 when it failed or was cancelled."""
    run = follow(Api(), run_id, interval)
    if run["state"] != "succeeded":
        raise typer.Exit(1)


def follow(api: Api, run_id: str, interval: float = 2.0) -> dict:
    """Show a run's progress until it ends (a bar on a terminal, else a line per step); returns its final record."""
    with RunProgress(console) as progress:
        for run, steps in follow_steps(api, run_id, interval):
            progress.show(run_id, run, steps)
    console.print(f"run {run_id}: {run['state']}" + (f" ({run['reason']})" if run["reason"] else ""), highlight=False)
    return run


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
