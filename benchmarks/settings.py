"""What a benchmark session measures: the model and its workload, how much, and where results go.

Validated once, at the edge (``python -m benchmarks`` / ``cfpo bench``). The workloads mirror the demo run specs
(``configs/demo-tiny.yaml`` for the tiny model, ``configs/demo.yaml`` for SmolLM2 and any other model directory),
so the figures describe the runs users start. One difference: zero-variance groups are kept (trained with zero
advantage) instead of regenerated, so every step is exactly prompts_per_step x group_size completions generated and
trained, as in TRL's GRPOTrainer; otherwise SmolLM2's all-wrong groups would multiply its generation work by a
varying factor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cfpo.config import StrictModel, read_yaml_mapping
from cfpo.run_spec import RunSpec

BenchmarkName = Literal["async_vs_sync", "overhead", "weight_sync", "peer_trl"]
Shape = Literal["demo", "rollout_heavy"]
SHAPES: tuple[Shape, ...] = ("demo", "rollout_heavy")
BENCHMARKS: tuple[BenchmarkName, ...] = ("async_vs_sync", "overhead", "weight_sync", "peer_trl")
Placement = Literal["shared", "pinned"]
PLACEMENTS: tuple[Placement, ...] = ("shared", "pinned")
OVERHEAD_STALENESS = (0, 1)  # synchronous, and the demo's bound
PEER_STALENESS = (0, 1)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WORKLOAD_FIELDS = ("task", "rollout", "learner")  # of the demo's run spec; steps, staleness and the rest are set here


def demo_workload(tiny: bool) -> dict[str, Any]:
    """The workload of configs/demo-tiny.yaml (a random model learns a dense toy reward) or configs/demo.yaml
    (SmolLM2 learns arithmetic, rewarded by math answer equivalence), zero-variance groups kept."""
    spec = read_yaml_mapping(CONFIGS / ("demo-tiny.yaml" if tiny else "demo.yaml"))
    workload = {key: spec[key] for key in WORKLOAD_FIELDS if key in spec}
    return {**workload, "rollout": {**workload.get("rollout", {}), "drop_zero_variance": False}}


# The rollout-heavy shape: more prompts, more completions per prompt, longer completions than the demo's.
ROLLOUT_HEAVY_ROLLOUT: dict[str, Any] = {"group_size": 8, "prompts_per_step": 16, "max_tokens": 64}
# Its steps cost ~7x the demo's (73 s against 10.6 s synchronously, 2026-12-01), so it is measured against the
# peer alone.
SHAPE_BENCHMARKS: dict[Shape, tuple[BenchmarkName, ...]] = {"demo": BENCHMARKS, "rollout_heavy": ("peer_trl",)}


class LadderModel(StrictModel):
    """A random Llama of a chosen size (the tiny model's builder, wider and deeper), for weight sync vs size."""

    hidden_size: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0, description="hidden_size / heads must be a head size vLLM's CPU attention supports")

    @property
    def name(self) -> str:
        return f"llama-{self.hidden_size}x{self.layers}"


class Scale(StrictModel):
    """How much each benchmark measures. The smoke scale only shows that every code path runs."""

    steps: int = Field(gt=1, description="rollout steps per pipeline run")
    warmup_steps: int = Field(ge=1, description="first steps left out of throughput: model load, DeepSpeed init")
    staleness: tuple[int, ...] = Field(min_length=1, description="max_staleness values compared; 0 is synchronous")
    repeats: int = Field(ge=1, description="timed repetitions of each part measured alone, after one untimed")
    weight_ladder: tuple[LadderModel, ...] = Field(description="model sizes weight_sync adds to the benchmark model")
    trl_steps: int = Field(ge=1, description="TRL steps timed, after one untimed")

    @model_validator(mode="after")
    def _steps_leave_a_window(self) -> Scale:
        """Throughput is read between the warm-up and the last max_staleness steps (the queue draining)."""
        largest = max(self.staleness + OVERHEAD_STALENESS + PEER_STALENESS)
        if self.steps <= self.warmup_steps + largest:
            raise ValueError(
                f"steps: {self.steps} leaves no measured step after {self.warmup_steps} warm-up steps "
                f"and {largest} draining steps"
            )
        return self


LADDER = (LadderModel(hidden_size=256, layers=4, heads=8), LadderModel(hidden_size=1024, layers=8, heads=16))
SMOKE = Scale(steps=4, warmup_steps=1, staleness=(0, 1), repeats=1, weight_ladder=(), trl_steps=1)
TINY_SCALE = Scale(steps=30, warmup_steps=2, staleness=(0, 1, 2, 4), repeats=5, weight_ladder=LADDER, trl_steps=5)
# A real model's steps take seconds: fewer of them, and no synthetic size near the model's own.
REAL_SCALE = Scale(steps=10, warmup_steps=2, staleness=(0, 1, 2, 4), repeats=3, weight_ladder=LADDER[:1], trl_steps=3)
# A real model's rollout-heavy steps take over a minute: the fewest that leave a steady state (3 synchronous steps,
# 2 asynchronous), one timed repetition of each part and one timed TRL step (128 completions each).
REAL_HEAVY_SCALE = Scale(steps=5, warmup_steps=2, staleness=PEER_STALENESS, repeats=1, weight_ladder=(), trl_steps=1)


class BenchSettings(StrictModel):
    benchmarks: tuple[BenchmarkName, ...] = Field(BENCHMARKS, min_length=1, description="which to run, in order")
    model: str = Field("tiny", description="tiny, smollm2, or a local Hugging Face model directory")
    smoke: bool = Field(False, description="smallest settings that run every code path (checks, not figures)")
    out: Path | None = Field(
        None, description="tables and JSON; default benchmarks/results/<model> (runs/bench/smoke with --smoke)"
    )
    work: Path = Field(Path("runs/bench"), description="stack logs, run directories, scratch models")
    models_dir: Path = Field(Path("models"), description="where tiny and smollm2 are prepared (as cfpo up does)")
    port_offset: int = Field(1500, ge=0, le=50_000, description="added to every default port of the stack")
    shapes: tuple[Shape, ...] = Field(
        SHAPES,
        min_length=1,
        description="workload shapes, each in a session of its "
        "own: demo (the demo's run spec) runs every benchmark named, rollout_heavy "
        "(16 prompts x 8 completions x 64 tokens) peer_trl only",
    )
    shape: Shape = Field("demo", description="the shape this session measures (set per session from shapes)")

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _known_each_once(cls, names: object) -> object:
        if isinstance(names, (list, tuple)):
            unknown = [name for name in names if name not in BENCHMARKS]
            if unknown:
                raise ValueError(f"unknown {', '.join(map(repr, unknown))}; choose from {', '.join(BENCHMARKS)}")
            return tuple(dict.fromkeys(names))
        return names

    @field_validator("model")
    @classmethod
    def _known_or_a_model_directory(cls, model: str) -> str:
        if model in ("tiny", "smollm2") or (Path(model) / "config.json").is_file():
            return model
        raise ValueError(f"{model!r} is neither tiny, smollm2 nor a model directory (no config.json there)")

    @property
    def label(self) -> str:
        return self.model if self.model in ("tiny", "smollm2") else Path(self.model).resolve().name

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        return self.work / "smoke" if self.smoke else Path("benchmarks/results") / self.label

    @property
    def scale(self) -> Scale:
        if self.smoke:
            return SMOKE
        if self.model == "tiny":
            return TINY_SCALE
        return REAL_HEAVY_SCALE if self.shape == "rollout_heavy" else REAL_SCALE

    @property
    def workload(self) -> dict[str, Any]:
        workload = demo_workload(tiny=self.model == "tiny")
        if self.shape == "rollout_heavy":
            workload = {**workload, "rollout": {**workload["rollout"], **ROLLOUT_HEAVY_ROLLOUT}}
        return workload

    @property
    def shape_benchmarks(self) -> tuple[BenchmarkName, ...]:
        """The benchmarks named that this session's shape runs, in order."""
        return tuple(name for name in self.benchmarks if name in SHAPE_BENCHMARKS[self.shape])

    def result_name(self, benchmark: BenchmarkName) -> str:
        """File stem of a benchmark's results: its name, with the shape unless it is the demo's."""
        return benchmark if self.shape == "demo" else f"{benchmark}-{self.shape.replace('_', '-')}"

    def run_spec(self, model_dir: Path, max_staleness: int) -> RunSpec:
        """The workload as a run of ``scale.steps`` steps at ``max_staleness`` (bounded), weights pushed every
        step, no held-out evaluation, one checkpoint at the end (after the last measured step)."""
        steps = self.scale.steps
        return RunSpec.model_validate(
            {
                **self.workload,
                "model": str(model_dir),
                "steps": steps,
                "checkpoint_every": steps,
                "sync_every": 1,
                "staleness": {"mode": "bounded", "max_staleness": max_staleness},
                "evaluation": {"problems": 0},
            }
        )
