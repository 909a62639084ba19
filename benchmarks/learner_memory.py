"""``python -m benchmarks.learner_memory``: one learner step's peak RSS and seconds on a random model with
Qwen2.5-0.5B's shapes (vocabulary 151,936), 8 sequences of long completions, case by case.

Each case runs in a process of its own (``benchmarks/memory_step.py``), watched: one whose RSS passes ``--cap-gb``
is stopped and reported as over the cap, so the machine never swaps. ``--before DIR`` adds the defaults case of
another checkout's learner (its ``trainer`` and ``cfpo`` on the path), the "before" of a change. The figures go to
``OUT/learner-memory.json`` and ``.md``; benchmarks/README.md#learner-memory explains them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console

from benchmarks.report import Table, fmt, publish

HERE = Path(__file__).resolve().parent
QWEN25_05B: dict[str, Any] = dict(
    vocab_size=151_936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
PROMPT_TOKENS, SEQUENCES = 64, 8
CASES = {  # name: learner settings; the token budget holds two sequences per micro-batch
    "defaults": lambda tokens: {},
    "+ gradient checkpointing": lambda tokens: {"gradient_checkpointing": "on"},
    "+ token budget": lambda tokens: {
        "gradient_checkpointing": "on",
        "max_tokens_per_micro_batch": 2 * (PROMPT_TOKENS + tokens),
    },
}
console = Console(width=None if sys.stdout.isatty() else 160)


def build_model(directory: Path) -> Path:
    """The random Qwen2.5-0.5B-shaped model, seeded: its weights do not matter to memory or time."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).save_pretrained(directory)
    return directory


def run_case(model: Path, tokens: int, learner: dict, cap_gb: float, checkout: Path) -> dict:
    """One step in a watched child process: its result, or ``{"over_cap": True}`` if its RSS passed the cap."""
    case = {
        "model": str(model),
        "vocabulary": QWEN25_05B["vocab_size"],
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "sequences": SEQUENCES,
        "behaviour_logprob": -12.0,  # about a uniform token's log-prob under a random model: ratios near 1
        "learner": learner,
    }
    with tempfile.TemporaryDirectory() as work:
        case_path, result_path = Path(work, "case.json"), Path(work, "result.json")
        case_path.write_text(json.dumps(case))
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        child = subprocess.Popen([sys.executable, str(HERE / "memory_step.py"), case_path, result_path], env=env)
        while child.poll() is None:
            if _rss_gb(child.pid) > cap_gb:
                child.kill()
                child.wait()
                return {"over_cap": True}
            time.sleep(0.2)
        if child.returncode:
            raise RuntimeError(f"learner_memory: the case {learner} failed (exit {child.returncode})")
        return json.loads(result_path.read_text())


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    except FileNotFoundError:
        pass
    return 0.0


def _cell(result: dict | None, key: str, unit: str) -> str:
    if result is None:
        return "–"
    if result.get("over_cap"):
        return "over cap"
    return f"{fmt(result[key])}{unit}"


def main(
    tokens: list[int] = typer.Option([256, 1024], help="completion tokens per sequence, one table row set each"),
    before: Path = typer.Option(None, help="another checkout whose learner's defaults are the 'before' column"),
    cap_gb: float = typer.Option(20.0, help="stop a case whose RSS passes this (GB)"),
    out: Path = typer.Option(Path("benchmarks/results/learner-memory"), help="where the JSON and Markdown go"),
    models_dir: Path = typer.Option(Path("models"), help="where the random model is built (once)"),
) -> None:
    model = build_model(models_dir / "random-qwen2.5-0.5b-shape")
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for length in tokens:
        for name, settings in CASES.items():
            console.print(f"[bold]{length} tokens, {name}[/]")
            after = run_case(model, length, settings(length), cap_gb, HERE.parent)
            was = run_case(model, length, {}, cap_gb, before) if before and name == "defaults" else None
            rows.append({"tokens": length, "case": name, "settings": settings(length), "before": was, "after": after})
    table = Table(
        f"One learner step, {SEQUENCES} x (prompt {PROMPT_TOKENS} + completion) tokens, fp32",
        ["case", "tokens", "before: peak RSS", "before: s", "after: peak RSS", "after: s", "grad norm"],
        caption=f"peak RSS of the step's process, model load included; 'over cap': stopped at {cap_gb:g} GB",
    )
    for row in rows:
        table.add(
            row["case"],
            row["tokens"],
            _cell(row["before"], "peak_rss_gb", " GB"),
            _cell(row["before"], "seconds", ""),
            _cell(row["after"], "peak_rss_gb", " GB"),
            _cell(row["after"], "seconds", ""),
            _cell(row["after"], "grad_norm", ""),
        )
    context = {
        "model": QWEN25_05B,
        "before": str(before) if before else None,
        "cap_gb": cap_gb,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    publish(console, out, "learner-memory", "learner_memory", MemoryResult(rows=rows), [table], context)


class MemoryResult(BaseModel):
    rows: list[dict]


if __name__ == "__main__":
    typer.run(main)
