"""One run trained to its end: consume its rollout steps from Redis, train, and keep generation up to date.

Per step: take the step's groups (slot order), train ``iterations x minibatches`` optimizer steps, push weights
to generation every ``sync_every`` versions, record every metric (JSONL in the run directory and Prometheus).
Stream entries are acknowledged only when a checkpoint holds their effect, so a learner killed at any point
and restarted with ``resume`` replays exactly the steps the checkpoint lacks: none lost, none applied twice.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from cfpo.metrics import (
    LEARNER_BUCKET_GAUGES,
    LEARNER_GAUGES,
    LEARNER_LAG_BUCKET_GAUGES,
    LEARNER_STALENESS,
    LEARNER_STEPS,
    LEARNER_WEIGHT_SYNC_SECONDS,
    PrometheusRecorder,
    split_bucket_key,
)
from cfpo.queue import RolloutQueue
from cfpo.rollout_group import RolloutGroup
from cfpo.run_spec import RunSpec
from cfpo.staleness import groups_needed_before_serving, is_warm_up, within_bound
from trainer.assembler import StepAssembler
from trainer.held_out import HeldOutEvaluator
from trainer.learner import Learner, StepResult
from trainer.weight_sync import WeightSync
from trainer.weight_sync.file import FileWeightSync, StagedWeights

log = logging.getLogger("cfpo.learner")
CONSUMER = "learner"


class RunControl(Protocol):
    """What a run registry asks of the learner between steps (absent for a run started by hand)."""

    def record(self, step: int, version: int, metrics: dict) -> None: ...

    def stop_reason(self) -> str | None: ...


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def applied(self) -> Path:
        return self.root / "applied.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def evaluations(self) -> Path:
        return self.root / "eval.jsonl"

    @property
    def status(self) -> Path:
        return self.root / "status.json"


class TrainingRun:
    def __init__(
        self,
        spec: RunSpec,
        run_id: str,
        run_dir: Path,
        queue: RolloutQueue,
        generation: GenerationClient,
        recorder: PrometheusRecorder,
        *,
        data_timeout: float = 600.0,
        control: RunControl | None = None,
        rewards: RewardClient | None = None,
        weights_dir: Path | None = None,
    ):
        self.spec, self.run_id, self.paths, self.queue = spec, run_id, RunPaths(run_dir), queue
        self.control = control
        self.generation, self.recorder, self.data_timeout = generation, recorder, data_timeout
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.labels = {"run": run_id, "loss": spec.learner.loss.name}
        self.learner = Learner(spec.model, spec.learner)
        self.weight_sync: WeightSync = FileWeightSync(
            generation, self.learner.engine.module, StagedWeights(weights_dir or self.paths.weights, run_id)
        )
        self.assembler: StepAssembler | None = None
        self.last_sync_seconds = 0.0
        self.served_version: int | None = None
        # Without a reward service (a run started by hand with none) there is nothing to score held-out answers.
        self.evaluator = (
            HeldOutEvaluator(spec, generation, rewards, self.paths.evaluations, recorder, self.labels)
            if rewards is not None
            else None
        )

    def train(self, resume: bool = False) -> Literal["succeeded", "cancelled"]:
        """Train every remaining step; stops early (``cancelled``) when the run's control says so."""
        try:
            return self._train_remaining_steps(resume)
        finally:
            self.weight_sync.close()

    def _train_remaining_steps(self, resume: bool) -> Literal["succeeded", "cancelled"]:
        start_step = self._restore() if resume else 0
        self._truncate_logs(start_step)
        self.assembler = StepAssembler(self.queue, CONSUMER, self.spec.rollout.prompts_per_step, start_step)
        recovered = self.assembler.recover()
        log.info("starting at step %d, version %d (%d entries recovered)", start_step, self.learner.version, recovered)
        self._push(self.learner.version)  # generation must serve this learner's weights, whatever it served before
        self._evaluate_if_due(start_step)
        unacknowledged: list[str] = []
        for step in range(start_step, self.spec.steps):
            reason = self.control.stop_reason() if self.control else None
            if reason:
                log.info("run %s stops before step %d: %s", self.run_id, step, reason)
                self._checkpoint(step, unacknowledged)
                return "cancelled"
            waiting = time.perf_counter()
            entries = self.assembler.take(step, self.data_timeout)
            data_wait_seconds = time.perf_counter() - waiting
            groups = [entry.group for entry in entries]
            results = []
            for result in self.learner.optimizer_steps([s for g in groups for s in g.samples]):
                results.append(result)
                self.recorder.inc(LEARNER_STEPS, 1.0, **self.labels)
                if result.version % self.spec.sync_every == 0:
                    self._wait_until_servable(result.version)
                    self._push(result.version)
            self._record(step, groups, results, data_wait_seconds)
            self._append(
                self.paths.applied, {"step": step, "slots": [g.slot for g in groups], "ids": [e.id for e in entries]}
            )
            unacknowledged += [entry.id for entry in entries]
            if (step + 1) % self.spec.checkpoint_every == 0 or step + 1 == self.spec.steps:
                self._checkpoint(step + 1, unacknowledged)
                unacknowledged = []
            self._evaluate_if_due(step + 1)
        if self.served_version != self.learner.version:
            self._push(self.learner.version)  # generation ends on the final policy (evaluations read it there)
        self.paths.status.write_text(
            json.dumps({"state": "succeeded", "steps": self.spec.steps, "version": self.learner.version})
        )
        log.info("run %s finished: %d steps, version %d", self.run_id, self.spec.steps, self.learner.version)
        return "succeeded"

    def _checkpoint(self, next_step: int, unacknowledged: list[str]) -> None:
        state = {"step": next_step, "stream_ids": unacknowledged, "torch_rng": torch.get_rng_state()}
        self.learner.save_checkpoint(self.paths.checkpoints, state)
        self.queue.ack(unacknowledged)  # only now is their effect safe from a crash

    def _restore(self) -> int:
        if not (self.paths.checkpoints / "latest").exists():
            log.info("no checkpoint in %s: starting from the beginning", self.paths.checkpoints)
            return 0
        state = self.learner.load_checkpoint(self.paths.checkpoints)
        torch.set_rng_state(state["torch_rng"])
        # A crash between saving and acknowledging leaves these pending; they are in the checkpoint already.
        self.queue.ack(state["stream_ids"])
        return int(state["step"])

    def _truncate_logs(self, start_step: int) -> None:
        """Drop log lines of steps the checkpoint does not hold: they are replayed, and logged again."""
        for path in (self.paths.metrics, self.paths.applied, self.paths.evaluations):
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < start_step]
                path.write_text("".join(f"{line}\n" for line in kept))

    def _wait_until_servable(self, version: int) -> None:
        """Under a fixed staleness, generation may serve ``version`` only once the groups that must come from
        older versions are in the queue."""
        needed = groups_needed_before_serving(self.spec, version)
        if needed:
            assert self.assembler is not None, "set by _train_remaining_steps, which calls this"
            self.assembler.wait_for_slots_below(needed, self.data_timeout)

    def _evaluate_if_due(self, completed_steps: int) -> None:
        if self.evaluator is None or not self.evaluator.due(completed_steps):
            return
        if self.served_version != self.learner.version:
            self._push(self.learner.version)
        self.evaluator.run(completed_steps, self.learner.version)

    def _push(self, version: int) -> None:
        update = self.weight_sync.push(version, run=self.run_id)
        self.queue.publish_version(version)
        self.served_version = version
        self.last_sync_seconds = update.push_seconds
        self.recorder.observe(LEARNER_WEIGHT_SYNC_SECONDS, update.push_seconds, run=self.run_id)

    def _record(
        self, step: int, groups: list[RolloutGroup], results: list[StepResult], data_wait_seconds: float
    ) -> None:
        rewards = [r for g in groups for r in g.rewards]
        lengths = [len(s.completion_ids) for g in groups for s in g.samples]
        consumed_version = results[0].version - 1  # the version before the step's first update
        staleness = [consumed_version - g.min_version for g in groups]
        depth = self.queue.depth()
        shared = {
            "reward_mean": statistics.fmean(rewards),
            "reward_std": statistics.pstdev(rewards),
            "response_length": statistics.fmean(lengths),
            "queue_unread": depth.unread,
            "queue_pending": depth.pending,
            "dead_letters": self.queue.dead_letter_count(),
            "weight_sync_seconds": self.last_sync_seconds,
            "data_wait_seconds": data_wait_seconds,
            "warm_up": is_warm_up(self.spec, step),
            "bound_violations": sum(not within_bound(self.spec, g.slot, g.min_version, g.max_version) for g in groups),
            "zero_variance_discarded": sum(g.zero_variance_discarded for g in groups),
        }
        for value in staleness:
            self.recorder.observe(LEARNER_STALENESS, value, **self.labels)
        for result in results:
            row = {
                "step": step,
                "version": result.version,
                "iteration": result.iteration,
                "minibatch": result.minibatch,
                "time": time.time(),
                **shared,
                **result.metrics,
                "tokens_per_second": result.metrics["tokens"] / max(result.metrics["step_seconds"], 1e-9),
                "policy_version": result.version,
            }
            self._append(self.paths.metrics, row)
            self._export(row)
        if self.control:
            self.control.record(step, results[-1].version, row)

    def _export(self, row: dict) -> None:
        for key, metric in LEARNER_GAUGES.items():
            if key in row:
                self.recorder.set(metric, float(row[key]), **self.labels)
        gauges = {"staleness": LEARNER_BUCKET_GAUGES, "lag": LEARNER_LAG_BUCKET_GAUGES}
        for name, value in row.items():
            if (parts := split_bucket_key(name)) and parts[0] in gauges[parts[1]]:
                key, age, bucket = parts
                self.recorder.set(gauges[age][key], value, **{f"{age}_bucket": bucket}, **self.labels)

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
