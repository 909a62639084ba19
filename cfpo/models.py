"""Local model directories in Hugging Face format; nothing is downloaded.

``build_tiny_model`` makes the random test model every test and the tiny demo use: a small Llama with a
byte-level BPE tokenizer trained on the fly on arithmetic text, saved as safetensors, in a second or two.
Its head size (32) is one vLLM's CPU attention supports.
"""

from __future__ import annotations

import random
from pathlib import Path

TINY_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>"]


def _arithmetic_corpus(seed: int, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        result = eval(f"{a}{op}{b}")  # noqa: S307 -- two integers and one operator built just above
        corpus.append(f"Question: what is {a} {op} {b}? Answer: {result}. The answer is \\boxed{{{result}}}.")
    return corpus


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random Llama and its tokenizer to ``out_dir`` and return the directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_arithmetic_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>"
    )
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    return out
