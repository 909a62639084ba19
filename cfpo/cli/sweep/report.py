"""A sweep's results: one row per cell (CSV), the same averaged over seeds (``report.md``), and figures.

Per cell, from its run directory: final reward (mean of the last steps, as ``cfpo report``), held-out accuracy
before and after training (``eval.jsonl``), and against each trust-region anchor (behaviour, proximal) the maximum
and mean clip fraction, the maximum KL (k3) and TV, the largest |r - 1| and the smallest effective sample size; the
entropy trend (last step minus first) and the largest gradient norm before clipping. Figures put each loss x anchor
side by side: held-out accuracy and KL against k (the headline), heatmaps over staleness k x iterations, and each
metric against iterations (at the smallest k) and against k (at the smallest number of iterations).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cfpo.cli.report import FINAL_STEPS, LEGEND_INCHES, ReportError, load_run, markdown_table, save, summarise
from cfpo.cli.sweep.grid import Cell, CellBook, SweepSpec
from cfpo.config import Anchor, LossName
from cfpo.metrics import ANCHORS, anchored

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
HEADLINE_PNG = "accuracy-and-kl-vs-staleness.png"
TRUST_REGION_FIGURES = {  # a TrustRegionSummary field -> its label
    "clip_frac_max": "clip fraction max",
    "clip_frac_mean": "clip fraction mean",
    "kl_k3_max": "KL k3 max",
    "tv_max": "TV max",
    "ratio_deviation_max": "max |r - 1|",
    "ess_min": "ESS min",
}
# metric -> its label in tables and figures; the order of the report's columns and panels
METRICS = {
    "final_reward": f"reward, last {FINAL_STEPS} steps",
    "heldout_after": "held-out accuracy after",
    **{
        anchored(anchor, key): f"{label} vs {anchor}"
        for anchor in ANCHORS
        for key, label in TRUST_REGION_FIGURES.items()
    },
    "entropy_change": "entropy last - first",
    "grad_norm_max": "grad norm max",
}
HEATMAPS = ("heldout_after", "final_reward", anchored("behaviour", "kl_k3_max"), anchored("proximal", "kl_k3_max"))
HEADLINE = ("heldout_after", anchored("behaviour", "kl_k3_max"), anchored("proximal", "kl_k3_max"))


@dataclass(frozen=True)
class CellResult(Cell):
    """A cell, how its run ended and the figures read from it."""

    run_id: str | None
    state: str
    seconds: float | None
    heldout_before: float | None
    steady_steps: int | None = None  # steps the figures are read from
    warm_up_steps: int | None = None  # steps left out as warm-up
    figures: dict[str, float | None] = field(default_factory=dict)  # METRICS key -> value (none where not run)

    def csv_row(self) -> dict[str, object]:
        row = {key: value for key, value in asdict(self).items() if key != "figures"}
        return {**row, **{key: self.figures.get(key) for key in METRICS}}


CSV_COLUMNS = [*(f.name for f in fields(CellResult) if f.name != "figures"), *METRICS]


def collect(spec: SweepSpec, book: CellBook, runs_dir: Path) -> list[CellResult]:
    """Every cell of the grid, with its figures where its run succeeded (state ``not run`` where it never ran)."""
    return [_result(cell, book, runs_dir) for cell in spec.cells()]


def _result(cell: Cell, book: CellBook, runs_dir: Path) -> CellResult:
    record = book.records.get(cell.key)
    identity = asdict(cell)
    if record is None or record.state != "succeeded":
        return CellResult(
            **identity,
            run_id=record.run_id if record else None,
            state=record.state if record else "not run",
            seconds=record.seconds if record else None,
            heldout_before=None,
        )
    directory = runs_dir / record.run_id
    summary = summarise(load_run(directory))
    evaluations = _evaluations(directory)
    figures = {
        "final_reward": summary.final_reward,
        "heldout_after": evaluations[-1]["accuracy"] if len(evaluations) > 1 else None,
        **{
            anchored(anchor, key): getattr(summary.against[anchor], key)
            for anchor in ANCHORS
            for key in TRUST_REGION_FIGURES
        },
        "entropy_change": (
            summary.entropy_last - summary.entropy_first
            if summary.entropy_first is not None and summary.entropy_last is not None
            else None
        ),
        "grad_norm_max": summary.grad_norm_max,
    }
    return CellResult(
        **identity,
        run_id=record.run_id,
        state=record.state,
        seconds=record.seconds,
        heldout_before=evaluations[0]["accuracy"] if evaluations else None,
        steady_steps=summary.steps,
        warm_up_steps=summary.warm_up_left_out,
        figures=figures,
    )


def _evaluations(directory: Path) -> list[dict]:
    path = directory / "eval.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON lines ({error.msg})") from None


@dataclass(frozen=True)
class Aggregate:
    """A cell's metrics over its seeds: mean, and sample standard deviation when there are several seeds."""

    loss: str
    ratio_reference: str
    staleness_k: int
    iterations: int
    minibatches: int
    seeds: int
    steps: str  # steady + warm-up steps per run ("12 + 4"; several values if seeds differ)
    means: dict[str, float | None]
    stdevs: dict[str, float | None]

    @property
    def series(self) -> tuple[str, str]:
        """The line (or heatmap column) this cell belongs to in the figures: its loss and anchor."""
        return self.loss, self.ratio_reference


def aggregate(results: list[CellResult]) -> list[Aggregate]:
    groups: dict[tuple, list[CellResult]] = {}
    for r in results:
        if r.state == "succeeded":
            groups.setdefault((r.loss, r.ratio_reference, r.staleness_k, r.iterations, r.minibatches), []).append(r)
    out = []
    for (loss, anchor, k, iterations, minibatches), rows in groups.items():
        means, stdevs = {}, {}
        for key in METRICS:
            values = [v for r in rows if (v := r.figures.get(key)) is not None and not math.isnan(v)]
            means[key] = statistics.fmean(values) if values else None
            stdevs[key] = statistics.stdev(values) if len(values) > 1 else None
        steps = ", ".join(dict.fromkeys(f"{r.steady_steps} + {r.warm_up_steps}" for r in rows))
        out.append(Aggregate(loss, anchor, k, iterations, minibatches, len(rows), steps, means, stdevs))
    return sorted(out, key=lambda a: (a.minibatches, a.staleness_k, a.iterations, a.loss, a.ratio_reference))


def series(spec: SweepSpec) -> list[tuple[LossName, Anchor]]:
    """Every loss x anchor of the grid, in the grid's order: one line (or heatmap column) each in the figures."""
    return [(loss, anchor) for loss in spec.grid.losses for anchor in spec.grid.anchors]


def write(spec: SweepSpec, results: list[CellResult], out: Path, command: str) -> list[Path]:
    """Write results.csv, the figures and report.md into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / RESULTS_CSV
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(r.csv_row() for r in results)
    aggregates = aggregate(results)
    figures = _figures(spec, aggregates, out) if aggregates else []
    markdown = out / REPORT_MD
    markdown.write_text(_markdown(spec, results, aggregates, figures, command))
    return [csv_path, markdown, *figures]


def _markdown(
    spec: SweepSpec, results: list[CellResult], aggregates: list[Aggregate], figures: list[Path], command: str
) -> str:
    grid = spec.grid
    not_succeeded = [r for r in results if r.state != "succeeded"]
    headers = [
        "loss",
        "anchor",
        "k",
        "iterations",
        "minibatches",
        "seeds",
        "steps",
        *(label.replace("|", "\\|") for label in METRICS.values()),
    ]
    lines = [
        f"# Sweep `{spec.name}`",
        "",
        f"Produced by: `{command}`",
        "",
        f"Model `{spec.model}`; grid: losses {grid.losses}, trust-region anchors {grid.anchors}, fixed staleness k "
        f"{grid.staleness_k}, iterations {grid.iterations}, minibatches {grid.minibatches}, seeds {grid.seeds} "
        f"({len(results)} runs). Per-run figures are in `{RESULTS_CSV}`; below, the mean over seeds (± sample "
        f"standard deviation with several seeds). Final reward is the mean of the last {FINAL_STEPS} steps' training "
        "reward; held-out accuracy is greedy, on the task's eval split, after the last step; the other figures are "
        "read from the steady state (the optimizer steps of every step after the warm-up: staleness at its target), "
        "steps shown per cell as steady + warm-up left out. `anchor` is the policy the loss's ratio is taken "
        'against; every run measures its trust-region figures against both, "vs behaviour" (the sampling '
        'policy) and "vs proximal" (the learner before its first update on the batch).',
        "",
        *markdown_table(
            headers,
            [
                [
                    a.loss,
                    a.ratio_reference,
                    str(a.staleness_k),
                    str(a.iterations),
                    str(a.minibatches),
                    str(a.seeds),
                    a.steps,
                    *(_cell(a.means[key], a.stdevs[key]) for key in METRICS),
                ]
                for a in aggregates
            ],
        ),
        "",
    ]
    if not_succeeded:
        lines += [
            "Runs that did not succeed (left out above):",
            "",
            *(
                f"- loss {r.loss}, anchor {r.ratio_reference}, k {r.staleness_k}, iterations {r.iterations}, "
                f"minibatches {r.minibatches}, seed {r.seed}: {r.state}" + (f" (run {r.run_id})" if r.run_id else "")
                for r in not_succeeded
            ),
            "",
        ]
    lines += [f"![{path.stem}]({path.name})\n" for path in figures]
    return "\n".join(lines)


def _cell(mean: float | None, stdev: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3g}" + (f" ± {stdev:.2g}" if stdev is not None else "")


def _figures(spec: SweepSpec, aggregates: list[Aggregate], out: Path) -> list[Path]:
    return [save(fig, out / name) for name, fig in figures(spec, aggregates).items()]


def figures(spec: SweepSpec, aggregates: list[Aggregate]) -> dict[str, Figure]:
    """File name -> figure, for every figure of the report (one set per number of minibatches)."""
    import matplotlib

    matplotlib.use("Agg")
    made = {}
    for minibatches in spec.grid.minibatches:
        chosen = [a for a in aggregates if a.minibatches == minibatches]
        if not chosen:
            continue
        suffix = f"-mb{minibatches}" if len(spec.grid.minibatches) > 1 else ""
        made[HEADLINE_PNG.replace(".png", f"{suffix}.png")] = _headline(spec, chosen)
        made[f"heatmaps{suffix}.png"] = _heatmaps(spec, chosen)
        made[f"vs-iterations{suffix}.png"] = _lines(spec, chosen, "iterations", min(spec.grid.staleness_k))
        made[f"vs-staleness{suffix}.png"] = _lines(spec, chosen, "staleness_k", min(spec.grid.iterations))
    return made


def _headline(spec: SweepSpec, aggregates: list[Aggregate]) -> Figure:
    """Held-out accuracy and KL against staleness k: a row per metric, a column per number of iterations, a line
    per loss x anchor. The figure to read first."""
    import matplotlib.pyplot as plt

    iterations = spec.grid.iterations
    fig, axes = plt.subplots(
        len(HEADLINE),
        len(iterations),
        figsize=(3.8 * len(iterations), 2.9 * len(HEADLINE) + LEGEND_INCHES),
        squeeze=False,
        sharex=True,
        sharey="row",
        layout="constrained",
    )
    for row, key in zip(axes, HEADLINE):
        for ax, its in zip(row, iterations):
            _plot_series(ax, spec, [a for a in aggregates if a.iterations == its], "staleness_k", key)
            ax.set_title(f"{METRICS[key]}, {its} iteration{'s' if its > 1 else ''}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("staleness k")
    _legend(fig, spec)
    return fig


def _legend(fig: Figure, spec: SweepSpec) -> None:
    """One entry per loss x anchor, below the panels, where it hides no line."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=_colour(spec, loss), marker="o", markersize=4, linestyle=_style(spec, anchor))
        for loss, anchor in series(spec)
    ]
    labels = [f"{loss}, {anchor}" for loss, anchor in series(spec)]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False, fontsize=9)


def _colour(spec: SweepSpec, loss: LossName) -> str:
    return f"C{spec.grid.losses.index(loss)}"  # a loss keeps its colour in every figure


def _style(spec: SweepSpec, anchor: str) -> Literal["-", "--"]:
    return "-" if anchor == spec.grid.anchors[0] else "--"


def _plot_series(ax, spec: SweepSpec, aggregates: list[Aggregate], axis: str, key: str) -> None:
    """One line per loss x anchor of ``key`` against ``axis``, with seed standard deviations as error bars."""
    for loss, anchor in series(spec):
        points = sorted(
            ((getattr(a, axis), a) for a in aggregates if a.series == (loss, anchor) and a.means[key] is not None),
            key=lambda point: point[0],
        )
        if points:  # a colour per loss, a line style per anchor
            ax.errorbar(
                [x for x, _ in points],
                [a.means[key] for _, a in points],
                yerr=[a.stdevs[key] or 0.0 for _, a in points],
                color=_colour(spec, loss),
                marker="o",
                markersize=4,
                capsize=2,
                linestyle=_style(spec, anchor),
            )
    ax.set_xticks(spec.grid.iterations if axis == "iterations" else spec.grid.staleness_k)
    ax.grid(alpha=0.3)


def _heatmaps(spec: SweepSpec, aggregates: list[Aggregate]) -> Figure:
    """One row per metric, one column per loss x anchor; a metric's colour scale is shared across columns."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    ks, iterations, columns = spec.grid.staleness_k, spec.grid.iterations, series(spec)
    fig, axes = plt.subplots(
        len(HEATMAPS),
        len(columns),
        figsize=(3.4 * len(columns) + 1.2, 3.0 * len(HEATMAPS)),
        squeeze=False,
        layout="constrained",
    )
    for row, key in zip(axes, HEATMAPS):
        grids = {name: [[_mean(aggregates, name, k, it, key) for it in iterations] for k in ks] for name in columns}
        values = [v for grid in grids.values() for line in grid for v in line if not math.isnan(v)]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        norm = Normalize(low, high)  # one scale for the row, the colour bar's too (it widens a single value's)
        for ax, name in zip(row, columns):
            image = ax.imshow(grids[name], origin="lower", aspect="auto", cmap="viridis", norm=norm)
            for y, line in enumerate(grids[name]):
                for x, value in enumerate(line):
                    if not math.isnan(value):
                        ax.text(
                            x,
                            y,
                            f"{value:.2g}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if value < (low + high) / 2 else "black",
                        )
            ax.set_xticks(range(len(iterations)), [str(i) for i in iterations])
            ax.set_yticks(range(len(ks)), [str(k) for k in ks])
            ax.set_title(f"{name[0]}, {name[1]}: {METRICS[key]}", fontsize=9)
            ax.set_xlabel("iterations")
            ax.set_ylabel("staleness k")
        fig.colorbar(image, ax=list(row), shrink=0.8)
    return fig


def _lines(spec: SweepSpec, aggregates: list[Aggregate], axis: str, fixed: int) -> Figure:
    """Each metric against ``axis`` (iterations or staleness_k), the other held at ``fixed``; one line per loss x
    anchor."""
    import matplotlib.pyplot as plt

    other = "staleness_k" if axis == "iterations" else "iterations"
    keys = list(METRICS)
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.8 * rows + LEGEND_INCHES), squeeze=False, layout="constrained"
    )
    for ax, key in zip(axes.flat, keys):
        _plot_series(ax, spec, [a for a in aggregates if getattr(a, other) == fixed], axis, key)
        ax.set_title(METRICS[key], fontsize=9)
        ax.set_xlabel("iterations" if axis == "iterations" else "staleness k")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    _legend(fig, spec)
    label = "staleness k" if other == "staleness_k" else "iterations"
    fig.suptitle(f"against {'iterations' if axis == 'iterations' else 'staleness k'} ({label} = {fixed})", fontsize=10)
    return fig


def _mean(aggregates: list[Aggregate], name: tuple[str, str], k: int, iterations: int, key: str) -> float:
    for a in aggregates:
        if (a.series, a.staleness_k, a.iterations) == (name, k, iterations) and (mean := a.means[key]) is not None:
            return mean
    return math.nan
