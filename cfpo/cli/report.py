"""``cfpo report``: compare runs from their ``metrics.jsonl`` in PNG plots and one summary table.

A step (one rollout batch) logs one row per optimizer step, ``iterations x minibatches`` of them. The report
reduces each step to one value per metric: the mean of its rows, or their max (min) for keys ending in
``_max`` (``_min``). Curves are plotted against that step, so runs with different iterations or minibatches
line up, and every table value is read off the same per-step curves the figures show. The table reads the steady
state: warm-up steps (logged ``warm_up``: staleness still below its target, as fixed k has no older data yet) are
left out, and counted, unless all steps are asked for.

Input is all-or-nothing: if any run directory is unusable, the report lists every problem and writes nothing,
since a comparison silently missing a run reads as complete.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cfpo.metrics import ANCHORS, anchored, bucket_key, split_bucket_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FINAL_STEPS = 5  # "final reward" averages this many last steps: one step's reward is noisy
METRICS_PNG = "metrics.png"
BUCKETS_PNG = "staleness_buckets.png"
PANEL_INCHES, LEGEND_INCHES = (4.2, 3.2), 0.6  # one panel's width and height; the legend strip below them
BEHAVIOUR, PROXIMAL = ANCHORS
# The trust-region panels draw each run twice, against either anchor; the legend below says which line is which,
# since a panel's title must fit its panel.
LineStyle = Literal["-", "--"]
ANCHOR_STYLES: dict[str, LineStyle] = {
    f"against {BEHAVIOUR} (clip, KL, TV, ESS)": "-",
    f"against {PROXIMAL} (clip, KL, TV, ESS)": "--",
}
PANELS = {  # title -> plotted keys; a second key is drawn dashed
    "reward (mean)": ("reward_mean",),
    "clip fraction": (anchored(BEHAVIOUR, "clip_frac"), anchored(PROXIMAL, "clip_frac")),
    "KL k3 (anchor || current)": (anchored(BEHAVIOUR, "kl_k3"), anchored(PROXIMAL, "kl_k3")),
    "TV": (anchored(BEHAVIOUR, "tv"), anchored(PROXIMAL, "tv")),
    "ESS of the ratios": (anchored(BEHAVIOUR, "ess"), anchored(PROXIMAL, "ess")),
    "entropy": ("entropy",),
    "staleness (solid: mean, dashed: max)": ("staleness_mean", "staleness_max"),
    "gradient norm before clipping": ("grad_norm",),
}
BUCKET_METRICS = {
    anchored(BEHAVIOUR, "clip_frac"): f"clip fraction vs {BEHAVIOUR}",
    anchored(BEHAVIOUR, "kl_k3"): f"KL k3 vs {BEHAVIOUR}",
}  # staleness is the sampler's age
BOTH = f"({BEHAVIOUR} / {PROXIMAL})"
HEADERS = (
    "run",
    "anchor",
    "steps (+ warm-up left out)",
    f"reward, last {FINAL_STEPS}",
    f"clip frac max {BOTH}",
    f"clip frac mean {BOTH}",
    f"KL k3 max {BOTH}",
    f"TV mean {BOTH}",
    f"ESS min {BOTH}",
    "entropy first → last",
    "staleness max",
    "grad norm max",
)


class ReportError(Exception):
    """Input the report cannot use; the message names the file (and line) so it can be fixed."""


@dataclass(frozen=True)
class Run:
    path: Path
    label: str
    steps: list[int]
    series: dict[str, list[float]]  # metric -> its value at each of ``steps``; NaN where a step lacks it
    warm_up_steps: frozenset[int] = frozenset()  # steps logged as warm-up
    anchor: str | None = None  # the loss's trust-region anchor (learner.loss.ratio_reference), when a spec names it

    def steady_state(self) -> Run:
        """The run without its warm-up steps, whose lower staleness would dilute every average of the run."""
        kept = [i for i, step in enumerate(self.steps) if step not in self.warm_up_steps]
        return replace(
            self,
            steps=[self.steps[i] for i in kept],
            warm_up_steps=frozenset(),
            series={key: [values[i] for i in kept] for key, values in self.series.items()},
        )

    def points(self, key: str) -> tuple[list[int], list[float]]:
        """The steps that have a value of ``key``, and those values."""
        pairs = [(s, v) for s, v in zip(self.steps, self.series.get(key, ())) if not math.isnan(v)]
        return [s for s, _ in pairs], [v for _, v in pairs]


@dataclass(frozen=True)
class TrustRegionSummary:
    """How far the policy went from one anchor over the summarised steps."""

    clip_frac_max: float | None
    clip_frac_mean: float | None
    kl_k3_max: float | None
    tv_mean: float | None
    tv_max: float | None
    ratio_deviation_max: float | None  # the largest |r - 1|
    ess_min: float | None  # the smallest effective sample size of the ratios


@dataclass(frozen=True)
class Summary:
    steps: int  # steps summarised
    warm_up_left_out: int
    final_reward: float | None
    against: dict[str, TrustRegionSummary]  # anchor -> its figures
    entropy_first: float | None
    entropy_last: float | None
    staleness_max: float | None
    grad_norm_max: float | None  # before clipping


def load_runs(paths: list[Path]) -> list[Run]:
    """Every run, or a ReportError listing the problem of each unusable one."""
    names = [path.resolve().name for path in paths]
    runs, problems = [], []
    for path, name in zip(paths, names):
        try:
            runs.append(load_run(path, name=str(path) if names.count(name) > 1 else name))
        except ReportError as error:
            problems.append(str(error))
    if problems:
        raise ReportError("\n".join(problems))
    return runs


def load_run(path: Path, name: str | None = None) -> Run:
    """A run directory's metrics, reduced to one value per step, labelled ``name (loss)`` when a spec names it."""
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    rows = _read_rows(path / "metrics.jsonl")
    steps, series = _per_step(rows)
    name = name or path.resolve().name
    loss = _loss_settings(path / "spec.yaml")
    label = f"{name} ({loss['name']})" if "name" in loss else name
    return Run(
        path,
        label,
        steps,
        series,
        frozenset(row["step"] for row in rows if row.get("warm_up") is True),
        loss.get("ratio_reference"),
    )


def _read_rows(file: Path) -> list[dict]:
    if not file.is_file():
        raise ReportError(f"{file}: not found (is {file.parent} a run directory?)")
    text = file.read_text(errors="replace")  # undecodable bytes then fail as JSON, with their line
    if not text.strip():
        raise ReportError(f"{file}: empty, no step logged")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ReportError(f"{file}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or type(row.get("step")) is not int:
            raise ReportError(f"{file}:{number}: not a metrics row (a JSON object with an integer 'step')")
        rows.append(row)
    return rows


def _per_step(rows: list[dict]) -> tuple[list[int], dict[str, list[float]]]:
    by_step: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        values = by_step.setdefault(row["step"], {})
        for key, value in row.items():
            if _is_number(value):
                values.setdefault(key, []).append(float(value))
    steps = sorted(by_step)
    keys = {key for values in by_step.values() for key in values}
    return steps, {key: [_reduce(key, by_step[step].get(key)) for step in steps] for key in keys}


def _reduce(key: str, values: list[float] | None) -> float:
    if not values:
        return math.nan
    if key.endswith("_max"):
        return max(values)
    if key.endswith("_min"):
        return min(values)
    return statistics.fmean(values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _loss_settings(spec_file: Path) -> dict[str, str]:
    """The loss's name and anchor a run spec gives (metrics rows carry neither); what is missing is left out."""
    import yaml

    try:
        loss = yaml.safe_load(spec_file.read_text())["learner"]["loss"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    if not isinstance(loss, dict):
        return {}
    return {key: str(loss[key]) for key in ("name", "ratio_reference") if key in loss}


def summarise(run: Run, all_steps: bool = False) -> Summary:
    """The run's table values over its steady state (every step with ``all_steps``)."""
    left_out = 0 if all_steps else len(run.warm_up_steps)
    run = run if all_steps else run.steady_state()

    def values(key: str) -> list[float]:
        return run.points(key)[1]

    reward, entropy = values("reward_mean"), values("entropy")
    return Summary(
        steps=len(run.steps),
        warm_up_left_out=left_out,
        final_reward=statistics.fmean(reward[-FINAL_STEPS:]) if reward else None,
        against={anchor: _trust_region_summary(run, anchor) for anchor in ANCHORS},
        entropy_first=entropy[0] if entropy else None,
        entropy_last=entropy[-1] if entropy else None,
        staleness_max=max(values("staleness_max"), default=None),
        grad_norm_max=max(values("grad_norm"), default=None),
    )


def _trust_region_summary(run: Run, anchor: str) -> TrustRegionSummary:
    def values(key: str) -> list[float]:
        return run.points(anchored(anchor, key))[1]

    clip, tv = values("clip_frac"), values("tv")
    deviations = [r - 1 for r in values("ratio_max")] + [1 - r for r in values("ratio_min")]
    return TrustRegionSummary(
        clip_frac_max=max(clip, default=None),
        clip_frac_mean=statistics.fmean(clip) if clip else None,
        kl_k3_max=max(values("kl_k3"), default=None),
        tv_mean=statistics.fmean(tv) if tv else None,
        tv_max=max(tv, default=None),
        ratio_deviation_max=max(deviations, default=None),
        ess_min=min(values("ess"), default=None),
    )


def table_rows(runs: list[Run], all_steps: bool = False) -> list[list[str]]:
    """One row of formatted cells per run, in the order of ``HEADERS``."""
    rows = []
    for run in runs:
        s = summarise(run, all_steps)
        steps = f"{s.steps} + {s.warm_up_left_out}" if s.warm_up_left_out else str(s.steps)
        both = [
            " / ".join(_cell(getattr(s.against[anchor], field)) for anchor in ANCHORS)
            for field in ("clip_frac_max", "clip_frac_mean", "kl_k3_max", "tv_mean", "ess_min")
        ]
        rows.append(
            [
                run.label,
                run.anchor or "–",
                steps,
                _cell(s.final_reward),
                *both,
                f"{_cell(s.entropy_first)} → {_cell(s.entropy_last)}",
                _cell(s.staleness_max),
                _cell(s.grad_norm_max),
            ]
        )
    return rows


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def staleness_buckets(runs: list[Run]) -> list[str]:
    """Staleness buckets any run logged clip fraction or KL (against the behaviour policy) for, youngest first
    ("0", "1", "3-4", "9+")."""
    found = {
        parts[2]
        for run in runs
        for key in run.series
        if (parts := split_bucket_key(key)) and parts[0] in BUCKET_METRICS and parts[1] == "staleness"
    }
    return sorted(found, key=_lowest_staleness)


def _lowest_staleness(bucket: str) -> int:
    """A bucket's lowest staleness, which the learner starts its name with ("3-4", "9+"), to sort buckets by."""
    lowest = re.match(r"\d+", bucket)
    assert lowest is not None, f"staleness bucket {bucket!r}: its name does not start with its lowest staleness"
    return int(lowest[0])


def write_report(paths: list[Path], out: Path, all_steps: bool = False) -> tuple[list[Run], list[Path]]:
    """Load the runs, write the figures and ``report.md`` into ``out``; returns the runs and the files written.
    The table reads each run's steady state, or every step with ``all_steps``; the figures show every step."""
    runs = load_runs(paths)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"{out}: cannot create the output directory ({error.strerror})") from None
    figures = {"metrics": save(metrics_figure(runs), out / METRICS_PNG)}
    (out / BUCKETS_PNG).unlink(missing_ok=True)  # a figure left from an earlier report would mislead
    if buckets := staleness_buckets(runs):
        title = "clip fraction and KL k3 against the behaviour policy, by staleness bucket"
        figures[title] = save(buckets_figure(runs, buckets), out / BUCKETS_PNG)
    markdown = out / "report.md"
    markdown.write_text(_markdown(runs, figures, all_steps))
    return runs, [markdown, *figures.values()]


def _markdown(runs: list[Run], figures: dict[str, Path], all_steps: bool) -> str:
    steps = (
        "every step, warm-up included"
        if all_steps
        else "the steady state: warm-up steps (staleness still below its target) are left out, and counted"
    )
    lines = [
        "# Run report",
        "",
        *(f"- `{run.label}`: {run.path}" for run in runs),
        "",
        "Each step (rollout batch) is the mean of its optimizer steps' rows (the max for `*_max` keys); the table "
        f"is read off those per-step values, over {steps}. Final reward: mean of the last {FINAL_STEPS} steps. "
        "The figures show every step. Trust-region figures are given against both anchors, behaviour (the "
        "sampling policy) / proximal (the learner before its first update on the batch); `anchor` is the one the "
        "run's loss used.",
        "",
        *markdown_table(HEADERS, table_rows(runs, all_steps)),
        "",
        *(f"![{title}]({path.name})\n" for title, path in figures.items()),
    ]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numbers: bool = False) -> list[str]:
    """The lines of a Markdown table: the header row, its rule, one line per row. ``numbers``: every column but
    the first holds figures, aligned right."""
    rule = ["---"] + ["---:" if numbers else "---"] * (len(headers) - 1)
    return ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def print_report(runs: list[Run], written: list[Path], all_steps: bool = False) -> None:
    """The table with metrics down and runs across, which fits a terminal where nine columns would not."""
    from rich.console import Console
    from rich.table import Table

    labels, *columns = zip(*table_rows(runs, all_steps))
    table = Table(title="runs")
    table.add_column(no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right", overflow="fold")  # a label is never cut: it tells runs apart
    for header, cells in zip(HEADERS[1:], columns):
        table.add_row(header, *cells)
    console = Console()
    console.print(table)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def _figure(
    rows: int,
    cols: int,
    runs: list[Run],
    sharey: bool | Literal["none", "all", "row", "col"] = False,
    styles: dict[str, LineStyle] | None = None,
) -> tuple[Figure, Any]:
    """A grid of axes with one legend entry per run, below, then one per line style in ``styles`` (label ->
    style); each run keeps its colour in every figure. Constrained layout keeps titles, labels and the legend clear
    of each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    width, height = PANEL_INCHES
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows + LEGEND_INCHES),
        squeeze=False,
        sharex=True,
        sharey=sharey,
        layout="constrained",
    )
    handles = [Line2D([], [], color=f"C{i}", marker=".") for i in range(len(runs))]
    labels = [run.label for run in runs]
    for label, linestyle in (styles or {}).items():
        handles.append(Line2D([], [], color="grey", linestyle=linestyle))
        labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("step (rollout batch)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    return fig, axes


def _draw(ax, runs: list[Run], key: str, linestyle: str = "-") -> None:
    for i, run in enumerate(runs):
        ax.plot(*run.points(key), color=f"C{i}", linestyle=linestyle, marker=".", markersize=4)
    ax.grid(alpha=0.3)


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG and release it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metrics_figure(runs: list[Run]) -> Figure:
    fig, axes = _figure(2, len(PANELS) // 2, runs, styles=ANCHOR_STYLES)
    for ax, (title, keys) in zip(axes.flat, PANELS.items()):
        for key, linestyle in zip(keys, ("-", "--")):
            _draw(ax, runs, key, linestyle)
        ax.set_title(title, fontsize=10)
    return fig


def buckets_figure(runs: list[Run], buckets: list[str]) -> Figure:
    fig, axes = _figure(len(BUCKET_METRICS), len(buckets), runs, sharey="row")  # compare buckets at a glance
    for row, (metric, title) in zip(axes, BUCKET_METRICS.items()):
        row[0].set_ylabel(title)
        for ax, bucket in zip(row, buckets):
            _draw(ax, runs, bucket_key(metric, "staleness", bucket))
            ax.set_title(f"{title}, staleness {bucket}", fontsize=10)
    return fig
