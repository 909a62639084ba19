"""``python -m benchmarks.gpu_check [--device cuda|cpu] [--out DIR]`` (``scripts/gpu-check.sh``): the learner's GPU
path, checked in minutes with only PyTorch, transformers and a few carried wheels (no vLLM, no stack).

Checks, each a row of one table and a record in ``OUT/gpu-check.json``, whether or not the others pass:

- ``learner ZeRO-0`` / ``learner ZeRO-3``: optimizer steps in bf16 (ZeRO-0 runs as stage 1: fp32 gradient accumulation
  needs it, ``trainer.learner.deepspeed_config``) on a random model with Qwen2.5-0.5B's shapes and
  long completions (gradient checkpointing on, micro-batches by a token budget): peak memory, step seconds, MFU.
  ZeRO-3 passes only if its first step's gradient norm is ZeRO-0's within ``GRAD_NORM_AGREEMENT``;
- ``export under ZeRO-3``: the weights gathered and staged as the file transport does (every tensor at its full
  shape, bf16, no ``lm_head`` beside tied embeddings), bytes counted;
- ``log-prob parity``: the head in pieces (with and without a gradient) against the full logits;
- ``launcher``: ``python -m torch.distributed.run --standalone --nproc-per-node=1 -m trainer.distributed``.

Each learner check runs in a process of its own, so its peak memory is its own. ``--device cpu`` runs the same
checks on small shapes (CI runs it: ``tests/benchmarks/test_gpu_check.py``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import typer

from benchmarks.learner_memory import QWEN25_05B

Device = Literal["cuda", "cpu"]
SHAPES: dict[str, dict[str, Any]] = {
    "cuda": QWEN25_05B,
    "cpu": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}
LENGTHS = {"cuda": (128, 4096), "cpu": (16, 48)}  # prompt, completion tokens per sequence
SEQUENCES, STEPS = 8, 3  # the first step is a warm-up: its seconds are not the step's
GRAD_NORM_AGREEMENT = 0.01  # relative: bf16 forward and backward, the same fp32 master weights and batch
PARITY_LIMIT = 0.02  # max |log-prob difference| per token: bf16 logits, the same rows in different GEMM shapes
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense, SXM, from the vendor's datasheets


def build_model(device: Device, directory: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**SHAPES[device])).save_pretrained(directory)
    return directory


def _samples(device: Device) -> list:
    import torch

    from cfpo.sample import Sample

    prompt, completion = LENGTHS[device]
    generator = torch.Generator().manual_seed(0)
    vocabulary = SHAPES[device]["vocab_size"]
    lengths = [completion * (2 * SEQUENCES - i) // (2 * SEQUENCES) for i in range(SEQUENCES)]  # full to half
    return [
        Sample(
            prompt_ids=torch.randint(vocabulary, (prompt,), generator=generator).tolist(),
            completion_ids=torch.randint(vocabulary, (lengths[i],), generator=generator).tolist(),
            behaviour_logprobs=[-math.log(vocabulary)] * lengths[i],
            advantage=1.0 if i % 2 else -1.0,
            reward=float(i % 2),
            min_version=0,
            max_version=0,
        )
        for i in range(SEQUENCES)
    ]


def learner_check(device: Device, model: Path, zero_stage: int, staging: Path) -> dict:
    """``STEPS`` optimizer steps; under ZeRO-3, then the export. Run in a process of its own."""
    import torch

    from cfpo.config import LearnerConfig
    from trainer.learner import Learner
    from trainer.weight_sync import full_parameters
    from trainer.weight_sync.file import StagedWeights

    samples = _samples(device)
    prompt, completion = LENGTHS[device]
    config = LearnerConfig(
        batch_size=SEQUENCES,
        precision="bf16",
        zero_stage=zero_stage,
        gradient_checkpointing="on",
        max_tokens_per_micro_batch=2 * (prompt + completion),
    )
    learner = Learner(model, config)
    seconds, norms = [], []
    for _ in range(STEPS):
        started = time.perf_counter()
        (step,) = learner.train_on(samples)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        norms.append(step.metrics["grad_norm"])
    step_seconds = min(seconds[1:])
    parameters = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in learner.engine.module.parameters())
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    result: dict = {
        "zero_stage": learner.engine.zero_optimization_stage(),
        "step_seconds": step_seconds,
        "grad_norm": norms[0],
        "peak_memory_gb": _peak_memory_gb(device),
        "mfu": _mfu(6 * parameters * tokens / step_seconds, device),
        "parameters": parameters,
        "tokens_per_step": tokens,
    }
    if zero_stage == 3:
        module = learner.engine.module
        with full_parameters(module):
            path = StagedWeights(staging, "gpu-check").write(module)
            expected = {name: list(p.shape) for name, p in module.named_parameters()}
        result["export"] = _export_check(path, expected)
    return result


def _export_check(path: Path, expected: dict[str, list[int]]) -> dict:
    """The staged file's header against the model's full shapes: bf16, tied head left out, every byte there."""
    length = int.from_bytes(path.read_bytes()[:8], "little")
    header = {k: v for k, v in json.loads(path.read_bytes()[8 : 8 + length]).items() if k != "__metadata__"}
    expected.pop("lm_head.weight", None)
    shapes_match = {name: entry["shape"] for name, entry in header.items()} == expected
    dtypes = sorted({entry["dtype"] for entry in header.values()})
    bytes_counted = sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values())
    return {
        "passed": shapes_match and dtypes == ["BF16"] and "lm_head.weight" not in header,
        "tensors": len(header),
        "full_shapes": shapes_match,
        "dtypes": dtypes,
        "bytes": bytes_counted,
    }


def parity_check(device: Device, model_dir: Path) -> dict:
    """The head in pieces, with a gradient (the engine's path) and without, against the full logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.logprobs import completion_logprobs, pack

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(torch.device(device))
    batch = pack(_samples(device)[:2]).to(device)
    prompt, _ = LENGTHS[device]
    with torch.no_grad():
        n = int(batch.completion_mask[0].sum())
        logits = model(input_ids=batch.input_ids[:1, : prompt + n]).logits[0, prompt - 1 : prompt + n - 1]
        full = torch.log_softmax(logits.float(), -1).gather(-1, batch.completion_ids[0, :n, None]).squeeze(-1)
        without_grad = completion_logprobs(model, batch, 1.0, logit_chunk_tokens=256)[0][0, :n]
    with torch.enable_grad():
        with_grad = completion_logprobs(model, batch, 1.0, logit_chunk_tokens=256)[0][0, :n].detach()
    differences = {
        "no_grad_max_abs": float((without_grad - full).abs().max()),
        "grad_max_abs": float((with_grad - full).abs().max()),
    }
    return {**differences, "passed": max(differences.values()) <= PARITY_LIMIT}


def launcher_check() -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m"]
    done = subprocess.run([*command, "trainer.distributed"], capture_output=True, text=True, timeout=300)
    return {"passed": done.returncode == 0 and "process group ready" in done.stdout, "output": done.stdout[-500:]}


def _peak_memory_gb(device: Device) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _mfu(flops_per_second: float, device: Device) -> float | None:
    import torch

    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in name), None)
    return flops_per_second / peak if peak else None


def _in_child(check: str, device: Device, model: Path, work: Path) -> dict:
    """One learner check in a fresh process: ``python -m benchmarks.gpu_check --child STAGE``."""
    result = work / f"{check}.json"
    argv = [sys.executable, "-m", "benchmarks.gpu_check", "--device", device, "--child", check, "--out", str(work)]
    done = subprocess.run([*argv, "--model", str(model)], capture_output=True, text=True, timeout=600)
    if done.returncode:
        return {"passed": False, "error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(result.read_text())


def run_checks(device: Device, out: Path) -> dict[str, dict]:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model = build_model(device, work / "model")
        for stage in (0, 3):
            results[f"learner ZeRO-{stage}"] = _in_child(f"zero{stage}", device, model, work)
        zero3 = results["learner ZeRO-3"]
        if "export" in zero3:
            results["export under ZeRO-3"] = zero3.pop("export")
        zero0_norm = results["learner ZeRO-0"].get("grad_norm")
        results["learner ZeRO-0"].setdefault("passed", zero0_norm is not None)
        if "grad_norm" in zero3 and zero0_norm:
            agreement = abs(zero3["grad_norm"] - zero0_norm) / zero0_norm
            zero3.update(grad_norm_vs_zero0=agreement, passed=agreement <= GRAD_NORM_AGREEMENT)
        for name, check in (("log-prob parity", lambda: parity_check(device, model)), ("launcher", launcher_check)):
            try:
                results[name] = check()
            except Exception:
                results[name] = {"passed": False, "error": traceback.format_exc()[-2000:]}
    return results


def _table(device: Device, results: dict[str, dict]) -> str:
    lines = [f"GPU check on {device}", "", "| check | passed | figures |", "|---|---|---|"]
    for name, result in results.items():
        figures = ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in result.items()
            if key not in ("passed", "error", "output") and value is not None
        )
        lines.append(f"| {name} | {'yes' if result.get('passed') else 'NO'} | {figures or result.get('error', '')} |")
    return "\n".join(lines)


def main(
    device: str = typer.Option("cuda", help="cuda: Qwen2.5-0.5B shapes, 4096-token completions; cpu: small shapes"),
    out: Path = typer.Option(Path("benchmarks/results/gpu"), help="where gpu-check.json and gpu-check.md go"),
    child: str = typer.Option(None, hidden=True),
    model: Path = typer.Option(None, hidden=True),
) -> None:
    if device not in SHAPES:
        raise typer.BadParameter(f"--device: {device!r} is not one of cuda, cpu")
    checked: Device = "cuda" if device == "cuda" else "cpu"
    if child is not None:  # one learner check, in the process run_checks started for it
        result = learner_check(checked, model, int(child.removeprefix("zero")), out / "staging")
        (out / f"{child}.json").write_text(json.dumps(result))
        return
    if checked == "cuda" and not _cuda_available():
        raise typer.BadParameter("--device cuda: no CUDA device is visible; use --device cpu")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = run_checks(checked, out)
    table = _table(checked, results)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps({"device": checked, "results": results}, indent=2) + "\n")
    (out / "gpu-check.md").write_text(table + "\n")
    if not all(result.get("passed") for result in results.values()):
        raise typer.Exit(1)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    typer.run(main)
