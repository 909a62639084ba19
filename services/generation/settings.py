"""Settings of the generation service, validated before vLLM is started."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cfpo.config import StrictModel, WeightTransfer, require_cuda, weight_transfer_setting


class GenerationSettings(StrictModel):
    model: Path = Field(description="local Hugging Face model directory (config.json + safetensors)")
    host: str = Field("127.0.0.1", description="bind address; never a public one: the dev routes run code")
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: str = Field("auto", description="auto: float32 on CPU (exact log-probs), the model's dtype on GPU")
    kv_cache_gib: int = Field(1, ge=1, description="CPU only: KV-cache size in GiB")
    cpu_cores: Literal["all", "vllm"] = Field(
        "all",
        description="CPU only: all: vLLM's worker binds a thread to every core this process may use; vllm: "
        "vLLM's own choice (one core per physical core, less one it reserves for its scheduler process)",
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="default 0.3 on CPU, 0.85 on GPU")
    max_model_len: int | None = Field(None, ge=16, description="default: what the model config allows")
    served_model_name: str | None = Field(None, description="name in the API; default the model directory")
    weight_transfer: WeightTransfer = weight_transfer_setting()
    tensor_parallel_size: int = Field(1, ge=1, description="GPU only: vLLM's tensor parallelism (GPUs per engine)")
    data_parallel_size: int = Field(
        1, ge=1, description="GPU only: vLLM's data-parallel engines behind this one URL and version label"
    )
    extra_args: list[str] = Field(default_factory=list, description="passed to vLLM's server unchanged")

    @field_validator("model")
    @classmethod
    def _is_model_directory(cls, model: Path) -> Path:
        if not (model / "config.json").is_file():
            raise ValueError(f"{model} is not a Hugging Face model directory (no config.json)")
        if not any(model.glob("*.safetensors")):
            raise ValueError(f"{model} has no safetensors weights (in-place updates check against them)")
        return model.resolve()

    @model_validator(mode="after")
    def _parallel_on_gpus_only(self) -> GenerationSettings:
        if self.device == "cpu" and (self.tensor_parallel_size > 1 or self.data_parallel_size > 1):
            raise ValueError("tensor_parallel_size, data_parallel_size: vLLM on CPU runs without them; keep 1")
        return self

    @model_validator(mode="after")
    def _transfer_fits_the_device(self) -> GenerationSettings:
        if self.weight_transfer != "file":
            require_cuda(self.weight_transfer, resolve_device(self.device) == "cuda")
        return self


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
