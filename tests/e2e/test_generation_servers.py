"""Two independent vLLM CPU servers as one generation service: the learner pushes to both, the rollout worker
spreads its groups over both and checks the version of the server it generates on, so a fixed staleness stays
exact, and both serve exactly the learner's weights."""

from __future__ import annotations

import re

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from cfpo.clients.generation import GenerationClient, PolicyVersion
from cfpo.sample import Sample
from tests.e2e.conftest import toy_spec_with
from tests.servers import free_port, python_module, running
from trainer.logprobs import completion_logprobs, pack

pytestmark = pytest.mark.slow
STEPS, K = 6, 2


def _requests_served(url: str) -> float:
    scrape = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", scrape, re.M))


def _max_logprob_error(client: GenerationClient, model, prompt_ids: list[int]) -> float:
    completions = client.generate(prompt_ids, n=4, temperature=1.0, max_tokens=12, seed=5)
    samples = [
        Sample(
            prompt_ids=prompt_ids,
            completion_ids=c.token_ids,
            behaviour_logprobs=c.logprobs,
            advantage=0.0,
            reward=0.0,
            min_version=c.min_version,
            max_version=c.max_version,
        )
        for c in completions
    ]
    batch = pack(samples, 0)
    with torch.no_grad():
        expected, _ = completion_logprobs(model, batch, 1.0)
    return float(((expected - batch.behaviour_logprobs).abs() * batch.completion_mask).max())


def test_two_servers_serve_the_learners_version_and_share_the_groups(stack, start_run, tmp_path):
    port = free_port()
    second_url = f"http://127.0.0.1:{port}"
    argv = python_module("services.generation", "--model", str(stack.model_dir), "--port", str(port))
    with running(argv, f"{second_url}/health", log=tmp_path / "second-generation.log"):
        servers = [GenerationClient(stack.generation_url), GenerationClient(second_url)]
        served_before = [_requests_served(s.base_url) for s in servers]
        both = f"{stack.generation_url},{second_url}"
        spec = toy_spec_with(
            steps=STEPS,
            checkpoint_every=STEPS,
            staleness={"mode": "fixed", "k": K},
            rollout__max_inflight_groups=4,
        )
        run = start_run(spec, generation_url=both)
        run.start_learner("--generation-urls", both)
        run.wait(timeout=400)

        rows = run.metrics()
        assert [r["step"] for r in rows] == list(range(STEPS))
        steady = [r for r in rows if not r["warm_up"]]
        assert steady and all(r["staleness_mean"] == r["staleness_max"] == K for r in steady)  # exactly k
        assert all(r["bound_violations"] == 0 for r in rows)
        for server, before in zip(servers, served_before):
            assert server.version() == PolicyVersion(run.run_id, STEPS)  # both got every push, the last included
            assert _requests_served(server.base_url) > before  # both generated groups

        tag = (run.directory / "checkpoints" / "latest").read_text()
        assert tag.startswith(f"version-{STEPS}-")
        checkpoint = run.directory / "checkpoints" / tag / "mp_rank_00_model_states.pt"
        model = AutoModelForCausalLM.from_pretrained(stack.model_dir, dtype=torch.float32).eval()
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["module"])
        prompt = [1, 42, 17, 99, 5]
        for server in servers:
            assert _max_logprob_error(server, model, prompt) < 1e-4
