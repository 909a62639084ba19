"""Asynchronous against synchronous: the whole pipeline's throughput at each max_staleness (0 = synchronous), in
two placements, against two bounds computed from its halves measured alone in the same session.

- sum-of-work bound, T_gen + T_learn: the halves measured alone with every process free to use every core
  (``shared``), one after the other, as a synchronous pipeline runs them;
- overlap bound, max(T_gen, T_learn): the halves measured alone with generation pinned to one core and the learner
  to another (``pinned``), the CPU stand-in for separate devices; a perfectly overlapped pipeline reaches it.
"""

from __future__ import annotations

from pydantic import BaseModel

from benchmarks.pipeline import Bounds, Parts, PipelineRun, parts, pipeline_run
from benchmarks.report import Table
from benchmarks.session import Session
from benchmarks.settings import PLACEMENTS, Placement, Scale


class AsyncVsSync(BaseModel):
    parts: list[Parts]
    bounds: Bounds
    runs: list[PipelineRun]
    step_over_sum_of_work: list[float]  # per run, in order
    step_over_overlap: list[float]


def planned_runs(scale: Scale) -> set[tuple[int, Placement]]:
    return {(m, p) for p in PLACEMENTS for m in scale.staleness}


def run(session: Session) -> tuple[AsyncVsSync, list[Table]]:
    measured, runs = {}, []
    for placement in PLACEMENTS:  # one placement's measurements together: each needs its own stack
        measured[placement] = parts(session, placement)
        runs += [pipeline_run(session, m, placement) for m in session.scale.staleness]
    shared, pinned = measured["shared"], measured["pinned"]
    bounds = Bounds.of(synchronous=shared, asynchronous=pinned)
    result = AsyncVsSync(
        parts=list(measured.values()),
        bounds=bounds,
        runs=runs,
        step_over_sum_of_work=[r.step_seconds / bounds.sum_of_work for r in runs],
        step_over_overlap=[r.step_seconds / bounds.overlap for r in runs],
    )
    return result, [_bounds_table(measured, bounds), _runs_table(session, result)]


def _bounds_table(measured: dict[Placement, Parts], bounds: Bounds) -> Table:
    table = Table(
        "Pipeline halves alone, seconds per step (median)",
        ["", "shared", "pinned"],
        caption=(
            "T_gen: generate and score one step's groups, all in flight at once, the learner idle. T_learn: one "
            "learner step (Learner.train_on, the stack's learner threads) on such a batch, generation idle. shared: as "
            "the stack starts them; pinned: generation's processes on core 0, the learner on core 1 (taskset)."
        ),
    )
    table.add("T_gen", measured["shared"].generation, measured["pinned"].generation)
    table.add("T_learn", measured["shared"].learner, measured["pinned"].learner)
    table.add("sum-of-work bound T_gen + T_learn", bounds.sum_of_work, "")
    table.add("overlap bound max(T_gen, T_learn)", "", bounds.overlap)
    return table


def _runs_table(session: Session, result: AsyncVsSync) -> Table:
    scale = session.scale
    spec = session.settings.run_spec(session.model_dir, 0)
    table = Table(
        f"Asynchronous vs synchronous: {spec.rollout.prompts_per_step} prompts x {spec.rollout.group_size} "
        f"completions per step, up to {spec.rollout.max_tokens} tokens",
        [
            "placement",
            "max staleness",
            "samples/s",
            "tokens/s",
            "step s",
            "gen busy s",
            "learner busy s",
            "learner wait s",
            "weight sync s",
            "staleness",
            "step / sum bound",
            "step / overlap bound",
        ],
        caption=(
            f"Steady state of runs of {scale.steps} steps: the first {scale.warmup_steps} steps (model load, "
            "DeepSpeed init) and the last max_staleness steps (the queue draining after generation has "
            "finished) are left out. Per-step seconds are means; tokens are completion tokens. gen busy: the "
            "step's generate calls as the rollout worker timed them (mean over the run, including any wait "
            "while generation was paused for a weight push). learner busy: the optimizer step; learner wait: "
            "waiting for the step's groups, reading and decoding them included. staleness: mean versions "
            "between generation and training. Each mode's own bound: the sum-of-work bound for max staleness 0 "
            "(synchronous), which it cannot beat; the overlap bound for the asynchronous modes, what they "
            "reach at best with generation and learner on a core each. Shared rows can come under the "
            "overlap bound: there generation is not confined to one core."
        ),
    )
    for run, over_sum, over_overlap in zip(result.runs, result.step_over_sum_of_work, result.step_over_overlap):
        table.add(
            run.placement,
            run.max_staleness,
            run.samples_per_second,
            run.tokens_per_second,
            run.step_seconds,
            run.generation_busy_seconds,
            run.learner_train_seconds,
            run.learner_wait_seconds,
            run.weight_sync_seconds,
            run.staleness_mean,
            over_sum,
            over_overlap,
        )
    return table
