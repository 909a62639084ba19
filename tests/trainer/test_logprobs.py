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


def test_the_head_in_pieces_gives_the_whole_heads_values_and_gradients(tiny_model_dir):
    # The output head run a few tokens at a time, each piece recomputed in the backward pass, is the same function:
    # the same log-probs and entropies, and the same gradient of every parameter, up to float rounding.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    samples = [
        _sample([5, 6, 7, 8, 9, 10, 11], [12, 13]),
        _sample([5, 6], [7, 8, 9, 10, 11, 12]),
        _sample([20, 21, 22, 23], [24, 25, 26]),
    ]
    batch = pack(samples)
    weights = torch.linspace(-1, 1, batch.completion_ids.shape[1])
    results = {}
    for piece in (3, 10**6, "plain"):  # 11 completion tokens: four pieces, one, and the full logits
        model.zero_grad()
        if piece == "plain":
            logprobs, entropy = _from_full_logits(model, batch, temperature=0.7)
        else:
            logprobs, entropy = completion_logprobs(model, batch, temperature=0.7, logit_chunk_tokens=piece)
        ((logprobs * weights).sum() + entropy.sum()).backward()
        results[piece] = (logprobs.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()])
    plain_lp, plain_ent, plain_grads = results["plain"]
    assert any(g.abs().sum() > 0 for g in plain_grads)
    for lp, ent, grads in (results[3], results[10**6]):
        torch.testing.assert_close(lp, plain_lp, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ent, plain_ent, atol=1e-6, rtol=1e-5)
        for grad, plain in zip(grads, plain_grads, strict=True):
            torch.testing.assert_close(grad, plain, atol=1e-5, rtol=1e-4)  # fp32; rows batched differently


def _from_full_logits(model, batch, temperature):
    """The unchunked reference: the whole vocabulary's logits at every position, row by row."""
    logprobs = torch.zeros(batch.completion_ids.shape)
    entropy = torch.zeros(batch.completion_ids.shape)
    for i in range(len(batch)):
        start, n = int(batch.prompt_lengths[i]), int(batch.completion_mask[i].sum())
        logits = model(input_ids=batch.input_ids[i : i + 1, : start + n]).logits[0, start - 1 : start + n - 1]
        log_probs = torch.log_softmax(logits / temperature, dim=-1)
        logprobs[i, :n] = log_probs.gather(-1, batch.completion_ids[i, :n, None]).squeeze(-1)
        entropy[i, :n] = -(log_probs.exp() * log_probs).sum(-1)
    return logprobs, entropy
