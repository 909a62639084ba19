"""vLLM's OpenAI-compatible server, started the way this pipeline needs it.

* ``--logprobs-mode processed_logprobs``: returned log-probs are of the distribution actually sampled
  (temperature applied), which the learner's ratio needs; vLLM's default returns untempered ones.
* ``--enable-scale-out``: the token-in/token-out route ``/inference/v1/generate`` returns sampled token ids,
  their log-probs and the weight version that produced each span of tokens.
* ``VLLM_SERVER_DEV_MODE=1`` and the worker extension: ``/pause``, ``/collective_rpc``, ``/resume`` and
  ``/update_weight_version`` replace weights in place, without a restart. These routes run code: bind the
  server to loopback or a private network only.
"""

from __future__ import annotations

import os
import sys

from services.generation.settings import GenerationSettings

WORKER_EXTENSION = "services.generation.worker_extension.WeightUpdateExtension"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def server_command(settings: GenerationSettings) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start the server."""
    device = resolve_device(settings.device)
    dtype = settings.dtype if settings.dtype != "auto" or device == "cuda" else "float32"
    utilization = settings.gpu_memory_utilization or (0.85 if device == "cuda" else 0.3)
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.model),
        "--host", settings.host,
        "--port", str(settings.port),
        "--dtype", dtype,
        "--gpu-memory-utilization", str(utilization),
        "--logprobs-mode", "processed_logprobs",
        "--enable-scale-out",
        "--generation-config", "vllm",  # the model's sampling defaults (top-k, top-p) would bend the log-probs
        "--worker-extension-cls", WORKER_EXTENSION,
        *(["--max-model-len", str(settings.max_model_len)] if settings.max_model_len else []),
        *(["--served-model-name", settings.served_model_name] if settings.served_model_name else []),
        *settings.extra_args,
    ]
    if device == "cuda":  # the learner can then broadcast weights over NCCL (trainer/weight_sync/nccl.py)
        argv += ["--weight-transfer-config", '{"backend": "nccl"}']
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
    return argv, env
