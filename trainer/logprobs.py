"""Rollout samples as padded tensors, and the current policy's log-probs and entropies of their completions."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from cfpo.config import LOGIT_CHUNK_TOKENS
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


def completion_logprobs(
    model: torch.nn.Module,
    batch: PackedBatch,
    temperature: float,
    logit_chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> tuple[Tensor, Tensor]:
    """Log-prob and entropy of each completion token under softmax(logits / temperature), ``[B, T]`` each.

    The division by the temperature makes these the log-probs of the distribution generation sampled from,
    so on-policy the ratio against the behaviour log-probs is 1 up to numerics. Only what the completions need is
    computed: columns that are padding in every row are cut (a micro-batch is padded to its whole batch's width),
    and the output head runs only on completion tokens, ``logit_chunk_tokens`` of them at a time, so the
    full-vocabulary fp32 logits of a whole micro-batch never exist at once. Padded positions come back as 0.
    """
    lengths = batch.attention_mask.sum(1)
    width = int(lengths.max())
    first = int(batch.prompt_lengths.min()) - 1  # the hidden state at position p predicts token p + 1
    hidden = _last_hidden_state(model, batch.input_ids[:, :width], batch.attention_mask[:, :width])[:, first:]
    T = batch.completion_ids.shape[1]
    completion_lengths = lengths - batch.prompt_lengths
    kept = int(completion_lengths.max())  # completion columns holding a token in some row
    # Completion token t of row i is predicted at position prompt_length_i - 1 + t, here shifted by ``first``.
    columns = torch.arange(kept, device=hidden.device)[None, :]
    real = columns < completion_lengths[:, None]
    positions = batch.prompt_lengths[:, None] - 1 - first + columns
    rows = torch.arange(len(batch), device=hidden.device)[:, None].expand_as(positions)
    head = _unwrapped(model).get_output_embeddings()
    token_logprobs, entropy = _head_in_pieces(
        head, hidden[rows[real], positions[real]], batch.completion_ids[:, :kept][real], temperature, logit_chunk_tokens
    )
    placed = torch.nn.functional.pad(real, (0, T - kept))  # [B, T]: where each computed value goes
    zeros = torch.zeros(placed.shape, dtype=token_logprobs.dtype, device=hidden.device)
    return zeros.masked_scatter(placed, token_logprobs), zeros.masked_scatter(placed, entropy)


def _unwrapped(model: torch.nn.Module) -> Any:
    """The Hugging Face model inside a DeepSpeed engine (or the model itself): a ``PreTrainedModel``, whose
    ``get_decoder`` and ``get_output_embeddings`` torch's typing of ``Module`` does not know."""
    return getattr(model, "module", model)


def _last_hidden_state(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The final (normed) hidden states, ``[B, L, H]``, without the output head over every position.

    With a gradient, this goes through the model's own forward (the engine's, in training): DeepSpeed's ZeRO-3
    counts micro-steps and runs its backward prologue from hooks on that forward, and without them each
    micro-batch's gradient replaces the last one's instead of adding to it. ``logits_to_keep=1`` keeps the head to
    one position; ``hidden_states[-1]`` is the normed last hidden state in transformers 5. Without a gradient the
    decoder alone is called, which keeps no per-layer states.
    """
    if torch.is_grad_enabled():
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,  # nothing decodes after this forward
        )
        return outputs.hidden_states[-1]
    decoder = _unwrapped(model).get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _head_in_pieces(
    head: torch.nn.Module, hidden: Tensor, token_ids: Tensor, temperature: float, piece_tokens: int
) -> tuple[Tensor, Tensor]:
    """Log-prob and entropy of each of ``token_ids`` (``[N]``) from its hidden state (``[N, H]``).

    Each piece of ``piece_tokens`` tokens is checkpointed when a gradient is taken: its fp32 logits are made
    again in the backward pass instead of being kept, so at most one piece's logits exist at a time.
    """
    checkpointed = torch.is_grad_enabled() and len(hidden) > piece_tokens
    pieces = [
        checkpoint(_plain_head, head, h, ids, temperature, use_reentrant=False)
        if checkpointed
        else _plain_head(head, h, ids, temperature)
        for h, ids in zip(hidden.split(piece_tokens), token_ids.split(piece_tokens), strict=True)
    ]
    return torch.cat([lp for lp, _ in pieces]), torch.cat([e for _, e in pieces])


def _plain_head(head: torch.nn.Module, hidden: Tensor, token_ids: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    log_probs = torch.log_softmax(head(hidden).float() / temperature, dim=-1)
    token_logprobs = log_probs.gather(-1, token_ids[:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return token_logprobs, entropy
