"""The learner demo: CFPO against GRPO on one reused rollout batch, the paper's off-policy stress test.

A batch is sampled once from a local model; each loss then trains a fresh copy of the model on it for
``iterations`` passes (the paper's mu). The demo tables and plots, per step, how far the ratio drifts from 1,
the share of tokens outside the trust region and the KL to the sampling policy. The reward is a toy (the
share of digit tokens), so the batch has signal for a random model; the full pipeline demo replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cfpo.config import ConfigError, LearnerConfig, load_config
from cfpo.models import build_tiny_model
from trainer.learner import Learner
from trainer.sampling import sample_batch

LOSSES = ("cfpo", "grpo")
PROMPTS = [f"Question: what is {a} + {b}? Answer:" for a, b in [(1, 2), (13, 4), (7, 7), (20, 5), (31, 9), (2, 48)]]
# measured against the behaviour policy: the policy that sampled the batch every step reuses
PLOTTED = {
    "ratio deviation max |r - 1|": "ratio_dev",
    "clip fraction": "behaviour_clip_frac",
    "KL(behaviour || current), k3": "behaviour_kl_k3",
    "loss": "loss",
}

console = Console()


def _ratio_deviation(metrics: dict[str, float]) -> float:
    return max(metrics["behaviour_ratio_max"] - 1, 1 - metrics["behaviour_ratio_min"])


def run_demo(out: Path, model: Path | None, base: LearnerConfig, group_size: int) -> dict:
    """Sample one batch, train each loss on it from the same start, table and plot the drift."""
    out.mkdir(parents=True, exist_ok=True)
    seed, iterations = base.seed, base.iterations
    model_dir = model or build_tiny_model(out / "tiny-model", seed=seed)
    console.print(f"model: [bold]{model_dir}[/]  batch: {len(PROMPTS)} prompts x {group_size} samples")
    batch = sample_batch(model_dir, PROMPTS, group_size, max_new_tokens=16, seed=seed)
    history: dict[str, list[dict[str, float]]] = {loss: [] for loss in LOSSES}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console) as progress:
        for loss in LOSSES:
            task = progress.add_task(f"{loss} x {iterations} iterations", total=iterations, status="")
            config = base.model_copy(
                update={"loss": base.loss.model_copy(update={"name": loss}), "batch_size": len(batch)}
            )
            for step in Learner(model_dir, config).optimizer_steps(batch):
                metrics = {"step": step.version, **step.metrics, "ratio_dev": _ratio_deviation(step.metrics)}
                history[loss].append(metrics)
                progress.update(
                    task,
                    advance=1,
                    status=f"|r-1| {metrics['ratio_dev']:.3f}  clip {metrics['behaviour_clip_frac']:.3f}",
                )
    with (out / "metrics.jsonl").open("w") as f:
        for loss, rows in history.items():
            for row in rows:
                f.write(json.dumps({"loss_name": loss, **row}) + "\n")
    _print_table(history)
    _plot(history, out / "learner-demo.png")
    console.print(f"metrics: {out / 'metrics.jsonl'}\nplot:    {out / 'learner-demo.png'}")
    return history


def _print_table(history: dict[str, list[dict[str, float]]]) -> None:
    table = Table(title="CFPO vs GRPO on one batch reused every step")
    table.add_column("step", justify="right")
    for loss in LOSSES:
        for label in ("|r-1| max", "clip frac", "KL k3"):
            table.add_column(f"{loss} {label}", justify="right")
    for i in range(len(history[LOSSES[0]])):
        cells = [str(history[LOSSES[0]][i]["step"])]
        for loss in LOSSES:
            row = history[loss][i]
            cells += [f"{row['ratio_dev']:.3f}", f"{row['behaviour_clip_frac']:.3f}", f"{row['behaviour_kl_k3']:.4f}"]
        table.add_row(*cells)
    console.print(table)


def _plot(history: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.4))
    for ax, (title, key) in zip(axes, PLOTTED.items()):
        for loss, rows in history.items():
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", label=loss)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step (same batch)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    config: Path = typer.Option(
        Path("configs/learner-demo.yaml"), help="learner settings (the loss name is set per run)"
    ),
    out: Path = typer.Option(Path("runs/learner-demo"), help="where metrics.jsonl and the plot go"),
    model: Path = typer.Option(None, help="a local Hugging Face model directory; default: a tiny random model"),
    iterations: int = typer.Option(None, min=1, help="passes over the batch (the paper's mu); default from config"),
    group_size: int = typer.Option(4, min=2, help="samples per prompt (G)"),
) -> None:
    """CFPO against GRPO on one rollout batch reused for many optimizer steps."""
    overrides = {"iterations": iterations} if iterations else {}
    try:
        base = load_config(LearnerConfig, config, batch_size=len(PROMPTS) * group_size, **overrides)
    except ConfigError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    run_demo(out, model, base, group_size)


if __name__ == "__main__":
    typer.run(main)
