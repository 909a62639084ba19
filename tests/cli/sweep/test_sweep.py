"""``cfpo sweep``: the grid as runs, its validation at the edge, and a real sweep through the embedded stack that is
interrupted and resumed without rerunning a finished cell."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cfpo.cli.sweep.grid import load_sweep
from cfpo.config import ConfigError
from tests.cli.learner_side import step_line, train
from tests.servers import interruptible, stack_port_offset, stop
from tests.services.control.conftest import TOKEN

CFPO = str(Path(sys.executable).parent / "cfpo")
BASE = {
    "task": {"kind": "arithmetic", "difficulty": [1, 2], "seed": 0},
    "rollout": {"group_size": 4, "prompts_per_step": 4, "max_tokens": 16, "rewards": {"digit_share": 1.0}},
    "learner": {"loss": {"eps": 0.3}, "optimizer": {"lr": 5.0e-3}},
    "evaluation": {"problems": 4},
    "steps": 3,
    "checkpoint_every": 3,
}


def _write(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "probe",
        "model": str(tmp_path / "model"),
        "prepare": "tiny",
        "base": BASE,
        "grid": {"losses": ["cfpo", "grpo"], "staleness_k": [0], "iterations": [1, 4]},
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_combination_is_a_run_with_the_cell_values_over_the_base(tmp_path):
    spec = load_sweep(
        _write(
            tmp_path,
            grid={
                "losses": ["cfpo", "grpo", "dapo"],
                "staleness_k": [0, 2],
                "ratio_references": ["behaviour", "proximal"],
                "iterations": [1, 8],
                "minibatches": [1, 2],
                "seeds": [0, 1],
            },
        )
    )
    cells = spec.cells()
    assert len(cells) == 3 * 2 * 2 * 2 * 2 * 2 and len({c.key for c in cells}) == len(cells)
    cell = next(c for c in cells if c.key == "dapo-proximal-k2-it8-mb2-s1")
    run = spec.run_spec(cell, tmp_path / "model")
    assert (
        run.learner.loss.name,
        run.learner.loss.ratio_reference,
        run.learner.loss.eps,
        run.learner.iterations,
        run.learner.minibatches,
    ) == ("dapo", "proximal", 0.3, 8, 2)
    assert (run.staleness.mode, run.staleness.k, run.seed, run.steps) == ("fixed", 2, 1, 3)
    assert run.rollout.rewards == {"digit_share": 1.0} and run.learner.optimizer.lr == 5.0e-3


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"grid": {"minibatches": [1, 3]}}, "cell cfpo-behaviour-k0-it1-mb3-s0: .*minibatches: 3 does not divide"),
        ({"grid": {"staleness_k": [0, 2]}}, "grid: .*ratio_references: staleness k reaches 2, so name"),
        (
            {"grid": {"staleness_k": [2], "ratio_references": ["proximal", "proximal"]}},
            "grid.ratio_references: .*twice",
        ),
        (
            {"base": {**BASE, "learner": {"loss": {"ratio_reference": "proximal"}}}},
            "base.learner.loss.ratio_reference: the grid sets it",
        ),
        ({"grid": {"iterations": [1, 1]}}, "grid.iterations: .*listed twice"),
        ({"grid": {"losses": ["ppo"]}}, "grid.losses.0"),
        ({"base": {**BASE, "model": "elsewhere"}}, "base.model: give the model once"),
        ({"base": {**BASE, "steps": 0}}, "cell cfpo-behaviour-k0-it1-mb1-s0: steps: "),
        ({"name": "a b"}, "name: "),
    ],
)
def test_a_bad_sweep_is_refused_naming_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, **changes))


def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path):
    result = subprocess.run(
        [CFPO, "sweep", str(_write(tmp_path, grid={"seeds": [0, 0]}))], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "grid.seeds" in result.stdout and "Traceback" not in result.stdout + result.stderr
    result = subprocess.run(
        [CFPO, "sweep", str(_write(tmp_path)), "--api", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "--runs-dir" in result.stdout


def test_a_sweep_prints_a_line_per_step_and_per_cell_when_its_output_is_not_a_terminal(tmp_path, api, registry, worker):
    spec_path = _write(tmp_path, prepare="none", grid={"losses": ["cfpo", "grpo"]})
    runs, log = tmp_path / "runs", tmp_path / "sweep.log"
    argv = [CFPO, "sweep", str(spec_path), "--api", api.url, "--runs-dir", str(runs), "--out", str(tmp_path / "out")]
    with log.open("w") as out:  # as `cfpo sweep ... > sweep.log` would: a file, not a terminal
        sweep = subprocess.Popen(argv, stdout=out, env={**os.environ, "CFPO_API_TOKEN": TOKEN}, cwd=tmp_path)
        try:
            cells = {train(registry, worker, 3, seconds=0.3, runs_dir=runs): cell for cell in ("cfpo", "grpo")}
            assert sweep.wait(120) == 0, log.read_text()
        finally:
            stop(sweep)
    assert len(cells) == 2
    text = log.read_text()
    for loss, ran in (("cfpo", 1), ("grpo", 2)):
        key = f"{loss}-behaviour-k0-it1-mb1-s0"
        steps = [line for line in text.splitlines() if line.startswith(f"{key} step ")]
        assert len(steps) == 3, text
        for number, line in enumerate(steps, start=1):
            assert re.fullmatch(step_line(key, number, 3), line), line
        left = r"; about \d+ s left" if ran < 2 else ""
        assert re.search(rf"cell {key}: succeeded in \d+ s; {ran} of 2 cells run{left}\n", text), text


@pytest.mark.slow
def test_a_sweep_runs_every_cell_resumes_after_an_interruption_and_reports(tmp_path):
    spec_path = _write(tmp_path)
    out = tmp_path / "out"
    argv = [CFPO, "sweep", str(spec_path), "--out", str(out), "--port-offset", str(stack_port_offset())]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=interruptible,
        start_new_session=True,
    )
    try:  # interrupt the first sweep once one cell has finished
        deadline = time.monotonic() + 300
        while not _succeeded(out):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no cell finished"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        stop(first)
    assert "run the same command again to resume" in (tmp_path / "first.log").read_text()
    kept = _succeeded(out)

    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert f"{len(kept)} of 4 cells done" in second.stdout
    assert kept.items() <= _succeeded(out).items()  # finished cells were not run again
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["loss"], r["iterations"]) for r in rows} == {("cfpo", "1"), ("cfpo", "4"), ("grpo", "1"), ("grpo", "4")}
    assert all(r["state"] == "succeeded" and r["ratio_reference"] == "behaviour" for r in rows)
    on_policy = [r for r in rows if r["iterations"] == "1"]  # k = 0, one pass: every ratio is 1, nothing clipped
    assert all(float(r[f"{anchor}_clip_frac_max"]) == 0 for r in on_policy for anchor in ("behaviour", "proximal"))
    assert any(float(r["proximal_ratio_deviation_max"]) > 0.01 for r in rows if r["iterations"] == "4")
    report = (out / "report.md").read_text()
    assert "cfpo sweep" in report and "| cfpo | behaviour | 0 | 4 | 1 | 1 |" in report
    for figure in ("accuracy-and-kl-vs-staleness.png", "heatmaps.png", "vs-iterations.png", "vs-staleness.png"):
        assert (out / figure).stat().st_size > 10_000 and f"]({figure})" in report

    third = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "4 of 4 cells done, 0 to run" in third.stdout


def _succeeded(out: Path) -> dict[str, str]:
    path = out / "cells.json"
    try:
        cells = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:  # read while being written
        return {}
    return {key: cell["run_id"] for key, cell in cells.items() if cell["state"] == "succeeded"}
