"""The generation service on a real vLLM CPU server: exact log-probs, versions, in-place weight updates.

The model is the tiny test model with tied embeddings, the case where an in-place reload is easiest to get
silently wrong on CPU. Its reference is transformers in float32 with the same weights.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from cfpo.clients.generation import GenerationClient, GenerationError, PolicyVersion, WeightUpdateError
from cfpo.models import build_tiny_model
from cfpo.sample import Sample
from tests.servers import free_port, python_module, running
from trainer.logprobs import completion_logprobs, pack
from trainer.weight_sync.file import FileWeightSync, StagedWeights

pytestmark = pytest.mark.slow

PROMPTS = ["Question: what is 3 + 4? Answer:", "Question: what is 12 * 9?", "The answer is"]
LOGPROB_TOLERANCE = 1e-4


@dataclass
class Served:
    """The running server and a transformers copy of whatever weights it serves now."""

    client: GenerationClient
    url: str
    model: torch.nn.Module
    version: int
    prompt_ids: list[list[int]]
    eos_token_id: int
    session: int  # the server's session id, shared by vLLM's engine and worker processes
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from transformers import AutoTokenizer

    model_dir = build_tiny_model(tmp_path_factory.mktemp("tied-model"), seed=1, tie_word_embeddings=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("logs") / "generation.log"
    argv = python_module("services.generation", "--model", str(model_dir), "--port", str(port))
    with running(argv, f"{url}/health", log=log) as server:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        client = GenerationClient(url)
        yield Served(
            client, url, model, 0, [tokenizer(p).input_ids for p in PROMPTS], tokenizer.eos_token_id, server.pid, log
        )
        client.close()


def _hf_greedy(model, prompt_ids, max_tokens, eos_token_id):
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_tokens,
            pad_token_id=eos_token_id,
        )
    tokens = output[0, len(prompt_ids) :].tolist()
    return tokens[: tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens


def _max_logprob_error(served, temperature, seed):
    """Sample from the server and compare its log-probs with the learner's computation on the same tokens."""
    samples = []
    for prompt_ids in served.prompt_ids:
        for c in served.client.generate(prompt_ids, n=4, temperature=temperature, max_tokens=12, seed=seed):
            samples.append(
                Sample(
                    prompt_ids=prompt_ids,
                    completion_ids=c.token_ids,
                    behaviour_logprobs=c.logprobs,
                    advantage=0.0,
                    min_version=c.min_version,
                    max_version=c.max_version,
                )
            )
    batch = pack(samples)
    with torch.no_grad():
        learner_logprobs, _ = completion_logprobs(served.model, batch, temperature)
    return float((learner_logprobs - batch.behaviour_logprobs)[batch.completion_mask].abs().max())


def _greedy_matches_transformers(served):
    for prompt_ids in served.prompt_ids:
        [completion] = served.client.generate(prompt_ids, temperature=0.0, max_tokens=12)
        assert completion.token_ids == _hf_greedy(served.model, prompt_ids, 12, served.eos_token_id)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vllm_worker(session: int) -> int:
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and (entry / "comm").read_text().strip() == "VLLM::Worker"
                and os.getsid(int(entry.name)) == session
            ):
                return int(entry.name)
        except (OSError, ProcessLookupError):
            continue
    raise AssertionError(f"no VLLM::Worker process in session {session}")


def test_the_worker_sleeps_as_soon_as_it_is_idle(served):
    # vLLM's worker spins on its task queue for 1 s after each message unless the launcher shortens the spin
    # (worker_extension); a pipeline sends messages more often than that, and the learner trains on the same cores.
    worker = _vllm_worker(served.session)
    served.client.generate(served.prompt_ids[0], max_tokens=4)
    before = _cpu_seconds(worker)
    time.sleep(0.8)
    assert _cpu_seconds(worker) - before < 0.1


def test_metrics_are_vllms(served):
    text = httpx.get(f"{served.url}/metrics").text
    assert "vllm:num_requests_running" in text


def test_greedy_tokens_equal_transformers(served):
    _greedy_matches_transformers(served)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_learners(served, temperature):
    assert _max_logprob_error(served, temperature, seed=5) < LOGPROB_TOLERANCE


def test_completions_carry_their_version(served):
    completions = served.client.generate(served.prompt_ids[0], n=3, max_tokens=4, seed=1)
    assert len(completions) == 3
    assert all((c.min_version, c.max_version) == (served.version, served.version) for c in completions)
    assert all(c.runs == (None,) for c in completions)  # the checkpoint the server started on
    assert all(len(c.token_ids) == len(c.logprobs) > 0 for c in completions)


def test_update_changes_outputs_and_matches_transformers(served, tmp_path):
    before = [served.client.generate(p, temperature=0.0, max_tokens=12)[0].token_ids for p in served.prompt_ids]
    torch.manual_seed(7)
    with torch.no_grad():
        for parameter in served.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    new_version = served.version + 5

    staged = StagedWeights(tmp_path, "run-a")
    update = FileWeightSync([served.client], tmp_path).push(served.model, new_version, run="run-a", timeout=60)
    assert update is not None
    served.version = new_version

    tensors = {k: v for k, v in served.model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    assert update.version == new_version and update.seconds > 0 and update.staging_seconds > 0
    assert update.push_seconds == update.staging_seconds + update.seconds
    assert update.bytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert list(tmp_path.iterdir()) == [staged.path]  # kept, for the next push to rewrite in place
    assert served.client.version() == PolicyVersion("run-a", new_version)
    after = [served.client.generate(p, temperature=0.0, max_tokens=12)[0].token_ids for p in served.prompt_ids]
    assert after != before
    _greedy_matches_transformers(served)
    assert _max_logprob_error(served, 0.7, seed=9) < LOGPROB_TOLERANCE
    [completion] = served.client.generate(served.prompt_ids[0], max_tokens=4)
    assert (completion.min_version, completion.max_version) == (new_version, new_version)
    assert completion.runs == ("run-a",)


def _greedy(served):
    return [served.client.generate(p, temperature=0.0, max_tokens=12)[0].token_ids for p in served.prompt_ids]


def test_restaging_reaches_generation_only_through_a_push(served, tmp_path):
    staged = StagedWeights(tmp_path, "run-b")
    FileWeightSync([served.client], tmp_path).push(served.model, served.version + 1, run="run-b", timeout=60)
    served.version += 1
    file_before, outputs_before = staged.path.stat().st_ino, _greedy(served)
    torch.manual_seed(8)
    with torch.no_grad():
        for parameter in served.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)

    staged.write(served.model)
    assert staged.path.stat().st_ino == file_before  # rewritten in place
    assert _greedy(served) == outputs_before  # the server copied what it loaded; the file is not its weights

    served.client.update_weights(staged.path, served.version + 1, run="run-b", timeout=60)
    served.version += 1
    assert _greedy(served) != outputs_before
    _greedy_matches_transformers(served)
    staged.remove()
    assert not staged.path.exists()


def _bad_weight_files(model, directory):
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    corrupt = directory / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    wrong_shape = dict(state)
    wrong_shape["model.norm.weight"] = torch.ones(3)
    missing = {k: v for k, v in state.items() if k != "model.layers.0.mlp.up_proj.weight"}
    files = {"missing file": (directory / "absent.safetensors", "no file"), "corrupt": (corrupt, "not a readable")}
    for name, tensors, reason in (
        ("wrong shape", wrong_shape, "wrong shapes"),
        ("missing tensor", missing, "missing tensors"),
    ):
        path = directory / f"{name.replace(' ', '-')}.safetensors"
        save_file(tensors, str(path))
        files[name] = (path, reason)
    return files


def test_failed_updates_keep_the_previous_weights(served, tmp_path):
    version = served.client.version()
    before = [served.client.generate(p, temperature=0.0, max_tokens=12)[0].token_ids for p in served.prompt_ids]
    for name, (path, reason) in _bad_weight_files(served.model, tmp_path).items():
        with pytest.raises(WeightUpdateError, match=reason):
            served.client.update_weights(path, version.number + 1, timeout=30)
        assert served.client.version() == version, name
        after = [served.client.generate(p, temperature=0.0, max_tokens=12)[0].token_ids for p in served.prompt_ids]
        assert after == before, name


def test_many_seeded_requests_at_once_all_complete_and_repeat_exactly(served):
    # More prompt tokens at once than one engine step takes: with chunked prefill vLLM 0.32 CPU split a seeded
    # prompt over two steps and its engine died ("CPU Generator does not use offset"); rollout lanes do this.
    vocabulary = served.model.config.vocab_size
    prompts = [[(i * 31 + j) % (vocabulary - 10) + 5 for j in range(300)] for i in range(24)]

    def generate(i: int) -> list[list[int]]:
        completions = served.client.generate(prompts[i], n=4, temperature=1.0, max_tokens=6, seed=1000 + i)
        return [c.token_ids for c in completions]

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        together = list(pool.map(generate, range(len(prompts))))
    assert all(len(group) == 4 and all(group) for group in together)
    assert generate(3) == together[3]  # a seed gives the same completions alone as in a crowd


def test_a_timed_out_pause_leaves_the_server_serving(served):
    """``/pause`` waits for requests in flight; when it outlasts the client's timeout, the client still resumes."""
    with ThreadPoolExecutor(1) as pool:
        # 8 x 400 tokens: long enough on a busy machine that it is still running when /pause comes
        in_flight = pool.submit(served.client.generate, served.prompt_ids[0], n=8, max_tokens=400, timeout=120)
        time.sleep(0.2)
        with pytest.raises(GenerationError, match="timed out"), served.client.paused(timeout=0.05):
            pass
        in_flight.result()
    assert served.client.generate(served.prompt_ids[1], max_tokens=2, timeout=30)  # paused, it would time out


def test_polling_the_version_writes_no_log_lines(served):
    """Rollout workers ask for the served version many times a second; the log must not grow with it."""
    for _ in range(20):
        served.client.version()
    assert "GET /weight_info HTTP" not in served.log.read_text()  # uvicorn's access line (the route list names it)
