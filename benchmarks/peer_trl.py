"""The pipeline beside a peer, TRL's ``GRPOTrainer``, in one session on one machine: the same model, task, prompts
(in the same order), prompts per step, G, completion length, learning rate and sampling temperature.

Completions per second of each, whole system, and each pipeline mode's step against its bound from the halves
measured alone (shared placement: each half on every core); then the learner step alone beside TRL's training step
alone, both on one step's batch with every core of the machine, to show where the time goes. TRL runs
synchronously (generate, then train) with transformers' ``generate``, its own GRPO loss (``loss_type="grpo"``, the
same eps) and fp32 without gradient checkpointing, as the pipeline's learner; the pipeline runs CFPO, which costs
the same per token.
"""

from __future__ import annotations

import os
import statistics

from pydantic import BaseModel

from benchmarks.pipeline import Bounds, Parts, PipelineRun, learner_alone, parts, pipeline_run
from benchmarks.report import Table
from benchmarks.session import Session
from benchmarks.settings import PEER_STALENESS, Placement, Scale
from benchmarks.trl_grpo import PeerPrompt, TrlConfig
from cfpo.tasks import batches, load_task, render_prompt


class TrlRun(BaseModel):
    step_seconds: list[float]
    generation_seconds: list[float]  # generation and scoring within each step
    completion_tokens: list[float]  # mean completion length of each step
    train_step_seconds: list[float]  # the training step alone, on a prepared batch
    threads: int


class PeerComparison(BaseModel):
    completions_per_step: int
    pipeline: list[PipelineRun]
    parts: Parts  # each half alone, shared placement
    bounds: Bounds  # from parts: on shared cores the overlap bound is out of reach (both halves use every core)
    trl: TrlRun
    learner_step_seconds: list[float]  # the pipeline's learner step alone, with the same threads as TRL
    threads: int


def planned_runs(scale: Scale) -> set[tuple[int, Placement]]:
    return {(m, "shared") for m in PEER_STALENESS}


def run(session: Session) -> tuple[PeerComparison, list[Table]]:
    spec = session.settings.run_spec(session.model_dir, 0)
    threads = len(os.sched_getaffinity(0))
    pipeline = [pipeline_run(session, m, "shared") for m in PEER_STALENESS]
    halves = parts(session, "shared")
    learner = learner_alone(session, threads, None)
    with session.activity(
        f"TRL GRPOTrainer: {session.scale.trl_steps} steps after one, then its training step "
        f"alone x{session.scale.repeats}"
    ):
        trl = TrlRun(**session.child("trl_grpo", _trl_config(session), threads=threads))
    bounds = Bounds.of(synchronous=halves, asynchronous=halves)
    result = PeerComparison(
        completions_per_step=spec.learner.batch_size,
        pipeline=pipeline,
        parts=halves,
        bounds=bounds,
        trl=trl,
        learner_step_seconds=learner,
        threads=threads,
    )
    return result, [_throughput_table(session, result), _step_table(result)]


def _trl_config(session: Session) -> TrlConfig:
    from transformers import AutoTokenizer

    from services.reward.settings import DEFAULT_TASKS

    spec = session.settings.run_spec(session.model_dir, 0)
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    per_step = spec.rollout.prompts_per_step
    problems = next(batches(load_task(spec.task, "train"), per_step * (session.scale.trl_steps + 1), seed=spec.seed))
    return TrlConfig(
        model=spec.model,
        prompts_per_step=per_step,
        group_size=spec.rollout.group_size,
        micro_batch_size=spec.learner.micro_batch_size or spec.learner.minibatch_size,
        prompts=[
            PeerPrompt(
                prompt=render_prompt(tokenizer, p.prompt).text,
                question=p.prompt,
                reference=p.reference,
                metadata=p.metadata,
            )
            for p in problems
        ],
        max_tokens=spec.rollout.max_tokens,
        learning_rate=spec.learner.optimizer.lr,
        temperature=spec.learner.temperature,
        epsilon=spec.learner.loss.eps,
        reward_weights=spec.rollout.rewards or DEFAULT_TASKS[problems[0].task],
        steps=session.scale.trl_steps,
        repeats=session.scale.repeats,
        output_dir=session.work / "trl",
        seed=spec.seed,
    )


def _throughput_table(session: Session, result: PeerComparison) -> Table:
    spec = session.settings.run_spec(session.model_dir, 0)
    trl_step = statistics.fmean(result.trl.step_seconds)
    trl_rate = result.completions_per_step / trl_step
    table = Table(
        f"The pipeline beside TRL GRPOTrainer ({session.settings.shape} shape): {spec.rollout.prompts_per_step} "
        f"prompts x {spec.rollout.group_size} completions per step, up to {spec.rollout.max_tokens} tokens, "
        f"lr {spec.learner.optimizer.lr:g}",
        [
            "system",
            "completions/s",
            "ratio to TRL",
            "completion tokens",
            "step s",
            "generation s/step",
            "training s/step",
            "step / own bound",
            "steps measured",
        ],
        caption=(
            "Pipeline: steady state of the shared-placement runs (as in the async-vs-sync table); generation "
            "is the rollout worker's generate calls (summed over groups in flight together), training the "
            "learner's optimizer step. Own bound, from the halves alone on every core (T_gen "
            f"{result.parts.generation:.3g} s, T_learn {result.parts.learner:.3g} s): synchronous T_gen + "
            "T_learn; asynchronous max(T_gen, T_learn), which two halves sharing the same cores cannot reach. "
            f"TRL: mean of its steps after the first, {result.trl.threads} threads; generation is its "
            "generate-and-score phase, training the rest of the step. completion tokens: mean completion "
            "length."
        ),
    )
    for run in result.pipeline:
        synchronous = run.max_staleness == 0
        bound = result.bounds.sum_of_work if synchronous else result.bounds.overlap
        table.add(
            f"cfpo pipeline, max_staleness {run.max_staleness} ({'synchronous' if synchronous else 'asynchronous'})",
            run.samples_per_second,
            run.samples_per_second / trl_rate,
            run.tokens_per_second / run.samples_per_second,
            run.step_seconds,
            run.generation_busy_seconds,
            run.learner_train_seconds,
            run.step_seconds / bound,
            run.measured_steps,
        )
    generation = statistics.fmean(result.trl.generation_seconds)
    table.add(
        "TRL GRPOTrainer (synchronous, transformers generate)",
        trl_rate,
        1.0,
        statistics.fmean(result.trl.completion_tokens),
        trl_step,
        generation,
        trl_step - generation,
        "",
        len(result.trl.step_seconds),
    )
    return table


def _step_table(result: PeerComparison) -> Table:
    ours, theirs = statistics.median(result.learner_step_seconds), statistics.median(result.trl.train_step_seconds)
    table = Table(
        f"One training step alone on {result.completions_per_step} completions, {result.threads} threads",
        ["learner", "seconds (median)", "completions/s", "relative to TRL"],
        caption=(
            "cfpo: Learner.train_on (DeepSpeed engine, ZeRO stage 0, CFPO loss) on a batch the "
            "generation service sampled. TRL: compute_loss, backward, gradient clipping and "
            "optimizer step on the last batch TRL prepared. Nothing else running."
        ),
    )
    table.add("cfpo learner (DeepSpeed)", ours, result.completions_per_step / ours, ours / theirs)
    table.add("TRL GRPOTrainer", theirs, result.completions_per_step / theirs, 1.0)
    return table
