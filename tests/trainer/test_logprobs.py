"""Completion log-probs computed on a padded batch (cut to what the completions need) equal each sequence's alone."""

import torch
from transformers import AutoModelForCausalLM

from cfpo.sample import Sample
from trainer.logprobs import completion_logprobs, pack


def _sample(prompt: list[int], completion: list[int]) -> Sample:
    return Sample(
        prompt_ids=prompt,
        completion_ids=completion,
        behaviour_logprobs=[0.0] * len(completion),
        advantage=1.0,
        reward=1.0,
        min_version=0,
        max_version=0,
    )


def test_padded_batch_matches_each_sequence_alone(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    # Prompts and completions of different lengths: the batch is padded on both, and no row is the longest in both.
    samples = [
        _sample([5, 6, 7, 8, 9, 10, 11], [12, 13]),
        _sample([5, 6], [7, 8, 9, 10, 11, 12]),
        _sample([20, 21, 22, 23], [24, 25, 26]),
        _sample([30, 31, 32], [33]),
    ]
    batch = pack(samples)
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(model, batch, temperature=0.7)
        for i, sample in enumerate(samples):
            alone_logprobs, alone_entropy = completion_logprobs(model, pack([sample]), temperature=0.7)
            n = len(sample.completion_ids)
            torch.testing.assert_close(logprobs[i, :n], alone_logprobs[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(entropy[i, :n], alone_entropy[0], atol=1e-5, rtol=1e-5)
            assert not logprobs[i, n:].any() and not entropy[i, n:].any()  # padding positions hold 0
        # Against the whole vocabulary's logits at every position, computed the plain way.
        logits = model(input_ids=batch.input_ids[1:2], attention_mask=batch.attention_mask[1:2]).logits[0]
        expected = (
            torch.log_softmax(logits[1:7] / 0.7, dim=-1)
            .gather(-1, torch.tensor([[7], [8], [9], [10], [11], [12]]))
            .squeeze(-1)
        )
        torch.testing.assert_close(logprobs[1], expected, atol=1e-5, rtol=1e-5)
