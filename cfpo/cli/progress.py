"""A run's progress as it trains, for every command that follows one: ``cfpo demo``, ``cfpo run watch``,
``cfpo sweep`` and ``cfpo bench``.

Steps are read from the run's step history in the control API (``GET /v1/runs/{id}/metrics``), so no step is
missed between two polls, and timed by when the learner recorded them: seconds per step is the mean gap between the
last few steps, the time left that times the steps still to run. On a terminal they show as a rich bar. Anywhere
else (a log file, ``| tee``, CI) a live display prints nothing until it ends, so each step
is one plain line instead:

    3f2a9c1b0d4e step 7/20  reward 0.4125  KL vs behaviour 0.0031  clip vs behaviour 0.0125  6.2 s/step  1.3 min left
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from cfpo.clients.control import ControlClient
from cfpo.registry import FINAL_STATES

# label -> the learner's metric: distances from the sampler, whichever anchor the loss uses
WATCHED = {"reward": "reward_mean", "KL vs behaviour": "behaviour_kl_k3", "clip vs behaviour": "behaviour_clip_frac"}
RECENT_STEPS = 10  # seconds per step is the mean over this many last steps: recent enough to follow a slowdown


@dataclass(frozen=True)
class Step:
    """One recorded step of a run, with the pace so far."""

    run: str  # what the line names: the run's id, or a sweep's cell
    index: int  # 0-based, as recorded
    total: int | None  # the run's steps
    metrics: dict[str, Any]
    seconds: float | None  # per step, over the last few
    left: float | None  # estimated seconds to the run's last step

    def fields(self) -> str:
        """The watched metrics and the pace: what a bar shows beside itself and a line after the step."""
        parts = [f"{label} {number(self.metrics[key])}" for label, key in WATCHED.items() if key in self.metrics]
        if self.seconds is not None:
            parts.append(f"{self.seconds:.1f} s/step")
        if self.left is not None:
            parts.append(f"{duration(self.left)} left")
        return "  ".join(parts)

    def line(self) -> str:
        return f"{self.run} step {self.index + 1}/{self.total or '?'}  {self.fields()}".rstrip()


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class StepClock:
    """Seconds per step from the times steps were recorded; a run's first step is timed from its start."""

    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=RECENT_STEPS + 1)
        self.from_start = True

    def restart(self) -> None:
        """The run was resumed: time it afresh, its next step not from the run's start (the gap is no step's)."""
        self.times.clear()
        self.from_start = False

    def tick(self, at: float, started_at: float | None) -> float | None:
        if not self.times and self.from_start and started_at is not None:
            self.times.append(started_at)
        self.times.append(at)
        if len(self.times) < 2:
            return None
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def follow_steps(
    api: ControlClient, run_id: str, interval: float = 2.0, label: str | None = None
) -> Iterator[tuple[dict, list[Step]]]:
    """The run's record at every poll with the steps recorded since the one before, until the run ends (the last
    record is in a final state). A run resumed from its checkpoint records the steps after it again; those come
    again, the steps before it do not."""
    last, restarts, clock = -1, 0, StepClock()
    shown: dict[int, float] = {}  # step -> when the step shown was recorded
    for run in api.follow(run_id, interval):
        if run["restarts"] != restarts or run["steps_done"] - 1 < last:  # went back to its checkpoint
            last, restarts = -1, run["restarts"]  # read the history again, showing only steps recorded anew
            clock.restart()
        steps = []
        while run["steps_done"] - 1 > last:
            params = {"since": last} if last >= 0 else {}
            records = api.call("GET", f"/v1/runs/{run_id}/metrics", params=params)["steps"]
            if not records:
                break
            for record in records:
                if shown.get(record["step"]) == record["time"]:
                    continue
                shown[record["step"]] = record["time"]
                seconds = clock.tick(record["time"], run["started_at"])
                left = (
                    None if seconds is None or run["steps"] is None else seconds * (run["steps"] - record["step"] - 1)
                )
                steps.append(Step(label or run_id, record["step"], run["steps"], record["metrics"], seconds, left))
            last = records[-1]["step"]
        yield run, steps


def plain(console: Console) -> bool:
    """Plain lines rather than a live display: the output is not a terminal."""
    return not console.is_terminal


def state_of(run: dict) -> str:
    return run["state"] + (" (cancel asked)" if run["state"] == "running" and run["cancel_reason"] else "")


class RunProgress:
    """Runs' steps as they are recorded, one run at a time: a bar on a terminal, else a line per step (and per
    change of state). ``bar`` is the rich display on a terminal, None elsewhere, for a caller's own bars."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: Progress | None = None
        if not plain(console):
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[latest]}"),
                TimeElapsedColumn(),
            )
            self.bar = Progress(*columns, console=console)
        self._task: TaskID | None = None
        self._shown: tuple[str, str] | None = None  # the run and state last printed, in plain lines

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def show(self, label: str, run: dict, steps: list[Step]) -> None:
        """The run's latest record and the steps recorded since the last call."""
        if self.bar is None:
            now = (label, state_of(run))
            if now != self._shown and run["state"] not in FINAL_STATES:  # how it ended is the caller's line
                self.console.print(f"{label} {now[1]}", highlight=False)
            self._shown = now
            for step in steps:
                self.console.print(step.line(), highlight=False, soft_wrap=True)
            return
        if self._task is None:
            self._task = self.bar.add_task(label, total=None, latest="")
        self.bar.update(
            self._task, description=f"{label} {state_of(run)}", total=run["steps"], completed=run["steps_done"]
        )
        if steps:
            self.bar.update(self._task, latest=steps[-1].fields())

    def note(self, text: str) -> None:
        """A line in either display (above the bar on a terminal)."""
        self.console.print(text, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def status(console: Console, text: str) -> Iterator[Callable[[str], None]]:
    """What is being done, while it is done: a spinner on a terminal, else a line now and one per update; yields
    ``update(text)``."""
    if plain(console):
        console.print(f"{text} ...", highlight=False)
        yield lambda message: console.print(f"  {message}", highlight=False)
        return
    with console.status(text) as spinner:
        yield spinner.update
