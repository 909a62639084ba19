"""``python -m benchmarks.learner_sizing``: the learner's GPU memory by formula, for Qwen2.5 shapes on one and on
eight 80 GB GPUs (benchmarks/README.md#learner-memory derives it and checks it against the CPU measurement).

Per GPU, in bytes, for a bf16 learner (fp32 gradient accumulation, ZeRO >= 1), gradient checkpointing on:

- states: 20 per parameter (bf16 weights 2 and gradients 2, fp32 accumulated gradients 4, master weights 4, Adam's
  two moments 8), divided by the ranks under ZeRO-3;
- activations: per token of the micro-batch, each layer's checkpointed input (L x H x 2) and one layer's
  recomputed working set ((10 H + 4 I) x 2), times ``MEASURED_OVER_FORMULA``;
- the output head: one piece of ``logit_chunk_tokens`` x V fp32 logits, five times over (the logits, their
  log-softmax, the probabilities, their product for the entropy, and the gradient when the piece is recomputed).

What fits leaves ``HEADROOM`` of the GPU to the CUDA context, the allocator's fragmentation and NCCL's buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from benchmarks.report import Table
from cfpo.config import LOGIT_CHUNK_TOKENS

GB = 1e9
STATE_BYTES_PER_PARAMETER = 20
MEASURED_OVER_FORMULA = 1.15  # margin on activations: the CPU measurement came out 1.1 x the formula (README)
HEAD_COPIES = 5
HEADROOM = 0.10
GPU_GB = 80.0


@dataclass(frozen=True)
class Shape:
    name: str
    parameters: float
    layers: int
    hidden: int
    intermediate: int
    vocabulary: int = 151_936


QWEN25 = [  # from the models' config.json files
    Shape("Qwen2.5-0.5B", 0.494e9, 24, 896, 4864),
    Shape("Qwen2.5-1.5B", 1.54e9, 28, 1536, 8960),
    Shape("Qwen2.5-3B", 3.09e9, 36, 2048, 11008),
    Shape("Qwen2.5-7B", 7.62e9, 28, 3584, 18944),
    Shape("Qwen2.5-14B", 14.7e9, 48, 5120, 13824),
    Shape("Qwen2.5-32B", 32.8e9, 64, 5120, 27648),
]


def activation_bytes_per_token(shape: Shape, element_bytes: int = 2) -> float:
    per_layer_input = shape.layers * shape.hidden * element_bytes
    working_layer = (10 * shape.hidden + 4 * shape.intermediate) * element_bytes
    return per_layer_input + working_layer


def fixed_bytes(shape: Shape, ranks: int = 1) -> float:
    """States and the head's piece: what a micro-batch of any length adds its activations to."""
    states = STATE_BYTES_PER_PARAMETER * shape.parameters / ranks
    head_piece = LOGIT_CHUNK_TOKENS * shape.vocabulary * 4 * HEAD_COPIES
    return states + head_piece


def peak_bytes(shape: Shape, micro_batch_tokens: int, ranks: int = 1) -> float:
    activations = MEASURED_OVER_FORMULA * activation_bytes_per_token(shape) * micro_batch_tokens
    return fixed_bytes(shape, ranks) + activations


def largest_micro_batch(shape: Shape, ranks: int = 1, gpu_gb: float = GPU_GB) -> int:
    """Tokens per micro-batch that still fit (0: the states alone do not); the longest sequence is at most this."""
    room = gpu_gb * GB * (1 - HEADROOM) - fixed_bytes(shape, ranks)
    return max(0, int(room / (MEASURED_OVER_FORMULA * activation_bytes_per_token(shape))))


def main() -> None:
    table = Table(
        f"Learner memory by formula, bf16, gradient checkpointing, {GPU_GB:g} GB GPUs ({HEADROOM:.0%} headroom)",
        ["model", "GPUs (ZeRO)", "states + head piece GB", "MB per micro-batch token", "largest micro-batch tokens"],
    )
    for ranks, stage in ((1, 1), (8, 3)):
        for shape in QWEN25:
            table.add(
                shape.name,
                f"{ranks} ({stage})",
                round(fixed_bytes(shape, ranks) / GB, 1),
                round(MEASURED_OVER_FORMULA * activation_bytes_per_token(shape) / 1e6, 3),
                largest_micro_batch(shape, ranks) or "does not fit",
            )
    Console().print(table.rich())
    print(table.markdown())


if __name__ == "__main__":
    main()
