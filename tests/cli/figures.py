"""Checks of the figures the commands write: every title whole, none running into another or into a panel."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from cfpo.cli.sweep.report import METRICS, CellResult

TEXT = ("loss", "ratio_reference", "run_id", "state")
INTEGERS = ("staleness_k", "iterations", "minibatches", "seed", "steady_steps", "warm_up_steps")


def title_problems(fig) -> list[str]:
    """What is wrong with the figure's titles as drawn: one cut off by the figure's edge, two overlapping, one
    running into a panel other than its own. Empty when every title reads whole. Closes the figure."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    titles = [(ax, ax.title.get_text(), ax.title.get_window_extent(renderer)) for ax in fig.axes if ax.get_title()]
    if fig._suptitle is not None:  # matplotlib's one handle on it
        titles.append((None, fig._suptitle.get_text(), fig._suptitle.get_window_extent(renderer)))
    problems = [
        f"{text!r} is cut off"
        for _, text, box in titles
        if box.x0 < page.x0 or box.x1 > page.x1 or box.y0 < page.y0 or box.y1 > page.y1
    ]
    problems += [
        f"{a!r} runs into {b!r}"
        for (_, a, box_a), (_, b, box_b) in itertools.combinations(titles, 2)
        if box_a.overlaps(box_b)
    ]
    problems += [
        f"{text!r} runs into another panel"
        for own, text, box in titles
        for ax in fig.axes
        if ax is not own and box.overlaps(ax.get_window_extent(renderer))
    ]
    plt.close(fig)
    return problems


def read_results(path: Path) -> list[CellResult]:
    """A sweep's ``results.csv`` back as the cells it was written from."""
    with path.open(newline="") as f:
        rows = [{key: value or None for key, value in row.items()} for row in csv.DictReader(f)]
    return [
        CellResult(
            **{
                key: value if key in TEXT else _number(value, int if key in INTEGERS else float)
                for key, value in row.items()
                if key not in METRICS
            },
            figures={key: _number(row.get(key), float) for key in METRICS},  # a sweep older than a metric lacks it
        )
        for row in rows
    ]


def _number(value: str | None, kind: type) -> object:
    return value if value is None else kind(value)
