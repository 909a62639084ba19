"""A sweep's report from hand-made run directories: one row and one line per loss x anchor, both families."""

import csv
import json

import pytest

from cfpo.cli.sweep.grid import CellBook, CellRecord, SweepSpec, load_sweep
from cfpo.cli.sweep.report import HEADLINE_PNG, aggregate, collect, figures, write
from tests import REPO_ROOT
from tests.cli.figures import read_results, title_problems


def _spec(tmp_path) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": "anchors",
            "model": str(tmp_path / "model"),
            "base": {"rollout": {"group_size": 2, "prompts_per_step": 2}, "steps": 4},
            "grid": {"losses": ["cfpo", "grpo"], "ratio_references": ["behaviour", "proximal"], "staleness_k": [0, 2]},
        }
    )


def _run(directory, kl_behaviour: float, kl_proximal: float, accuracy: float) -> None:
    """Four steps, the first logged as warm-up with a KL ten times larger (the summary must leave it out)."""
    directory.mkdir(parents=True)
    rows = [
        {
            "step": s,
            "warm_up": s == 0,
            "reward_mean": 0.5,
            "behaviour_kl_k3": kl_behaviour * (10 if s == 0 else 1),
            "proximal_kl_k3": kl_proximal,
            "behaviour_clip_frac": 0.1,
            "proximal_clip_frac": 0.0,
        }
        for s in range(4)
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluations = [{"step": 0, "accuracy": 0.1}, {"step": 4, "accuracy": accuracy}]
    (directory / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations))


def test_every_loss_and_anchor_has_its_own_row_figures_and_line(tmp_path):
    spec, out = _spec(tmp_path), tmp_path / "sweep"
    book = CellBook(out.parent)
    for i, cell in enumerate(spec.cells()):
        _run(out / "runs" / f"run-{i}", kl_behaviour=0.01 * (i + 1), kl_proximal=0.001 * (i + 1), accuracy=0.05 * i)
        book.set(cell, CellRecord(f"run-{i}", "succeeded", seconds=1.0))
    results = collect(spec, book, out / "runs")
    assert [(r.loss, r.ratio_reference, r.staleness_k) for r in results][:3] == [
        ("cfpo", "behaviour", 0),
        ("cfpo", "behaviour", 2),
        ("cfpo", "proximal", 0),
    ]
    third = results[2]
    assert third.figures["behaviour_kl_k3_max"] == 0.03 and third.figures["proximal_kl_k3_max"] == 0.003
    assert (third.steady_steps, third.warm_up_steps, third.figures["heldout_after"]) == (3, 1, 0.1)
    assert len(aggregate(results)) == 8  # nothing averaged across anchors

    written = write(spec, results, out, "cfpo sweep anchors.yaml")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["loss"], r["ratio_reference"]) for r in rows} == {
        (loss, anchor) for loss in ("cfpo", "grpo") for anchor in ("behaviour", "proximal")
    }
    assert float(rows[2]["proximal_kl_k3_max"]) == 0.003
    report = (out / "report.md").read_text()
    assert "| grpo | proximal | 2 | 1 | 1 | 1 | 3 + 1 |" in report and "KL k3 max vs proximal" in report
    headline = out / HEADLINE_PNG
    assert headline in written and headline.stat().st_size > 10_000 and f"]({HEADLINE_PNG})" in report


@pytest.mark.parametrize("name", ["sweep-tiny", "sweep-smollm2"])
def test_every_title_of_the_committed_sweeps_figures_reads_whole(name):
    """Replotted from their results.csv: a 3 x 3 and a 2 x 2 grid of staleness k x iterations."""
    spec = load_sweep(REPO_ROOT / "configs" / f"{name}.yaml")
    made = figures(spec, aggregate(read_results(REPO_ROOT / "docs" / "results" / name / "results.csv")))
    assert len(made) == 4
    for file, figure in made.items():
        assert title_problems(figure) == [], file


def test_every_title_of_a_one_column_sweep_reads_whole(tmp_path):
    """One number of iterations: the headline figure is a single column, its titles the narrowest they get."""
    spec, out = _spec(tmp_path), tmp_path / "sweep"
    book = CellBook(out.parent)
    for i, cell in enumerate(spec.cells()):
        _run(out / "runs" / f"run-{i}", kl_behaviour=0.01, kl_proximal=0.001, accuracy=0.5)
        book.set(cell, CellRecord(f"run-{i}", "succeeded", seconds=1.0))
    for file, figure in figures(spec, aggregate(collect(spec, book, out / "runs"))).items():
        assert title_problems(figure) == [], file
