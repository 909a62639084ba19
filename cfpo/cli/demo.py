"""The one-command demo: prepare the model, start the embedded stack, evaluate, train a CFPO run submitted
through the REST API while showing its progress, evaluate again, and write the report.

Accuracy is measured before and after on held-out problems of the run's task (greedy decoding, the reward
service's verdict), and printed as measured, improvement or not.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cfpo.cli.progress import status
from cfpo.cli.report import print_report, write_report
from cfpo.cli.runs import Api, follow
from cfpo.cli.stack import Stack, StackError, StackSettings, stop_on_signals
from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from cfpo.config import ConfigError, read_yaml_mapping
from cfpo.evaluation import EvalResult, evaluate
from cfpo.models import prepare_model
from cfpo.run_spec import RunSpec
from cfpo.tasks import load_task

console = Console()


@dataclass(frozen=True)
class DemoSettings:
    spec_file: Path
    out: Path
    tiny: bool
    eval_problems: int
    port_offset: int = 0


def stack_settings(model: Path, out: Path, port_offset: int) -> StackSettings:
    return StackSettings(
        model=model, state_dir=out / "stack", runs_dir=out / "runs", **StackSettings.offset_ports(port_offset)
    )


def run(settings: DemoSettings) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # conversion and loading bars would break the status lines
    started = time.perf_counter()
    spec_data = read_yaml_mapping(settings.spec_file)
    model_dir = Path(spec_data["model"]).resolve()
    with status(console, f"preparing the model in {model_dir}"):
        prepare_model(settings.tiny, model_dir)
    spec = RunSpec.model_validate({**spec_data, "model": str(model_dir)})
    stack = Stack(stack_settings(model_dir, settings.out, settings.port_offset))
    with status(console, "starting the stack") as update:
        stack.start(on_status=update)
    try:
        console.print(f"stack up: control API {stack.control_url}/docs, logs in {stack.logs}")
        before = _evaluate(stack, spec, settings.eval_problems, "before training")
        api = Api(stack.control_url)
        created = api.submit(spec.model_dump(mode="json"), name="demo")
        console.print(f"submitted run [bold]{created['id']}[/] through POST {stack.control_url}/v1/runs")
        final = follow(api, created["id"], interval=1.0)
        after = _evaluate(stack, spec, settings.eval_problems, "after training")
    finally:
        with status(console, "stopping the stack"):
            stack.stop()
    run_dir = settings.out / "runs" / created["id"]
    print_report(*write_report([run_dir], settings.out / "report"))
    _summary(before, after, final, run_dir, settings.out / "report", time.perf_counter() - started)
    return 0 if final["state"] == "succeeded" else 1


def _evaluate(stack: Stack, spec: RunSpec, limit: int, when: str) -> EvalResult:
    from transformers import AutoTokenizer

    problems = load_task(spec.task, "eval")
    with status(console, f"evaluating {min(limit, len(problems))} held-out problems {when}"):
        result = evaluate(
            GenerationClient(stack.generation_url),
            RewardClient(stack.reward_url),
            AutoTokenizer.from_pretrained(spec.model),
            problems,
            max_tokens=spec.rollout.max_tokens,
            limit=limit,
        )
    console.print(
        f"held-out accuracy {when}: {result.accuracy:.1%} of {result.n} (mean reward {result.mean_reward:.3f})"
    )
    return result


def _summary(before: EvalResult, after: EvalResult, final: dict, run_dir: Path, report: Path, seconds: float) -> None:
    table = Table(title=f"demo run {final['id']}: {final['state']} in {seconds / 60:.1f} min")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("held-out accuracy", f"{before.accuracy:.1%}", f"{after.accuracy:.1%}")
    table.add_row("held-out mean reward", f"{before.mean_reward:.3f}", f"{after.mean_reward:.3f}")
    table.add_row("problems", str(before.n), str(after.n))
    console.print(table)
    console.print(f"run files: {run_dir}\nreport:    {report / 'report.md'}")


def demo(
    tiny: bool = typer.Option(False, help="the tiny test model and a few steps (a quick check of the pipeline)"),
    spec: Path = typer.Option(None, help="run spec; default configs/demo.yaml (configs/demo-tiny.yaml with --tiny)"),
    out: Path = typer.Option(Path("runs/demo"), help="where the stack, the run and the report write"),
    eval_problems: int = typer.Option(40, min=1, help="held-out problems evaluated before and after"),
    port_offset: int = typer.Option(0, help="add this to every default port"),
) -> None:
    """Prepare the model, start the stack, train a CFPO run submitted through the REST API, evaluate it before
    and after, and write its report."""
    spec = spec or Path("configs/demo-tiny.yaml" if tiny else "configs/demo.yaml")
    stop_on_signals()  # so the demo's stack is stopped, not orphaned
    try:
        code = run(DemoSettings(spec, out, tiny, eval_problems, port_offset))
    except ConfigError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None
    except StackError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted; the stack is stopped")
        raise typer.Exit(130) from None
    raise typer.Exit(code)
