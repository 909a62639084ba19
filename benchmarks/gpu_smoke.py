"""The GPU smoke test (``scripts/gpu-smoke.sh``): vLLM CUDA and the DeepSpeed learner on SmolLM2-135M, each weight
transport pushed once, log-prob parity checked before and after. It has not run yet: no machine with GPUs and
package access has been available to the project.

Phases, each recorded in ``OUT/smoke.json`` whether or not the others pass:
start (the server on the transport the GPUs allow: ipc on one, nccl with the server on GPU 1 on two or more),
parity0 (vLLM's log-probs against the learner's on the same tokens), steps (two optimizer steps), native (the
native transport's push, then parity against the updated learner), file (one more step, the file transport's push,
parity again).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from cfpo.config import WeightTransfer

PROMPTS = ["Question: what is 3 + 4? Answer:", "Question: what is 12 * 9?", "The answer is", "Count to five:"]
GROUP, TEMPERATURE, PORT = 4, 1.0, 8123
PARITY_LIMIT = 0.05  # mean |logp difference| per token, bf16 on both sides


def main(out: Path) -> int:
    from cfpo.clients.generation import GenerationClient
    from cfpo.models import prepare_smollm2

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {"gpus": {"count": torch.cuda.device_count()}}
    transfer: WeightTransfer = "nccl" if torch.cuda.device_count() >= 2 else "ipc"
    model_dir = prepare_smollm2(out / "smollm2-135m-instruct")
    server = _start_server(model_dir, transfer, out / "generation.log", results)
    state: dict = {"client": GenerationClient(f"http://127.0.0.1:{PORT}"), "model_dir": model_dir}
    try:
        for name, phase in (
            ("parity0", _parity0),
            ("steps", _steps),
            ("native", lambda s: _push(s, transfer)),
            ("file", lambda s: _push(s, "file")),
        ):
            _record(results, name, functools.partial(phase, state))
    finally:
        server.terminate()
        server.wait(60)
        (out / "smoke.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0 if all(r.get("ok") for r in results.values() if isinstance(r, dict) and "ok" in r) else 1


def _record(results: dict, name: str, phase: Callable[[], dict]) -> None:
    started = time.perf_counter()
    try:
        results[name] = {"ok": True, **phase()}
    except Exception as error:  # a failed phase is a result: the next phases still run
        results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
    results[name]["seconds"] = round(time.perf_counter() - started, 2)


def _start_server(model_dir: Path, transfer: WeightTransfer, log: Path, results: dict) -> subprocess.Popen:
    from services.generation.launch import server_command
    from services.generation.settings import GenerationSettings

    settings = GenerationSettings(
        model=model_dir,
        port=PORT,
        device="cuda",
        gpu_memory_utilization=0.3,
        max_model_len=1024,
        weight_transfer=transfer,
        extra_args=["--enforce-eager"],
    )
    argv, env = server_command(settings)
    if transfer == "nccl":
        env["CUDA_VISIBLE_DEVICES"] = "1"  # NCCL cannot hold two ranks on one GPU; the learner keeps GPU 0
    server = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    started = time.perf_counter()
    results["start"] = {"ok": False, "transfer": transfer}
    while time.perf_counter() - started < 300 and server.poll() is None:
        try:
            import httpx

            if httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=2).status_code == 200:
                results["start"] = {"ok": True, "transfer": transfer, "seconds": round(time.perf_counter() - started)}
                break
        except Exception:
            pass
        time.sleep(2)
    return server


def _samples(state: dict) -> list:
    from transformers import AutoTokenizer

    from cfpo.sample import Sample

    tokenizer = AutoTokenizer.from_pretrained(state["model_dir"])
    samples: list[Sample] = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        for c in state["client"].generate(ids, n=GROUP, temperature=TEMPERATURE, max_tokens=24, seed=3):
            samples.append(
                Sample(
                    prompt_ids=ids,
                    completion_ids=c.token_ids,
                    behaviour_logprobs=c.logprobs,
                    advantage=1.0 if len(samples) % 2 else -1.0,
                    reward=0.0,
                    min_version=c.min_version,
                    max_version=c.max_version,
                )
            )
    return samples


def _parity(state: dict) -> dict:
    """vLLM's log-probs of fresh samples against the learner's, on exactly those tokens."""
    from trainer.logprobs import completion_logprobs, pack

    samples = _samples(state)
    learner = state["learner"]
    batch = pack(samples, learner.pad_token_id).to(learner.engine.device)
    with torch.no_grad():
        ours, _ = completion_logprobs(learner.engine.module, batch, TEMPERATURE)
    difference = (ours.float() - batch.behaviour_logprobs.float()).abs()[batch.completion_mask.bool()]
    mean = float(difference.mean())
    assert mean < PARITY_LIMIT, f"mean |logp difference| {mean:.4f} >= {PARITY_LIMIT}"
    return {"mean_abs": mean, "p99_abs": float(difference.quantile(0.99)), "max_abs": float(difference.max())}


def _parity0(state: dict) -> dict:
    from cfpo.config import LearnerConfig
    from trainer.learner import Learner

    state["learner"] = Learner(state["model_dir"], LearnerConfig(batch_size=len(PROMPTS) * GROUP, precision="bf16"))
    return _parity(state)


def _steps(state: dict) -> dict:
    results = state["learner"].train_on(_samples(state)) + state["learner"].train_on(_samples(state))
    losses = [r.metrics["loss"] for r in results]
    assert all(map(lambda x: x == x and abs(x) != float("inf"), losses)), f"losses {losses}"
    return {"versions": [r.version for r in results], "losses": losses}


def _push(state: dict, transfer: WeightTransfer) -> dict:
    from trainer.weight_sync import open_weight_sync

    learner, client = state["learner"], state["client"]
    if transfer == "file":
        learner.train_on(_samples(state))
    sync = open_weight_sync(
        transfer, [client], staging_dir=Path("/dev/shm/cfpo-smoke"), master_address="127.0.0.1", master_port=29561
    )
    update = sync.push(learner.engine.module, learner.version, run="smoke")
    served = client.version()
    assert (served.run, served.number) == ("smoke", learner.version), f"the server serves {served}"
    parity = _parity(state)
    sync.release("smoke")
    sync.close()
    assert update is not None
    return {"push_seconds": update.push_seconds, "bytes": update.bytes, "parity": parity}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-smoke")))
