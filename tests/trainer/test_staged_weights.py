"""Staged weights: the file generation loads holds exactly the learner's tensors, rewritten in place or anew."""

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from cfpo.models import build_tiny_model
from trainer.weight_sync.file import StagedWeights


def _served_tensors(model):
    tied = model.config.tie_word_embeddings  # a tied head is the embedding, not sent
    return {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}


def _assert_file_holds(path, model):
    loaded, expected = load_file(str(path)), _served_tensors(model)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_rewrite_in_place_holds_the_new_tensors(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "model", seed=1, tie_word_embeddings=True))
    staged = StagedWeights(tmp_path / "staging", "run-a")
    _assert_file_holds(staged.write(model), model)
    first = staged.path.stat().st_ino
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-2.0)

    _assert_file_holds(staged.write(model), model)
    assert staged.path.stat().st_ino == first


def test_a_new_layout_replaces_the_file(tmp_path):
    small = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "small", seed=1, hidden_size=64))
    large = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "large", seed=2, hidden_size=128))
    staged = StagedWeights(tmp_path / "staging", "run-a")
    staged.write(small)
    first = staged.path.stat().st_ino

    _assert_file_holds(staged.write(large), large)
    assert staged.path.stat().st_ino != first
    assert [p.name for p in staged.path.parent.iterdir()] == ["run-a.safetensors"]  # no partial file left


def test_a_zero3_learner_stages_whole_tensors(tmp_path):
    """ZeRO-3 leaves each rank an empty placeholder per parameter; the export gathers them first."""
    from cfpo.config import LearnerConfig
    from trainer.learner import Learner
    from trainer.weight_sync import full_parameters

    model_dir = build_tiny_model(tmp_path / "model", seed=1, tie_word_embeddings=True)
    learner = Learner(model_dir, LearnerConfig(batch_size=4, zero_stage=3))
    module = learner.engine.module
    assert all(p.numel() == 0 for p in module.parameters())  # partitioned: a naive export would send nothing
    with full_parameters(module):
        path = StagedWeights(tmp_path / "staging", "zero3").write(module)
    _assert_file_holds(path, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
