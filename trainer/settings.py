"""The learner process's settings (``cfpo serve learner``), validated once at start-up."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, model_validator

from cfpo.clients.generation import PAUSE_BASE_S, PAUSE_PER_TOKEN_S, pause_timeout
from cfpo.config import WeightTransfer, environment, require_cuda, weight_transfer_setting
from cfpo.entrypoint import RunWorkerSettings

# Beyond rank 0's own waits (data, disk), what follower ranks may also wait through in one collective: a held-out
# evaluation and a weight push.
PROCESS_GROUP_MARGIN_S = 1800.0


class LearnerSettings(RunWorkerSettings):
    run_dir: Path | None = Field(None, description="one run: its metrics, checkpoints and weights go here")
    resume: bool = Field(False, description="one run: continue from the run directory's latest checkpoint")
    runs_dir: Path = Field(Path("runs"), description="worker: each run's directory is RUNS_DIR/<run id>")
    reward_url: str | None = Field(
        default_factory=environment("CFPO_REWARD_URL"),
        description="reward service for held-out evaluations ($CFPO_REWARD_URL; unset: none)",
    )
    data_timeout: float = Field(600.0, gt=0, description="seconds to wait for a step's rollouts before failing")
    disk_wait_s: float = Field(
        600.0, ge=0, description="seconds a checkpoint waits for room on a nearly full disk before the run fails"
    )
    process_group_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds the learner's ranks may wait in one collective: the others wait there while rank 0 "
        "waits for data or disk, evaluates or pushes; more than data_timeout and disk_wait_s (default: their sum + "
        f"{PROCESS_GROUP_MARGIN_S:.0f})",
    )
    pause_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds a weight push waits for generation to pause while its requests in flight finish, and "
        f"to load (default: {PAUSE_BASE_S:g} + {PAUSE_PER_TOKEN_S:g} per token of the run's rollout.max_tokens)",
    )
    threads: int | None = Field(
        default_factory=environment("CFPO_LEARNER_THREADS"),
        validate_default=True,
        ge=1,
        description="CPU threads to train with ($CFPO_LEARNER_THREADS; default: every core, trainer/threads.py)",
    )
    weights_dir: Path | None = Field(
        default_factory=environment("CFPO_WEIGHTS_DIR"),
        validate_default=True,
        description="file transport: where weights are staged for generation to load ($CFPO_WEIGHTS_DIR; default: "
        "weights/ in the run directory, or in the runs directory for a worker); a tmpfs generation can read, such as "
        "/dev/shm, makes each push cheaper",
    )

    weight_transfer: WeightTransfer = weight_transfer_setting()
    weight_transfer_address: str = Field(
        default_factory=lambda: environment("CFPO_WEIGHT_TRANSFER_ADDRESS")() or environment("POD_IP", "127.0.0.1")(),
        min_length=1,
        description="nccl: the address of rank 0 the generation workers connect to ($CFPO_WEIGHT_TRANSFER_ADDRESS, "
        "else $POD_IP as Kubernetes sets it; compose: the learner's service name)",
    )
    weight_transfer_port: int = Field(29551, ge=1, le=65535, description="nccl: the port rank 0 listens on")

    @property
    def staging_dir(self) -> Path:
        """The file transport's folder: ``weights_dir``, or beside the runs (one run: its own directory)."""
        return self.weights_dir or (self.run_dir if self.run_dir is not None else self.runs_dir) / "weights"

    @property
    def collective_timeout(self) -> timedelta:
        """How long a collective of the learner's ranks may wait, as torch.distributed takes it."""
        return timedelta(seconds=self.process_group_timeout or self._derived_process_group_timeout())

    def _derived_process_group_timeout(self) -> float:
        return self.data_timeout + self.disk_wait_s + PROCESS_GROUP_MARGIN_S

    def pause_timeout_for(self, max_tokens: int) -> float:
        """``pause_timeout``, or what a run whose completions reach ``max_tokens`` needs."""
        return self.pause_timeout or pause_timeout(max_tokens)

    @model_validator(mode="after")
    def _collectives_outlast_rank_0s_waits(self) -> LearnerSettings:
        if self.process_group_timeout is None:
            return self
        name, longest = max(("data_timeout", self.data_timeout), ("disk_wait_s", self.disk_wait_s), key=lambda w: w[1])
        if self.process_group_timeout <= longest:
            raise ValueError(
                f"process_group_timeout: {self.process_group_timeout:g} s is not above {name} ({longest:g} s), which "
                "the other ranks may spend in one collective while rank 0 waits; give more, or leave it out "
                f"(default: {self._derived_process_group_timeout():g})"
            )
        return self

    @model_validator(mode="after")
    def _transfer_fits_the_machine(self) -> LearnerSettings:
        if self.weight_transfer != "file":
            import torch

            require_cuda(self.weight_transfer, torch.cuda.is_available())
        return self

    @model_validator(mode="after")
    def _one_run_has_a_directory(self) -> LearnerSettings:
        if not self.worker and self.run_dir is None:
            raise ValueError("run_dir: --run-dir is needed for one run (or use --worker)")
        return self
