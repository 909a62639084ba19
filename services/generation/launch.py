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

import json
import os
import sys

from services.generation.settings import GenerationSettings, resolve_device
from services.generation.worker_extension import BUSY_LOOP_ENV

WORKER_EXTENSION = "services.generation.worker_extension.WeightUpdateExtension"
# How long vLLM's worker spins on its task queue after a message before it sleeps (vLLM's own: 1 s; see
# worker_extension). On CPU the spin takes a core the learner shares, while a decode step there takes milliseconds
# and a wake-up from the socket a fraction of one.
CPU_BUSY_LOOP_S = 0.002


def cpu_binding_on_every_core() -> dict[str, str]:
    """vLLM CPU's environment for one worker thread on each core this process may use.

    Measured on 2 cores (SmolLM2-135M, 16 requests of 4 x 32 tokens at once): 398 tokens/s with vLLM's own
    binding (its worker on core 0, core 1 reserved for the scheduler process), 615-700 with both cores bound. An
    idle server takes no CPU (its threads sleep), so a learner sharing the cores loses nothing while generation
    waits; vLLM warns that it reserves no core for its scheduler.
    """
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return {"VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def server_command(settings: GenerationSettings) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start the server."""
    device = resolve_device(settings.device)
    dtype = settings.dtype if settings.dtype != "auto" or device == "cuda" else "float32"
    utilization = settings.gpu_memory_utilization or (0.85 if device == "cuda" else 0.3)
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(settings.model),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--dtype",
        dtype,
        "--gpu-memory-utilization",
        str(utilization),
        "--logprobs-mode",
        "processed_logprobs",
        "--enable-scale-out",
        "--generation-config",
        "vllm",  # the model's sampling defaults (top-k, top-p) would bend the log-probs
        "--worker-extension-cls",
        WORKER_EXTENSION,
        "--disable-uvicorn-access-log",  # rollout workers poll /weight_info many times a second: a line each
        *(["--max-model-len", str(settings.max_model_len)] if settings.max_model_len else []),
        *(["--served-model-name", settings.served_model_name] if settings.served_model_name else []),
        *(["--tensor-parallel-size", str(settings.tensor_parallel_size)] if settings.tensor_parallel_size > 1 else []),
        *(["--data-parallel-size", str(settings.data_parallel_size)] if settings.data_parallel_size > 1 else []),
        *settings.extra_args,
    ]
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    if settings.weight_transfer != "file":  # vLLM's own engine receives them (trainer/weight_sync/)
        argv += ["--weight-transfer-config", json.dumps({"backend": settings.weight_transfer})]
    if settings.weight_transfer == "ipc":
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # IPC handles arrive pickled over HTTP
    if device == "cpu":
        # vLLM 0.32 on CPU kills its engine when a seeded request's prefill is split over two engine steps
        # ("CPU Generator does not use offset", in the bookkeeping of the discarded sample). Many groups in flight
        # overflow the step's token budget, so prefills must be scheduled whole.
        argv += ["--no-enable-chunked-prefill"]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
        env[BUSY_LOOP_ENV] = str(CPU_BUSY_LOOP_S)
        if settings.cpu_cores == "all":
            env.update(cpu_binding_on_every_core())
    return argv, env
