"""Typed, validated settings shared by the services and the learner (validated once, at the edge)."""

from __future__ import annotations

import functools
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

LossName = Literal["cfpo", "grpo", "dapo", "gspo", "cispo", "dppo_tv", "reinforce"]
Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
DAPO_DEFAULT_EPS_HIGH = 0.28
MAX_BATCH_SIZE = 65_536  # sequences per rollout step: beyond this, a typo rather than a plan
Anchor = Literal["behaviour", "proximal"]  # what the trust region's ratio is taken against (LossConfig.ratio_reference)


@typing.overload
def environment(name: str, default: str) -> Callable[[], str]: ...
@typing.overload
def environment(name: str, default: None = None) -> Callable[[], str | None]: ...
def environment(name: str, default: str | None = None) -> Callable[[], str | None]:
    """A default factory reading ``$name`` (empty counts as unset, as compose's ``${X:-}`` gives)."""
    return lambda: os.environ.get(name) or default


WeightTransfer = Literal["file", "nccl", "ipc"]
WEIGHT_TRANSFER_HELP = (
    "how the learner's weights reach generation ($CFPO_WEIGHT_TRANSFER; learner and generation must agree). "
    "file: safetensors on storage both read (CPU and GPU); nccl: vLLM's NCCL broadcast, learner and generation on "
    "different GPUs; ipc: CUDA IPC, learner and generation sharing a GPU"
)


def weight_transfer_setting() -> Any:
    """The one ``weight_transfer`` setting the learner and ``cfpo serve generation`` both read."""
    return Field(
        default_factory=environment("CFPO_WEIGHT_TRANSFER", "file"),
        validate_default=True,
        description=WEIGHT_TRANSFER_HELP,
    )


def http_url(url: str) -> str:
    """``url``, or a ValueError saying it is not an http(s) URL (a bare host:port is the usual slip)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r}: expected an http:// or https:// URL")
    return url


def require_cuda(transfer: str, cuda_available: bool) -> None:
    """vLLM's NCCL and IPC engines are CUDA-only; on a machine without CUDA they fail late (or hang in a
    rendezvous), so refuse them at start."""
    if transfer != "file" and not cuda_available:
        raise ValueError(
            f"weight_transfer: {transfer} needs CUDA (vLLM's {transfer} engine is CUDA-only) and this machine has "
            "none; use file"
        )


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt setting must not silently fall back to its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LossConfig(StrictModel):
    # _grpo_is_symmetric, stated in the schema: grpo gives no eps_high
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"name": {"enum": [name for name in typing.get_args(LossName) if name != "grpo"]}}},
                {"properties": {"eps_high": {"type": "null"}}},
            ]
        }
    )

    name: LossName = "cfpo"
    eps: float = Field(0.2, gt=0, description="trust-region half-width (PPO's clip epsilon)")
    eps_high: float | None = Field(None, gt=0, description="upper width; default eps (0.28 for dapo)")
    agg: Aggregation = "seq-mean-token-mean"
    beta: float = Field(0.0, ge=0, description="weight of the reference-KL term")
    kl_estimator: Literal["k1", "k3"] = "k3"
    norm_length: int | None = Field(
        None,
        gt=0,
        description="Dr.GRPO's constant (seq-mean-token-sum-norm divides "
        "each response's token sum by it); a run spec defaults it to rollout.max_tokens",
    )
    cispo_eps_low: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="cispo: clip the importance weight below at "
        "1 - this too; default none, as in its paper (above: 1 + eps_high)",
    )
    dppo_ratio_cap: float = Field(
        20.0,
        gt=0,
        description="dppo_tv: truncation of its detached ratio weight (verl's clip_ratio_c; its paper advises a "
        "large cap, as truncation biases the gradient); its trust region is eps / eps_high on the token's probability",
    )
    ratio_reference: Anchor = Field(
        "behaviour",
        description="the trust region's anchor. behaviour: the ratio is against the sampling policy's log-probs "
        "(PipelineRL, verl's bypass mode); proximal: against the learner's own log-probs before its first update on "
        "the batch, with a truncated importance weight proximal/behaviour for staleness (AReaL's decoupled PPO). "
        "A run spec whose staleness can exceed 0 must name it",
    )
    is_cap: float = Field(2.0, gt=0, description="truncation of the proximal/behaviour importance weight")

    @property
    def trust_region(self) -> tuple[float, float]:
        """(eps_low, eps_high): the region is [1 - eps_low, 1 + eps_high]; eps_high defaults to eps (0.28 for
        dapo, as in its paper)."""
        if self.eps_high is not None:
            return self.eps, self.eps_high
        return self.eps, DAPO_DEFAULT_EPS_HIGH if self.name == "dapo" else self.eps

    @model_validator(mode="after")
    def _grpo_is_symmetric(self) -> LossConfig:
        if self.name == "grpo" and self.eps_high is not None:
            raise ValueError("eps_high: grpo clips symmetrically, at eps; leave eps_high out, or use loss 'dapo'")
        return self

    @model_validator(mode="after")
    def _dr_grpo_has_its_constant(self) -> LossConfig:
        if self.agg == "seq-mean-token-sum-norm" and self.norm_length is None:
            raise ValueError(
                "norm_length: required for seq-mean-token-sum-norm (Dr.GRPO's constant); a run spec "
                "sets it to rollout.max_tokens"
            )
        return self


class OptimizerConfig(StrictModel):
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0, description="global gradient-norm clip")


LOGIT_CHUNK_TOKENS = 1024


class LearnerConfig(StrictModel):
    """How one rollout batch becomes optimizer steps: iterations passes x minibatches steps per pass."""

    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: int = Field(32, gt=0, le=MAX_BATCH_SIZE, description="sequences per rollout batch (prompts x G)")
    iterations: int = Field(1, ge=1, le=64, description="passes over each batch (the paper's mu)")
    minibatches: int = Field(
        1, ge=1, le=4096, description="optimizer steps per pass (the paper's batch ratio); divides batch_size"
    )
    micro_batch_size: int | None = Field(
        None,
        gt=0,
        le=MAX_BATCH_SIZE,
        description="sequences per forward, a divisor of the minibatch; default a whole minibatch",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        gt=0,
        description="cut micro-batches by padded tokens (sequences x the longest); excludes micro_batch_size",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="recompute layer activations in the backward pass; auto: on on GPUs, off on CPU"
    )
    logit_chunk_tokens: int = Field(
        LOGIT_CHUNK_TOKENS,
        gt=0,
        description="completion tokens per piece of the output head (its fp32 logits exist per piece)",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature; log-probs are of logits / T")
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPUs that have it, else fp32")
    seed: int = 0

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.minibatches

    @model_validator(mode="after")
    def _batch_divides(self) -> LearnerConfig:
        if self.batch_size % self.minibatches:
            raise ValueError(
                f"minibatches: {self.minibatches} does not divide batch_size {self.batch_size}; pick a divisor"
            )
        micro = self.micro_batch_size
        if micro is not None and self.max_tokens_per_micro_batch is not None:
            raise ValueError(
                "max_tokens_per_micro_batch: set either it or micro_batch_size, not both (a token budget sizes "
                "micro-batches itself)"
            )
        if micro is not None and self.minibatch_size % micro:
            raise ValueError(
                f"micro_batch_size: {micro} does not divide the minibatch of {self.minibatch_size} sequences"
            )
        return self


class ConfigError(ValueError):
    """A settings file that cannot be used; the message names the file, the field and the problem."""


Model = typing.TypeVar("Model", bound=StrictModel)


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's safe loader reading ``1e-6`` as a number, as YAML 1.2 and every user do (YAML 1.1 has it a string,
    which a request's schema then refuses)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent_only = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_only, list("-+0123456789"))
    return Loader


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: none), or ``ConfigError`` naming the file and the problem."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from None
    try:
        data = yaml.load(text, Loader=_yaml_loader()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_config(model: type[Model], path: str | Path, **overrides: Any) -> Model:
    """Read a YAML settings file into ``model``, with ``overrides`` on top (a mapping of top-level fields)."""
    data = read_yaml_mapping(path)
    try:
        return model.model_validate({**data, **overrides})
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None


def describe_validation_error(error: ValidationError) -> str:
    """One line: ``field.path: message`` per problem, or the message alone where it names its fields itself."""

    def problem(e: ErrorDetails) -> str:
        where, message = ".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, ")
        return f"{where}: {message}" if where else message

    return "; ".join(problem(e) for e in error.errors())
