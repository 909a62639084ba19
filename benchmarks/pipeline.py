"""Measurements of the pipeline that several benchmarks share.

- ``pipeline_run``: a run submitted through the control API of the session's stack (the product path), its
  throughput and time breakdown read from the learner's ``metrics.jsonl`` and the rollout worker's ``/metrics``.
- ``parts``: its two halves alone, in one placement: one step's rollout (what a rollout worker does: generate
  and score ``prompts_per_step`` groups, all in flight at once) with the learner idle, and one learner step with
  generation idle.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, computed_field

from benchmarks.learner_step import LearnerStepConfig
from benchmarks.placement import LEARNER_CORES
from benchmarks.session import BenchError, Session
from benchmarks.settings import Placement
from cfpo.cli.progress import follow_steps
from cfpo.clients.control import ControlApiError, ControlClient
from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from cfpo.rollout_group import RolloutGroup
from cfpo.run_spec import RunSpec
from cfpo.tasks import batches, load_task, render_prompt
from services.rollout.group import decoded, sample_completions, score_answers, weighed_samples

POLL_SECONDS = 0.5
BENCH_RUN_ID = "bench"
_prompt_index = itertools.count()  # each rollout step alone draws the next prompts


class PipelineRun(BaseModel):
    """One run's steady state: steps ``first_step``..``last_step`` (the warm-up steps before, and the last
    max_staleness steps, when the queue drains after generation has finished, are left out). Per-step times are
    means over those steps."""

    run_id: str
    max_staleness: int
    placement: Placement
    first_step: int
    last_step: int
    seconds: float
    samples_per_second: float
    tokens_per_second: float  # completion tokens
    step_seconds: float  # learner wall time per step: end of one step's record to the next's
    generation_busy_seconds: float  # the step's groups' generate calls, as the rollout worker timed them
    learner_train_seconds: float  # the optimizer step (forward, backward, update)
    learner_wait_seconds: float  # waiting for the step's groups, reading and decoding them
    weight_sync_seconds: float  # pushing the new weights to generation
    learner_other_seconds: float  # the rest: recording metrics, queue depth, bookkeeping
    staleness_mean: float
    staleness_max: float

    @computed_field
    @property
    def measured_steps(self) -> int:
        return self.last_step - self.first_step + 1


class Parts(BaseModel):
    """Each half of the pipeline alone in one placement (medians of the repetitions)."""

    placement: Placement
    rollout_step_seconds: list[float]  # generate + score one step's groups, the learner idle
    learner_step_seconds: list[float]  # Learner.train_on on one step's batch, generation idle
    learner_threads: int
    learner_cores: list[int]

    @computed_field
    @property
    def generation(self) -> float:
        return statistics.median(self.rollout_step_seconds)

    @computed_field
    @property
    def learner(self) -> float:
        return statistics.median(self.learner_step_seconds)


class Bounds(BaseModel):
    """The fastest step each mode could make: synchronous T_gen + T_learn, asynchronous max(T_gen, T_learn)."""

    sum_of_work: float
    overlap: float

    @classmethod
    def of(cls, synchronous: Parts, asynchronous: Parts) -> Bounds:
        """From halves measured alone: the sum of the synchronous placement's, the larger of the asynchronous's."""
        return cls(
            sum_of_work=synchronous.generation + synchronous.learner,
            overlap=max(asynchronous.generation, asynchronous.learner),
        )


def pipeline_run(session: Session, max_staleness: int, placement: Placement) -> PipelineRun:
    return session.measured(
        ("pipeline", max_staleness, placement), lambda: _run_pipeline(session, max_staleness, placement)
    )


def parts(session: Session, placement: Placement) -> Parts:
    return session.measured(("parts", placement), lambda: _measure_parts(session, placement))


def step_groups(session: Session) -> list[RolloutGroup]:
    """One step's groups from the generation service, the batch every learner-alone measurement trains on."""
    return session.measured("step groups", lambda: rollout_step(session)[1])


def learner_alone(session: Session, threads: int, cores: frozenset[int] | None) -> list[float]:
    """Seconds of ``repeats`` learner steps on ``step_groups``, in a child process on ``cores`` with ``threads``."""

    def measure() -> list[float]:
        samples = session.work / "children" / "step-samples.jsonl"
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(s.model_dump_json() + "\n" for g in step_groups(session) for s in g.samples))
        config = LearnerStepConfig(spec=_spec(session, 0), samples=samples, repeats=session.scale.repeats)
        where = f"cores {sorted(cores)}" if cores else "any core"
        with session.activity(f"one learner step alone ({threads} thread(s), {where}) x{session.scale.repeats}"):
            return session.child("learner_step", config, cores=cores, threads=threads)["seconds"]

    return session.measured(("learner alone", threads, cores), measure)


def rollout_step(session: Session) -> tuple[float, list[RolloutGroup]]:
    """Generate and score one step's groups all at once, as a rollout worker's lanes do (without its stream append
    and admission check); returns the seconds it took and the groups."""
    spec = _spec(session, 0)
    tokenizer, problems = _task(session, spec)
    first = next(_prompt_index) * spec.rollout.prompts_per_step
    drawn = next(batches(problems, spec.rollout.prompts_per_step, seed=spec.seed, start_index=first))
    prompts = [render_prompt(tokenizer, problem.prompt) for problem in drawn]
    with (
        closing(GenerationClient(session.stack.generation_url)) as generation,
        closing(RewardClient(session.stack.reward_url)) as rewards,
    ):

        def group(slot: int) -> RolloutGroup:
            problem, prompt = drawn[slot], prompts[slot]
            completions = sample_completions(
                generation, spec, prompt.token_ids, seed=first + slot, eos_token_id=tokenizer.eos_token_id
            )
            with decoding:
                texts = decoded(tokenizer, completions)
            samples = weighed_samples(spec, prompt.token_ids, completions, score_answers(rewards, spec, problem, texts))
            return RolloutGroup(run_id=BENCH_RUN_ID, prompt_id=problem.id, slot=slot, samples=samples)

        decoding = threading.Lock()  # one tokenizer, as in the worker
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(drawn)) as pool:
            groups = list(pool.map(group, range(len(drawn))))
        seconds = time.perf_counter() - started
    return seconds, groups


def _spec(session: Session, max_staleness: int) -> RunSpec:
    return session.settings.run_spec(session.model_dir, max_staleness)


def _task(session: Session, spec: RunSpec):
    def load():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec.model), load_task(spec.task, "train")

    return session.measured("task", load)


def _measure_parts(session: Session, placement: Placement) -> Parts:
    repeats = session.scale.repeats
    cores = LEARNER_CORES if placement == "pinned" else None
    with session.placed(placement):
        threads = session.learner_threads
        with session.activity(f"{placement}: one rollout step alone x{repeats}"):
            rollout_step(session)  # untimed warm-up
            rollout_seconds = [rollout_step(session)[0] for _ in range(repeats)]
        learner_seconds = learner_alone(session, threads, cores)
    return Parts(
        placement=placement,
        rollout_step_seconds=rollout_seconds,
        learner_step_seconds=learner_seconds,
        learner_threads=threads,
        learner_cores=sorted(cores or os.sched_getaffinity(0)),
    )


def _run_pipeline(session: Session, max_staleness: int, placement: Placement) -> PipelineRun:
    spec = _spec(session, max_staleness)
    stack = session.stack
    name = f"bench-{placement}-m{max_staleness}"
    with (
        session.placed(placement),
        session.activity(f"{placement}: pipeline run, max_staleness {max_staleness}", total=spec.steps) as update,
    ):
        run_id = _run_to_its_end(session, spec, name, update)
    run_dir = stack.settings.runs_dir / run_id
    rows = _read_rows(run_dir / "metrics.jsonl")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a real model's is GBs; only the metrics are needed
    generate_seconds = _mean_stage_seconds(
        f"http://127.0.0.1:{stack.settings.rollout_metrics_port}/metrics", run_id, "generate"
    )
    session.run_finished()
    return summarise(rows, spec, run_id, placement, session.scale.warmup_steps, generate_seconds)


def _run_to_its_end(session: Session, spec: RunSpec, name: str, update) -> str:
    """Submit a run to the stack's control API and follow it until it succeeds; returns its id."""
    deadline = time.monotonic() + 600 + 120 * spec.steps  # the learner fails a run whose data stops sooner
    with closing(ControlClient(session.stack.control_url)) as api:  # the stack's API inherits this environment
        try:
            run_id = api.submit(spec.model_dump(mode="json"), name=name)["id"]
            for run, steps in follow_steps(api, run_id, POLL_SECONDS, label=name):
                update(completed=run["steps_done"])
                session.show_steps(update, steps)
                session.stack.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"run {run_id}: {run['steps_done']} of {spec.steps} steps after the deadline")
        except ControlApiError as error:
            raise BenchError(f"control API: {error}") from None
    if run["state"] != "succeeded":
        raise BenchError(f"run {run_id} {run['state']}: {run['reason']} (logs: {session.stack.logs})")
    return run_id


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mean_stage_seconds(metrics_url: str, run_id: str, stage: str) -> float:
    """Mean seconds per group of a rollout stage over the whole run, from the rollout worker's histogram."""
    totals = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        if family.name == "cfpo_rollout_stage_seconds":
            for sample in family.samples:
                if sample.labels.get("run") == run_id and sample.labels.get("stage") == stage:
                    totals[sample.name.rpartition("_")[2]] = sample.value
    if not totals.get("count"):
        raise BenchError(f"rollout metrics at {metrics_url} have no {stage} timings for run {run_id}")
    return totals["sum"] / totals["count"]


def summarise(
    rows: list[dict],
    spec: RunSpec,
    run_id: str,
    placement: Placement,
    warmup_steps: int,
    generate_seconds_per_group: float,
) -> PipelineRun:
    """Throughput and time breakdown of the steady-state steps (see ``PipelineRun``)."""
    if spec.versions_per_step != 1:
        raise BenchError("the benchmarks read one metrics row per step: iterations x minibatches must be 1")
    by_step = {row["step"]: row for row in rows}
    if sorted(by_step) != list(range(spec.steps)):
        raise BenchError(f"run {run_id}: metrics rows for steps {sorted(by_step)}, expected 0..{spec.steps - 1}")
    first, last = warmup_steps, spec.steps - 1 - spec.staleness.max_staleness
    window = [by_step[step] for step in range(first, last + 1)]
    walls = [by_step[step]["time"] - by_step[step - 1]["time"] for step in range(first, last + 1)]
    seconds = sum(walls)
    batch = spec.learner.batch_size
    train, wait, sync = (
        statistics.fmean(row[key] for row in window)
        for key in ("step_seconds", "data_wait_seconds", "weight_sync_seconds")
    )
    return PipelineRun(
        run_id=run_id,
        max_staleness=spec.staleness.max_staleness,
        placement=placement,
        first_step=first,
        last_step=last,
        seconds=seconds,
        samples_per_second=len(window) * batch / seconds,
        tokens_per_second=sum(row["response_length"] * batch for row in window) / seconds,
        step_seconds=seconds / len(window),
        generation_busy_seconds=generate_seconds_per_group * spec.rollout.prompts_per_step,
        learner_train_seconds=train,
        learner_wait_seconds=wait,
        weight_sync_seconds=sync,
        learner_other_seconds=seconds / len(window) - train - wait - sync,
        staleness_mean=statistics.fmean(row["staleness_mean"] for row in window),
        staleness_max=max(row["staleness_max"] for row in window),
    )
