"""A run's control plane, as the learner's ranks see it: rank 0's talks to Redis, generation and the registry and
records every metric; the other ranks' receive rank 0's decisions (the step's groups, whether to stop, whether to
evaluate) and do nothing else. ``TrainingRun`` runs the same loop on every rank against one of the two.

Every side effect on rank 0 is fenced by the run's claim: stream reads go under the claim's own consumer name,
acknowledgements are checked with the claim in one script, ``latest`` moves only right after a check of the claim,
and metrics rows are written only after the step was recorded under the claim. A learner that lost its claim (a
pause, a partition) stops without a checkpoint and leaves the run's files and stream to the new holder.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from cfpo.clients.generation import GenerationClient, WeightUpdate
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
from cfpo.sample import Sample
from cfpo.staleness import groups_needed_before_serving, is_warm_up, within_bound
from trainer.assembler import Interrupted, StepAssembler
from trainer.checkpoints import point_latest, prune_checkpoints, wait_for_room
from trainer.distributed import broadcast_from_main
from trainer.held_out import HeldOutEvaluator
from trainer.learner import StepResult

log = logging.getLogger("cfpo.learner")


class RunControl(Protocol):
    """Who else has a say in a run: the registry it was claimed from, or, for a run started by hand, the signals."""

    claim: str  # unique to this claim of the run: it names the stream consumer, checkpoint tags and staged weights

    def begin(self, start_step: int) -> None: ...

    def record(self, step: int, version: int, metrics: dict) -> None: ...

    def acknowledge(self, queue: RolloutQueue, entry_ids: list[str]) -> None:
        """Acknowledge and delete applied entries a checkpoint holds, only while the run is this claim's."""

    def stop_reason(self) -> str | None: ...

    def lost(self) -> bool:
        """Whether the run is no longer this claim's (then nothing of it may be written)."""

    def fence(self) -> None:
        """Raise unless this process may still push weights for the run (it was not taken over)."""


class PushAsked(Interrupted):
    """A generation server no longer serves the learner's weights (it restarted): push them again."""


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
    def evaluations(self) -> Path:
        return self.root / "eval.jsonl"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"


@dataclass(frozen=True)
class StepData:
    """One step as rank 0 took it from the stream, or why the run stops before it."""

    groups: list[RolloutGroup] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)
    data_wait_seconds: float = 0.0
    stop_reason: str | None = None
    checkpoint: bool = True  # on a stop: False once the run is no longer this claim's
    push_again: bool = False  # no step yet: generation lost the weights, push them and ask again

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g.samples]


class RunPlane(Protocol):
    def claim(self) -> str:
        """The claim's name, the same on every rank (checkpoint tags are collective)."""

    def begin(self, start_step: int, version: int, restored_ids: list[str]) -> None: ...

    def next_step(self, step: int) -> StepData: ...

    def fence(self) -> None: ...

    def optimizer_stepped(self) -> None: ...

    def before_push(self, version: int) -> str | None:
        """None once generation may serve ``version``, else why the run stops before it does."""

    def pushed(self, version: int, update: WeightUpdate | None) -> None: ...

    def record(self, step: int, data: StepData, results: list[StepResult]) -> None: ...

    def room_for_checkpoint(self, needed: int) -> str | None:
        """None once the checkpoint's disk has ``needed`` bytes free (rank 0 waits for it), else why not."""

    def checkpointed(self, tag: str, entry_ids: list[str]) -> None: ...

    def evaluation_due(self, completed_steps: int) -> bool: ...

    def evaluate(self, completed_steps: int, version: int) -> None: ...

    def finished(self, version: int) -> None: ...


class FollowerPlane:
    """A rank other than 0: rank 0's decisions, received; nothing recorded."""

    def claim(self) -> str:
        return broadcast_from_main("")

    def begin(self, start_step: int, version: int, restored_ids: list[str]) -> None:
        pass

    def next_step(self, step: int) -> StepData:
        return broadcast_from_main(StepData())

    def fence(self) -> None:
        pass

    def optimizer_stepped(self) -> None:
        pass

    def before_push(self, version: int) -> str | None:
        return broadcast_from_main(None)

    def pushed(self, version: int, update: WeightUpdate | None) -> None:
        pass

    def record(self, step: int, data: StepData, results: list[StepResult]) -> None:
        pass

    def room_for_checkpoint(self, needed: int) -> str | None:
        return broadcast_from_main(None)

    def checkpointed(self, tag: str, entry_ids: list[str]) -> None:
        pass

    def evaluation_due(self, completed_steps: int) -> bool:
        return broadcast_from_main(False)

    def evaluate(self, completed_steps: int, version: int) -> None:
        pass

    def finished(self, version: int) -> None:
        pass


class MainPlane:
    """Rank 0: the run's stream, its generation version, its registry entry, its logs and metrics."""

    def __init__(
        self,
        spec: RunSpec,
        run_id: str,
        paths: RunPaths,
        queue: RolloutQueue,
        recorder: PrometheusRecorder,
        generation: GenerationClient,
        *,
        data_timeout: float,
        disk_wait_s: float,
        control: RunControl,
        rewards: RewardClient | None,
    ):
        self.spec, self.run_id, self.paths, self.queue, self.recorder = spec, run_id, paths, queue, recorder
        self.data_timeout, self.disk_wait_s, self.control = data_timeout, disk_wait_s, control
        self.labels = {"run": run_id, "loss": spec.learner.loss.name}
        # Without a reward service (a run started by hand with none) there is nothing to score held-out answers.
        self.evaluator = (
            HeldOutEvaluator(spec, generation, rewards, paths.evaluations, recorder, self.labels)
            if rewards is not None
            else None
        )
        consumer = f"learner-{control.claim}"
        self.assembler = StepAssembler(queue, consumer, spec.rollout.prompts_per_step, 0, self._acknowledge)
        self.last_sync_seconds = 0.0

    def claim(self) -> str:
        return broadcast_from_main(self.control.claim)

    def begin(self, start_step: int, version: int, restored_ids: list[str]) -> None:
        # The run's directory says what it ran (cfpo report reads the loss and its anchor there), however started.
        self.paths.spec.write_text(yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False))
        # A crash between saving and acknowledging leaves these pending; they are in the checkpoint already.
        self._acknowledge(restored_ids)
        self.control.begin(start_step)
        self._truncate_logs(start_step)
        self.assembler.next_step = start_step
        recovered = self.assembler.recover()
        log.info("starting at step %d, version %d (%d entries recovered)", start_step, version, recovered)

    def next_step(self, step: int) -> StepData:
        waiting = time.perf_counter()
        try:
            self._check_stop()
            entries = self.assembler.take(step, self.data_timeout, self._check_stop_or_push)
        except PushAsked as asked:
            log.info("run %s: %s; pushing again", self.run_id, asked)
            return broadcast_from_main(StepData(push_again=True))
        except Interrupted as stop:
            log.info("run %s stops before step %d: %s", self.run_id, step, stop)
            return broadcast_from_main(StepData(stop_reason=str(stop), checkpoint=not self.control.lost()))
        data = StepData([e.group for e in entries], [e.id for e in entries], time.perf_counter() - waiting)
        return broadcast_from_main(data)

    def _check_stop(self) -> None:
        """Between reads: a stop asked, or the claim gone (checked in Redis, not at the next heartbeat, so that a
        learner that wakes up after losing its run reads at most once more)."""
        if reason := self.control.stop_reason():
            raise Interrupted(reason)
        self.control.fence()

    def _check_stop_or_push(self) -> None:
        self._check_stop()
        if why := self.queue.push_asked():
            raise PushAsked(why)

    def _acknowledge(self, entry_ids: list[str]) -> None:
        self.control.acknowledge(self.queue, entry_ids)
        self.assembler.acknowledged(entry_ids)

    def fence(self) -> None:
        self.control.fence()

    def optimizer_stepped(self) -> None:
        self.recorder.inc(LEARNER_STEPS, 1.0, **self.labels)

    def before_push(self, version: int) -> str | None:
        """Under a fixed staleness, generation may serve ``version`` only once the groups that must come from
        older versions are in the queue; the wait ends on SIGTERM, a cancel or a lost claim."""
        needed = groups_needed_before_serving(self.spec, version)
        try:
            if needed:
                self.assembler.wait_for_slots_below(needed, self.data_timeout, self._check_stop)
        except Interrupted as stop:
            log.info("run %s stops before version %d is served: %s", self.run_id, version, stop)
            return broadcast_from_main(str(stop))
        return broadcast_from_main(None)

    def pushed(self, version: int, update: WeightUpdate | None) -> None:
        assert update is not None, "rank 0's transport reports its push"
        self.queue.publish_version(version)
        self.last_sync_seconds = update.push_seconds
        self.recorder.observe(LEARNER_WEIGHT_SYNC_SECONDS, update.push_seconds, run=self.run_id)

    def room_for_checkpoint(self, needed: int) -> str | None:
        return broadcast_from_main(wait_for_room(self.paths.checkpoints, needed, self.disk_wait_s))

    def checkpointed(self, tag: str, entry_ids: list[str]) -> None:
        """Name the complete checkpoint ``tag`` the one to resume from, then acknowledge what it holds, then prune;
        each only while the run is this claim's (a stale learner's checkpoint stays unnamed)."""
        self.control.fence()
        point_latest(self.paths.checkpoints, tag)
        self._acknowledge(entry_ids)  # only now is their effect safe from a crash
        prune_checkpoints(self.paths.checkpoints, self.spec.keep_checkpoints)

    def evaluation_due(self, completed_steps: int) -> bool:
        return broadcast_from_main(self.evaluator is not None and self.evaluator.due(completed_steps))

    def evaluate(self, completed_steps: int, version: int) -> None:
        assert self.evaluator is not None, "evaluation_due said so"
        self.evaluator.run(completed_steps, version)

    def finished(self, version: int) -> None:
        self.paths.status.write_text(json.dumps({"state": "succeeded", "steps": self.spec.steps, "version": version}))
        log.info("run %s finished: %d steps, version %d", self.run_id, self.spec.steps, version)

    def record(self, step: int, data: StepData, results: list[StepResult]) -> None:
        groups = data.groups
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
            "data_wait_seconds": data.data_wait_seconds,
            "warm_up": is_warm_up(self.spec, step),
            "bound_violations": sum(not within_bound(self.spec, g.slot, g.min_version, g.max_version) for g in groups),
            "zero_variance_discarded": sum(g.zero_variance_discarded for g in groups),
        }
        rows = []
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
            rows.append(row)
        self.control.record(step, results[-1].version, rows[-1])  # raises once the run is not this claim's
        for row in rows:
            self._append(self.paths.metrics, row)
            self._export(row)
        for value in staleness:
            self.recorder.observe(LEARNER_STALENESS, value, **self.labels)
        self._append(self.paths.applied, {"step": step, "slots": [g.slot for g in groups], "ids": data.entry_ids})

    def _truncate_logs(self, start_step: int) -> None:
        """Drop log lines of steps the checkpoint does not hold: they are replayed, and logged again."""
        for path in (self.paths.metrics, self.paths.applied, self.paths.evaluations):
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < start_step]
                path.write_text("".join(f"{line}\n" for line in kept))

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
