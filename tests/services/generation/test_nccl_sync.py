"""The NCCL weight transport against a vLLM server on a GPU (skipped on machines without CUDA)."""

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_nccl_push_changes_outputs_and_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfpo.clients.generation import GenerationClient
    from cfpo.models import build_tiny_model
    from tests.servers import free_port, python_module, running
    from trainer.weight_sync.nccl import nccl_weight_sync

    model_dir = build_tiny_model(tmp_path / "model", seed=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = python_module(
        "services.generation",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--device",
        "cuda",
        "--weight-transfer",
        "nccl",
    )
    with running(argv, f"{url}/health", log=tmp_path / "generation.log"):
        client = GenerationClient(url)
        prompt = AutoTokenizer.from_pretrained(model_dir)("Question: what is 3 + 4?").input_ids
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
        sync = nccl_weight_sync([client], master_address="127.0.0.1", master_port=free_port())
        before = client.generate(prompt, temperature=0.0, max_tokens=12)[0].token_ids
        torch.manual_seed(7)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        update = sync.push(model, 3, run="nccl")
        served_version = client.version().number
        after = client.generate(prompt, temperature=0.0, max_tokens=12)[0]
        with torch.no_grad():
            expected = model.generate(
                torch.tensor([prompt]).cuda(), do_sample=False, max_new_tokens=12, pad_token_id=0
            )[0, len(prompt) :].tolist()
        sync.close()
    assert update is not None and update.version == served_version == 3
    assert after.token_ids != before
    assert after.token_ids == expected[: len(after.token_ids)]
    assert (after.min_version, after.max_version) == (3, 3)
