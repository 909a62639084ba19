"""One benchmark session: the prepared model, one embedded stack at a time shared by every benchmark (restarted when
a measurement needs the other placement), measurements shared
between benchmarks (a pipeline run at a given staleness and placement is run once per session), child processes
for parts measured alone, and the progress display."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from benchmarks.placement import GENERATION_CORES, LEARNER_CORES, check_pinnable, pinned, taskset_prefix
from benchmarks.settings import BenchSettings, Placement
from cfpo.cli.progress import Step, plain
from cfpo.cli.stack import Service, Stack, StackSettings
from trainer.threads import learner_threads

T = TypeVar("T")


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which and why (with a log tail where there is one)."""


class Session:
    def __init__(self, settings: BenchSettings, console: Console, planned_runs: int):
        self.settings, self.scale, self.console = settings, settings.scale, console
        self.work = settings.work.resolve()
        self.model_dir: Path | None = None
        self._stack: Stack | None = None
        self._placement: Placement = "shared"
        self._measured: dict[Any, Any] = {}
        self._child_ids = itertools.count()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[latest]}"),
            console=console,
        )
        self._runs_task = self.progress.add_task(
            f"pipeline runs of {self.scale.steps} steps", total=planned_runs, visible=planned_runs > 0, latest=""
        )

    def __enter__(self) -> Session:
        self.progress.start()
        self.model_dir = self._prepare_model()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._stack is not None:
                with self.activity("stopping the stack"):
                    self._stack.stop()
        finally:
            self.progress.stop()

    def _prepare_model(self) -> Path:
        from cfpo.models import prepare_model

        model = self.settings.model
        if model not in ("tiny", "smollm2"):
            return Path(model).resolve()
        directory = (self.settings.models_dir / ("tiny" if model == "tiny" else "smollm2-135m-instruct")).resolve()
        with self.activity(f"preparing {model} in {directory}"):
            return prepare_model(model == "tiny", directory)

    # -- progress ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def activity(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """Show what is being measured (with a bar when ``total`` is known); yields ``update(completed=, ...)``.
        Logs the activity and its duration when it ends."""
        task = self.progress.add_task(description, total=total, latest="")
        started = time.perf_counter()
        try:
            yield lambda **fields: self.progress.update(task, **fields)
        finally:
            self.progress.remove_task(task)
        self.console.log(f"{description}: {time.perf_counter() - started:.1f} s")

    def show_steps(self, update: Callable[..., None], steps: list[Step]) -> None:
        """A pipeline run's steps recorded since the last call: beside the activity's bar on a terminal, else a
        line each."""
        if not plain(self.console):
            if steps:
                update(latest=steps[-1].fields())
            return
        for step in steps:
            self.console.print(step.line(), highlight=False, soft_wrap=True)

    def run_finished(self) -> None:
        self.progress.advance(self._runs_task)

    # -- shared measurements ---------------------------------------------------------------------------------------

    def measured(self, key: Any, measure: Callable[[], T]) -> T:
        """``measure()``, once per session and ``key``: benchmarks asking for the same measurement share it."""
        if key not in self._measured:
            self._measured[key] = measure()
        return self._measured[key]

    # -- the stack -------------------------------------------------------------------------------------------------

    @property
    def stack(self) -> Stack:
        """The embedded stack on the benchmark model, in the placement last asked for (started on first use, shared
        if none was asked for yet; Prometheus off: nothing reads it)."""
        if self._stack is None:
            self._start_stack("shared")
        return self._stack

    def _start_stack(self, placement: Placement) -> None:
        if self._stack is not None:
            with self.activity(f"stopping the {self._placement} stack"):
                self._stack.stop()
            self._stack = None
        # pinned: vLLM binds its worker to one core itself (its own choice), the learner trains on one thread.
        where = {} if placement == "shared" else {"generation_cpu_cores": "vllm", "learner_threads": 1}
        stack = Stack(
            StackSettings(
                model=self.model_dir,
                state_dir=self.work / "stack",
                runs_dir=self.work / "runs",
                prometheus=False,
                **where,
                **StackSettings.offset_ports(self.settings.port_offset),
            )
        )
        with self.activity(f"starting the {placement} stack") as update:
            stack.start(on_status=lambda message: update(description=f"starting the stack: {message}"))
        self._stack, self._placement = stack, placement

    def service(self, name: str) -> Service:
        return next(s for s in self.stack.services if s.name == name)

    @property
    def learner_threads(self) -> int:
        """Threads the stack's learner trains with (trainer/threads.py; one when pinned)."""
        return learner_threads(self.stack.settings.learner_threads)

    @contextlib.contextmanager
    def placed(self, placement: Placement) -> Iterator[None]:
        """Run the block on a stack in ``placement`` (restarted when the current one is in the other): ``shared`` as
        the stack starts by default, ``pinned`` with generation's processes on core 0 and the learner on core 1."""
        if placement == "pinned":
            check_pinnable()
        if self._stack is None or self._placement != placement:
            self._start_stack(placement)
        if placement == "shared":
            yield
            return
        groups = {
            self.service("generation").process.pid: GENERATION_CORES,
            self.service("learner").process.pid: LEARNER_CORES,
        }
        with pinned(groups):
            yield

    # -- parts measured alone, in child processes ------------------------------------------------------------------

    def child(
        self, module: str, config: BaseModel, *, cores: frozenset[int] | None = None, threads: int | None = None
    ) -> dict:
        """Run ``python -m benchmarks.<module> CONFIG RESULT`` (on ``cores``, with ``threads`` OpenMP threads) and
        return the JSON it wrote; its output goes to a log under the work directory."""
        directory = self.work / "children"
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"{module}-{next(self._child_ids)}"
        config_path, result_path, log_path = (stem.with_suffix(s) for s in (".config.json", ".result.json", ".log"))
        config_path.write_text(config.model_dump_json())
        argv = [
            *taskset_prefix(cores),
            sys.executable,
            "-m",
            f"benchmarks.{module}",
            str(config_path),
            str(result_path),
        ]
        env = {**os.environ, "TQDM_DISABLE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with log_path.open("wb") as log:
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"benchmarks.{module} exited with {code}\n--- {log_path} (tail) ---\n{tail}")
        return json.loads(result_path.read_text())
