"""``cfpo sweep``: a grid of runs (loss x anchor x fixed staleness k x iterations x minibatches x seed) through the
pipeline.

Every cell is an ordinary run submitted to the control API, either of an embedded stack the sweep starts and stops,
or of a running stack (``--api``, with ``--runs-dir`` where its learner writes). Which cell ran as which run, and how
it ended, is kept in ``cells.json`` in the sweep's directory, so a sweep that was stopped resumes where it was:
finished cells are kept, the others run again from the start. The report is rebuilt from the run directories.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cfpo.cli.progress import Step, follow_steps
from cfpo.clients.control import ControlClient
from cfpo.config import Anchor, LossName, StrictModel, describe_validation_error, load_config
from cfpo.registry import FINAL_STATES
from cfpo.run_spec import RunSpec

CELLS_FILE = "cells.json"


class SweepGrid(StrictModel):
    """The swept values; every combination is one run. Staleness is the ``fixed`` mode's k (see StalenessConfig)."""

    losses: list[LossName] = Field(["cfpo", "grpo"], min_length=1)
    ratio_references: list[Anchor] | None = Field(
        None,
        min_length=1,
        description="trust-region anchors (learner.loss.ratio_reference); required when a k "
        "exceeds 0, as for a run spec; default: behaviour",
    )
    staleness_k: list[int] = Field([0], min_length=1, description="fixed staleness k of every step after warm-up")
    iterations: list[int] = Field([1], min_length=1, description="passes over each rollout batch")
    minibatches: list[int] = Field([1], min_length=1, description="optimizer steps per pass")
    seeds: list[int] = Field([0], min_length=1)

    @field_validator("losses", "ratio_references", "staleness_k", "iterations", "minibatches", "seeds")
    @classmethod
    def _distinct(cls, values: list | None) -> list | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"{values}: a value is listed twice")
        return values

    @model_validator(mode="after")
    def _stale_grids_name_their_anchors(self) -> SweepGrid:
        if self.ratio_references is None and max(self.staleness_k) > 0:
            raise ValueError(
                f"ratio_references: staleness k reaches {max(self.staleness_k)}, so name the trust region's anchors "
                "to sweep: [behaviour], [proximal] or both (see docs/architecture.md, Staleness and the anchor)"
            )
        return self

    @property
    def anchors(self) -> list[Anchor]:
        return self.ratio_references or ["behaviour"]


@dataclass(frozen=True)
class Cell:
    loss: str
    ratio_reference: str
    staleness_k: int
    iterations: int
    minibatches: int
    seed: int

    @property
    def key(self) -> str:
        return (
            f"{self.loss}-{self.ratio_reference}-k{self.staleness_k}-it{self.iterations}-mb{self.minibatches}"
            f"-s{self.seed}"
        )

    def run_spec(self, base: dict[str, Any]) -> RunSpec:
        learner = base.get("learner") or {}
        return RunSpec.model_validate(
            {
                **base,
                "learner": {
                    **learner,
                    "loss": {**(learner.get("loss") or {}), "name": self.loss, "ratio_reference": self.ratio_reference},
                    "iterations": self.iterations,
                    "minibatches": self.minibatches,
                },
                "staleness": {"mode": "fixed", "k": self.staleness_k},
                "seed": self.seed,
            }
        )


class SweepSpec(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    model: Path = Field(description="local model directory every run trains and generation serves")
    prepare: Literal["none", "tiny", "smollm2"] = Field(
        "none", description="build the model at `model` when it is missing: the tiny test model or SmolLM2"
    )
    base: dict[str, Any] = Field(default_factory=dict, description="run spec fields shared by every cell (no model)")
    grid: SweepGrid = SweepGrid()

    @model_validator(mode="after")
    def _every_cell_is_a_valid_run(self) -> SweepSpec:
        """Refuse a grid with any invalid cell before anything runs, naming the cell and the field."""
        if "model" in self.base:
            raise ValueError("base.model: give the model once, at the top level (model:)")
        learner = self.base.get("learner")
        loss = learner.get("loss") if isinstance(learner, dict) else None
        if isinstance(loss, dict) and "ratio_reference" in loss:
            raise ValueError("base.learner.loss.ratio_reference: the grid sets it; list it in grid.ratio_references")
        for cell in self.cells():
            try:
                cell.run_spec({**self.base, "model": str(self.model)})
            except ValidationError as error:
                raise ValueError(f"cell {cell.key}: {describe_validation_error(error)}") from None
        return self

    def cells(self) -> list[Cell]:
        g = self.grid
        return [
            Cell(*values)
            for values in itertools.product(g.losses, g.anchors, g.staleness_k, g.iterations, g.minibatches, g.seeds)
        ]

    def run_spec(self, cell: Cell, model: Path) -> RunSpec:
        return cell.run_spec({**self.base, "model": str(model)})


def load_sweep(path: Path) -> SweepSpec:
    """The sweep spec in ``path``; a relative ``model`` is relative to the current directory, as for run specs."""
    return load_config(SweepSpec, path)


@dataclass
class CellRecord:
    run_id: str
    state: str
    reason: str | None = None
    seconds: float | None = None


class CellBook:
    """``cells.json``: cell key -> the run that ran it and how it ended; written after every change."""

    def __init__(self, directory: Path):
        self.path = directory / CELLS_FILE
        raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.records = {key: CellRecord(**value) for key, value in raw.items()}

    def done(self, cell: Cell) -> bool:
        record = self.records.get(cell.key)
        return record is not None and record.state == "succeeded"

    def set(self, cell: Cell, record: CellRecord) -> None:
        self.records[cell.key] = record
        partial = self.path.with_suffix(".tmp")  # a sweep killed mid-write must not lose the book
        partial.write_text(json.dumps({k: vars(v) for k, v in self.records.items()}, indent=2) + "\n")
        partial.replace(self.path)


def pending_cells(spec: SweepSpec, book: CellBook) -> list[Cell]:
    return [cell for cell in spec.cells() if not book.done(cell)]


@dataclass
class SweepRunner:
    spec: SweepSpec
    model: Path
    directory: Path
    api: ControlClient
    poll_seconds: float = 2.0

    def run(
        self,
        on_progress: Callable[[Cell, dict, list[Step]], None] = lambda cell, run, steps: None,
        on_cell: Callable[[Cell, CellRecord], None] = lambda cell, record: None,
    ) -> CellBook:
        """Run every cell not yet succeeded, one at a time (a learner worker trains one run at a time anyway):
        ``on_progress`` is called with the run's record at every poll and the steps recorded since the last,
        ``on_cell`` when its run ends."""
        book = CellBook(self.directory)
        self._cancel_leftovers(book)
        for cell in pending_cells(self.spec, book):
            started = time.monotonic()
            submitted = self.api.submit(
                self.spec.run_spec(cell, self.model).model_dump(mode="json"), name=f"{self.spec.name}/{cell.key}"
            )
            book.set(cell, CellRecord(submitted["id"], submitted["state"]))
            for run, steps in follow_steps(self.api, submitted["id"], self.poll_seconds, label=cell.key):
                on_progress(cell, run, steps)
            record = CellRecord(run["id"], run["state"], run["reason"], round(time.monotonic() - started, 1))
            book.set(cell, record)
            on_cell(cell, record)
        return book

    def _cancel_leftovers(self, book: CellBook) -> None:
        """A cell whose run was queued or running when an earlier sweep stopped runs again from the start; cancel
        the old run if the API still has it unfinished, so it does not hold the workers."""
        unfinished = {
            run["id"]
            for state in ("queued", "running")
            for run in self.api.call("GET", "/v1/runs", params={"state": state})["runs"]
        }
        for key, record in book.records.items():
            if record.state not in FINAL_STATES and record.run_id in unfinished:
                self.api.call(
                    "POST",
                    f"/v1/runs/{record.run_id}/cancel",
                    json={"reason": f"sweep {self.spec.name} resumed: cell {key} runs again"},
                )
