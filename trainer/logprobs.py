"""Rollout samples as padded tensors, and the current policy's log-probs and entropies of their completions."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from cfpo.sample import Sample


@dataclass(frozen=True)
class PackedBatch:
    """Prompt+completion sequences right-padded to one width; completion tensors are ``[B, T]``."""

    input_ids: Tensor  # [B, L]
    attention_mask: Tensor  # [B, L]
    prompt_lengths: Tensor  # [B]
    completion_ids: Tensor  # [B, T]
    completion_mask: Tensor  # [B, T] bool: real tokens selected for training
    behaviour_logprobs: Tensor  # [B, T]
    advantages: Tensor  # [B]
    min_versions: Tensor  # [B]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: Tensor) -> PackedBatch:
        return PackedBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def pack(samples: list[Sample], pad_token_id: int = 0) -> PackedBatch:
    if not samples:
        raise ValueError("samples: the batch is empty")
    width = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    completion_width = max(len(s.completion_ids) for s in samples)
    B = len(samples)
    input_ids = torch.full((B, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, width), dtype=torch.long)
    completion_ids = torch.full((B, completion_width), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((B, completion_width), dtype=torch.bool)
    behaviour = torch.zeros((B, completion_width), dtype=torch.float32)
    for i, s in enumerate(samples):
        sequence = s.prompt_ids + s.completion_ids
        n = len(s.completion_ids)
        input_ids[i, : len(sequence)] = torch.tensor(sequence)
        attention_mask[i, : len(sequence)] = 1
        completion_ids[i, :n] = torch.tensor(s.completion_ids)
        completion_mask[i, :n] = torch.tensor(s.completion_mask) if s.completion_mask is not None else True
        behaviour[i, :n] = torch.tensor(s.behaviour_logprobs)
    return PackedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_lengths=torch.tensor([len(s.prompt_ids) for s in samples]),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        behaviour_logprobs=behaviour,
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        min_versions=torch.tensor([s.min_version for s in samples]),
    )


def completion_logprobs(model: torch.nn.Module, batch: PackedBatch, temperature: float) -> tuple[Tensor, Tensor]:
    """Log-prob and entropy of each completion token under softmax(logits / temperature), ``[B, T]`` each.

    The division by the temperature makes these the log-probs of the distribution generation sampled from,
    so on-policy the ratio against the behaviour log-probs is 1 up to numerics. Only what the completions need is
    computed: columns that are padding in every row are cut (a micro-batch is padded to its whole batch's width),
    and the output head runs only from the first position that predicts a completion token (``logits_to_keep``),
    not over the prompts. Padded completion positions come back as 0.
    """
    lengths = batch.attention_mask.sum(1)
    width = int(lengths.max())
    first = int(batch.prompt_lengths.min()) - 1  # the logit at position p predicts token p + 1
    logits = model(
        input_ids=batch.input_ids[:, :width],
        attention_mask=batch.attention_mask[:, :width],
        logits_to_keep=width - first,
    ).logits  # positions first .. width - 1
    T = batch.completion_ids.shape[1]
    completion_lengths = lengths - batch.prompt_lengths
    kept = int(completion_lengths.max())  # completion columns holding a token in some row
    # Completion token t of row i is predicted at position prompt_length_i - 1 + t, here shifted by ``first``.
    positions = batch.prompt_lengths[:, None] - 1 - first + torch.arange(kept, device=logits.device)[None, :]
    positions = positions.clamp(max=logits.shape[1] - 1)
    completion_logits = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])).float()
    log_probs = torch.log_softmax(completion_logits / temperature, dim=-1)
    token_logprobs = log_probs.gather(-1, batch.completion_ids[:, :kept, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    real = torch.arange(kept, device=logits.device)[None, :] < completion_lengths[:, None]
    padding = (0, T - kept)
    return (
        torch.nn.functional.pad(token_logprobs.where(real, 0.0), padding),
        torch.nn.functional.pad(entropy.where(real, 0.0), padding),
    )
