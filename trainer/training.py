"""One run trained to its end, on every learner rank: consume its rollout steps, train, keep generation current.

Per step: take the step's groups (slot order), train ``iterations x minibatches`` optimizer steps, push weights
to generation every ``sync_every`` versions, record every metric (JSONL in the run directory and Prometheus).
Rank 0's control plane (``trainer.run_plane``) does the I/O and hands its decisions to the other ranks; every rank
trains its share of each minibatch, pushes (collectively) and checkpoints (collectively). Stream entries are
acknowledged only when a checkpoint holds their effect, so a learner killed at any point and restarted with
``resume`` replays exactly the steps the checkpoint lacks: none lost, none applied twice. A learner whose claim was
taken over stops without a checkpoint: the run, its checkpoints and its stream are the new holder's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from cfpo.run_spec import RunSpec
from trainer.checkpoints import NoRoomForCheckpoint, checkpoint_bytes, checkpoint_tag
from trainer.learner import Learner
from trainer.run_plane import RunPaths, RunPlane
from trainer.weight_sync import WeightSync

log = logging.getLogger("cfpo.learner")


class TrainingRun:
    def __init__(
        self,
        spec: RunSpec,
        run_id: str,
        run_dir: Path,
        plane: RunPlane,
        weight_sync: WeightSync,
        *,
        push_timeout: float,
    ):
        self.spec, self.run_id, self.paths, self.plane = spec, run_id, RunPaths(run_dir), plane
        self.weight_sync, self.push_timeout = weight_sync, push_timeout  # seconds a push lets generation pause
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.learner = Learner(spec.model, spec.learner)
        self.served_version: int | None = None
        self.claim = ""  # the claim's name, once training starts (rank 0's, on every rank)
        self.checkpointed_step: int | None = None

    def train(self, resume: bool = False) -> Literal["succeeded", "stopped"]:
        """Train every remaining step; stops early (``stopped``) when the run's control says so: at a step boundary
        with a checkpoint, or without one once the run is no longer this claim's or mid-step (fixed staleness)."""
        self.claim = self.plane.claim()
        try:
            return self._train_remaining_steps(resume)
        finally:
            self.weight_sync.release(self.run_id, claim=self.claim)  # this claim's staged file only

    def _train_remaining_steps(self, resume: bool) -> Literal["succeeded", "stopped"]:
        start_step, restored_ids = self._restore() if resume else (0, [])
        self.checkpointed_step = start_step if resume else None
        self.plane.begin(start_step, self.learner.version, restored_ids)
        self._push(self.learner.version)  # generation must serve this learner's weights, whatever it served before
        self._evaluate_if_due(start_step)
        unacknowledged: list[str] = []
        for step in range(start_step, self.spec.steps):
            while (data := self.plane.next_step(step)).push_again:
                self._push(self.learner.version)  # a restarted generation server serves its base weights
            if data.stop_reason:
                if data.checkpoint:
                    self._checkpoint(step, unacknowledged)
                return "stopped"
            results = []
            for result in self.learner.optimizer_steps(data.samples):
                results.append(result)
                self.plane.optimizer_stepped()
                if result.version % self.spec.sync_every == 0:
                    if self.plane.before_push(result.version):
                        return "stopped"  # mid-step: the last checkpoint holds the run, its entries stay pending
                    self._push(result.version)
            self.plane.record(step, data, results)
            unacknowledged += data.entry_ids
            if (step + 1) % self.spec.checkpoint_every == 0 or step + 1 == self.spec.steps:
                self._checkpoint(step + 1, unacknowledged)
                unacknowledged = []
            self._evaluate_if_due(step + 1)
        if self.served_version != self.learner.version:
            self._push(self.learner.version)  # generation ends on the final policy (evaluations read it there)
        self.plane.finished(self.learner.version)
        return "succeeded"

    def _checkpoint(self, next_step: int, unacknowledged: list[str]) -> None:
        if next_step == self.checkpointed_step:
            return  # a stop right after a checkpoint (or a resume): the newest one holds this very state
        if problem := self.plane.room_for_checkpoint(self._checkpoint_room()):
            raise NoRoomForCheckpoint(problem)  # nothing lost: its entries stay unacknowledged, the last one holds
        state = {"step": next_step, "stream_ids": unacknowledged, "torch_rng": torch.get_rng_state()}
        tag = checkpoint_tag(self.learner.version, self.claim)
        self.learner.save_checkpoint(self.paths.checkpoints, tag, state)  # every rank: its shard of the state
        self.plane.checkpointed(tag, unacknowledged)
        self.checkpointed_step = next_step

    def _checkpoint_room(self) -> int:
        """Bytes the next checkpoint takes, with a tenth to spare: the last one's size, or before the first, 16 per
        parameter (fp32 weights, a master copy and Adam's two moments)."""
        size = checkpoint_bytes(self.paths.checkpoints)
        if size is None:
            size = 16 * sum(getattr(p, "ds_numel", p.numel()) for p in self.learner.engine.module.parameters())
        return int(size * 1.1)

    def _restore(self) -> tuple[int, list[str]]:
        """The step to resume at and the stream entries the checkpoint holds (0 and none without one)."""
        if not (self.paths.checkpoints / "latest").exists():
            log.info("no checkpoint in %s: starting from the beginning", self.paths.checkpoints)
            return 0, []
        state = self.learner.load_checkpoint(self.paths.checkpoints)
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"]), list(state["stream_ids"])

    def _evaluate_if_due(self, completed_steps: int) -> None:
        if not self.plane.evaluation_due(completed_steps):
            return
        if self.served_version != self.learner.version:
            self._push(self.learner.version)
        self.plane.evaluate(completed_steps, self.learner.version)

    def _push(self, version: int) -> None:
        self.plane.fence()
        update = self.weight_sync.push(
            self.learner.engine.module, version, run=self.run_id, claim=self.claim, timeout=self.push_timeout
        )
        self.plane.pushed(version, update)
        self.served_version = version
