"""A sweep's results: one row per cell (CSV), the same averaged over seeds (``report.md``), and figures.

Per cell, from its run directory: final reward (mean of the last steps, as ``cfpo report``), held-out accuracy
before and after training (``eval.jsonl``), maximum and mean clip fraction, maximum KL (k3) and TV, the largest
|r - 1|, and the entropy trend (last step minus first). Figures put CFPO and GRPO side by side: heatmaps over
staleness k x iterations, and each metric against iterations (at the smallest k) and against k (at the smallest
number of iterations).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cfpo.report import FINAL_STEPS, ReportError, load_run, summarise
from cfpo.sweep import Cell, CellBook, SweepSpec

RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
# metric -> its label in tables and figures; the order of the report's columns and panels
METRICS = {
    "final_reward": f"reward, last {FINAL_STEPS} steps",
    "heldout_after": "held-out accuracy after",
    "clip_frac_max": "clip fraction max",
    "clip_frac_mean": "clip fraction mean",
    "kl_k3_max": "KL k3 max",
    "tv_max": "TV max",
    "ratio_deviation_max": "max |r - 1|",
    "entropy_change": "entropy last - first",
}
HEATMAPS = ("clip_frac_max", "kl_k3_max", "final_reward", "heldout_after")


@dataclass(frozen=True)
class CellResult:
    loss: str
    staleness_k: int
    iterations: int
    minibatches: int
    seed: int
    run_id: str | None
    state: str
    seconds: float | None
    heldout_before: float | None
    steady_steps: int | None = None  # steps the figures are read from
    warm_up_steps: int | None = None  # steps left out as warm-up
    final_reward: float | None = None
    heldout_after: float | None = None
    clip_frac_max: float | None = None
    clip_frac_mean: float | None = None
    kl_k3_max: float | None = None
    tv_max: float | None = None
    ratio_deviation_max: float | None = None
    entropy_change: float | None = None


def collect(spec: SweepSpec, book: CellBook, runs_dir: Path) -> list[CellResult]:
    """Every cell of the grid, with its figures where its run succeeded (state ``not run`` where it never ran)."""
    return [_result(cell, book, runs_dir) for cell in spec.cells()]


def _result(cell: Cell, book: CellBook, runs_dir: Path) -> CellResult:
    record = book.records.get(cell.key)
    identity = dict(loss=cell.loss, staleness_k=cell.staleness_k, iterations=cell.iterations,
                    minibatches=cell.minibatches, seed=cell.seed)
    if record is None or record.state != "succeeded":
        return CellResult(**identity, run_id=record and record.run_id, state=record.state if record else "not run",
                          seconds=record and record.seconds, heldout_before=None)
    directory = runs_dir / record.run_id
    logged = load_run(directory)
    summary = summarise(logged)
    run = logged.steady_state()
    evaluations = _evaluations(directory)
    ratio_max, ratio_min = run.points("ratio_max")[1], run.points("ratio_min")[1]
    return CellResult(
        **identity, run_id=record.run_id, state=record.state, seconds=record.seconds,
        heldout_before=evaluations[0]["accuracy"] if evaluations else None,
        steady_steps=summary.steps, warm_up_steps=summary.warm_up_left_out,
        final_reward=summary.final_reward,
        heldout_after=evaluations[-1]["accuracy"] if len(evaluations) > 1 else None,
        clip_frac_max=summary.clip_frac_max,
        clip_frac_mean=summary.clip_frac_mean,
        kl_k3_max=summary.kl_k3_max,
        tv_max=max(run.points("tv")[1], default=None),
        ratio_deviation_max=max([r - 1 for r in ratio_max] + [1 - r for r in ratio_min], default=None),
        entropy_change=(summary.entropy_last - summary.entropy_first
                        if summary.entropy_first is not None and summary.entropy_last is not None else None),
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
    staleness_k: int
    iterations: int
    minibatches: int
    seeds: int
    steps: str  # steady + warm-up steps per run ("12 + 4"; several values if seeds differ)
    means: dict[str, float | None]
    stdevs: dict[str, float | None]


def aggregate(results: list[CellResult]) -> list[Aggregate]:
    groups: dict[tuple, list[CellResult]] = {}
    for r in results:
        if r.state == "succeeded":
            groups.setdefault((r.loss, r.staleness_k, r.iterations, r.minibatches), []).append(r)
    out = []
    for (loss, k, iterations, minibatches), rows in groups.items():
        means, stdevs = {}, {}
        for key in METRICS:
            values = [v for r in rows if (v := getattr(r, key)) is not None and not math.isnan(v)]
            means[key] = statistics.fmean(values) if values else None
            stdevs[key] = statistics.stdev(values) if len(values) > 1 else None
        steps = ", ".join(dict.fromkeys(f"{r.steady_steps} + {r.warm_up_steps}" for r in rows))
        out.append(Aggregate(loss, k, iterations, minibatches, len(rows), steps, means, stdevs))
    return out


def write(spec: SweepSpec, results: list[CellResult], out: Path, command: str) -> list[Path]:
    """Write results.csv, the figures and report.md into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / RESULTS_CSV
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(CellResult)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    aggregates = aggregate(results)
    figures = _figures(spec, aggregates, out) if aggregates else []
    markdown = out / REPORT_MD
    markdown.write_text(_markdown(spec, results, aggregates, figures, command))
    return [csv_path, markdown, *figures]


def _markdown(spec: SweepSpec, results: list[CellResult], aggregates: list[Aggregate], figures: list[Path],
              command: str) -> str:
    grid = spec.grid
    not_succeeded = [r for r in results if r.state != "succeeded"]
    headers = ["loss", "k", "iterations", "minibatches", "seeds", "steps", *(label.replace("|", "\\|") for label in METRICS.values())]
    lines = [
        f"# Sweep `{spec.name}`", "",
        f"Produced by: `{command}`", "",
        f"Model `{spec.model}`; grid: losses {grid.losses}, fixed staleness k {grid.staleness_k}, iterations "
        f"{grid.iterations}, minibatches {grid.minibatches}, seeds {grid.seeds} ({len(results)} runs). Per-run "
        f"figures are in `{RESULTS_CSV}`; below, the mean over seeds (± sample standard deviation with several seeds). "
        f"Final reward is the mean of the last {FINAL_STEPS} steps' training reward; held-out accuracy is greedy, "
        "on the task's eval split, after the last step; the other figures are read from the steady state (the "
        "optimizer steps of every step after the warm-up: staleness at its target), steps shown per cell as "
        "steady + warm-up left out.", "",
        "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
        *("| " + " | ".join([a.loss, str(a.staleness_k), str(a.iterations), str(a.minibatches), str(a.seeds),
                             a.steps, *(_cell(a.means[key], a.stdevs[key]) for key in METRICS)]) + " |"
          for a in sorted(aggregates, key=lambda a: (a.minibatches, a.staleness_k, a.iterations, a.loss))), "",
    ]
    if not_succeeded:
        lines += ["Runs that did not succeed (left out above):", "",
                  *(f"- loss {r.loss}, k {r.staleness_k}, iterations {r.iterations}, minibatches {r.minibatches}, "
                    f"seed {r.seed}: {r.state}" + (f" (run {r.run_id})" if r.run_id else "") for r in not_succeeded), ""]
    lines += [f"![{path.stem}]({path.name})\n" for path in figures]
    return "\n".join(lines)


def _cell(mean: float | None, stdev: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3g}" + (f" ± {stdev:.2g}" if stdev is not None else "")


def _figures(spec: SweepSpec, aggregates: list[Aggregate], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for minibatches in spec.grid.minibatches:
        chosen = [a for a in aggregates if a.minibatches == minibatches]
        if not chosen:
            continue
        suffix = f"-mb{minibatches}" if len(spec.grid.minibatches) > 1 else ""
        written.append(_heatmaps(spec, chosen, out / f"heatmaps{suffix}.png"))
        written.append(_lines(spec, chosen, "iterations", min(spec.grid.staleness_k), out / f"vs-iterations{suffix}.png"))
        written.append(_lines(spec, chosen, "staleness_k", min(spec.grid.iterations), out / f"vs-staleness{suffix}.png"))
    return written


def _heatmaps(spec: SweepSpec, aggregates: list[Aggregate], path: Path) -> Path:
    """One row per metric, one column per loss; a metric's colour scale is shared across losses."""
    import matplotlib.pyplot as plt

    ks, iterations, losses = spec.grid.staleness_k, spec.grid.iterations, spec.grid.losses
    fig, axes = plt.subplots(len(HEATMAPS), len(losses), figsize=(3.4 * len(losses) + 1.2, 3.0 * len(HEATMAPS)),
                             squeeze=False, layout="constrained")
    for row, key in zip(axes, HEATMAPS):
        grids = {loss: [[_mean(aggregates, loss, k, it, key) for it in iterations] for k in ks] for loss in losses}
        values = [v for grid in grids.values() for line in grid for v in line if not math.isnan(v)]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        for ax, loss in zip(row, losses):
            image = ax.imshow(grids[loss], origin="lower", aspect="auto", cmap="viridis", vmin=low, vmax=high)
            for y, line in enumerate(grids[loss]):
                for x, value in enumerate(line):
                    if not math.isnan(value):
                        ax.text(x, y, f"{value:.2g}", ha="center", va="center", fontsize=7,
                                color="white" if value < (low + high) / 2 else "black")
            ax.set_xticks(range(len(iterations)), [str(i) for i in iterations])
            ax.set_yticks(range(len(ks)), [str(k) for k in ks])
            ax.set_title(f"{loss}: {METRICS[key]}", fontsize=9)
            ax.set_xlabel("iterations")
            ax.set_ylabel("staleness k")
        fig.colorbar(image, ax=list(row), shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(spec: SweepSpec, aggregates: list[Aggregate], axis: str, fixed: int, path: Path) -> Path:
    """Each metric against ``axis`` (iterations or staleness_k), the other held at ``fixed``; one line per loss."""
    import matplotlib.pyplot as plt

    other = "staleness_k" if axis == "iterations" else "iterations"
    xs = spec.grid.iterations if axis == "iterations" else spec.grid.staleness_k
    keys = list(METRICS)
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(3.6 * cols, 2.8 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, loss in enumerate(spec.grid.losses):
            points = [(x, a) for x in xs for a in aggregates
                      if a.loss == loss and getattr(a, axis) == x and getattr(a, other) == fixed]
            xs_found = [x for x, a in points if a.means[key] is not None]
            means = [a.means[key] for _, a in points if a.means[key] is not None]
            errors = [a.stdevs[key] or 0.0 for _, a in points if a.means[key] is not None]
            ax.errorbar(xs_found, means, yerr=errors, color=f"C{i}", marker="o", markersize=4, capsize=2, label=loss)
        ax.set_title(METRICS[key], fontsize=9)
        ax.set_xlabel("iterations" if axis == "iterations" else "staleness k")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    label = "staleness k" if other == "staleness_k" else "iterations"
    fig.suptitle(f"against {'iterations' if axis == 'iterations' else 'staleness k'} ({label} = {fixed})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean(aggregates: list[Aggregate], loss: str, k: int, iterations: int, key: str) -> float:
    for a in aggregates:
        if (a.loss, a.staleness_k, a.iterations) == (loss, k, iterations) and a.means[key] is not None:
            return a.means[key]
    return math.nan
