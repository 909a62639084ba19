"""The peer: TRL's ``GRPOTrainer`` (synchronous; plain transformers generation, no vLLM) on the pipeline's task and
settings, in a process of its own. Times every training step, the part of it spent in TRL's generation and
scoring (``_generate_and_score_completions``, timed by wrapping it), and then TRL's training step alone (loss,
backward, clipping, optimizer step) on a batch TRL prepared.

The reward is the reward service's own functions (``services.reward.functions``), weighted as the service
weighs them, called in-process: the same values as the pipeline's, without its HTTP hop and process pool.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field, JsonValue

from benchmarks.child import child_main
from cfpo.config import StrictModel


class PeerPrompt(StrictModel):
    prompt: str = Field(description="rendered exactly as the pipeline renders it (chat template or plain format)")
    question: str = Field(description="the user message, which the reward functions see as the prompt")
    reference: str
    metadata: dict[str, JsonValue]


class TrlConfig(StrictModel):
    model: Path
    prompts: list[PeerPrompt] = Field(description="in the order the pipeline draws them, prompts_per_step per step")
    prompts_per_step: int
    group_size: int
    micro_batch_size: int = Field(
        description="completions per forward, as the pipeline's learner (the rest "
        "accumulated): one forward of 128 completions needs more than 24 GB"
    )
    max_tokens: int
    learning_rate: float
    temperature: float
    epsilon: float
    reward_weights: dict[str, float]
    steps: int = Field(description="timed steps, after one untimed")
    repeats: int = Field(description="timed training steps alone, after one untimed")
    output_dir: Path
    seed: int


def measure(config: TrlConfig) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    args = GRPOConfig(
        output_dir=str(config.output_dir),
        max_steps=config.steps + 1,
        seed=config.seed,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.prompts_per_step * config.group_size // config.micro_batch_size,
        num_generations=config.group_size,
        max_completion_length=config.max_tokens,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        loss_type="grpo",
        epsilon=config.epsilon,
        beta=0.0,
        num_iterations=1,
        scale_rewards="group",
        # as the pipeline's learner: fp32, no activation recomputation
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        shuffle_dataset=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    dataset = Dataset.from_list(
        [{**p.model_dump(exclude={"metadata"}), "metadata": json.dumps(p.metadata)} for p in config.prompts]
    )
    clock = StepClock()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(config.model),
        reward_funcs=_reward(config.reward_weights),
        args=args,
        train_dataset=dataset,
        callbacks=[clock],
    )
    generation_seconds = _time_generation(trainer)
    trainer.train()
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    return {
        "step_seconds": clock.seconds[1:],
        "generation_seconds": generation_seconds[1:],
        "completion_tokens": lengths[1:],
        "train_step_seconds": _train_step_alone(trainer, config.repeats),
        "threads": torch.get_num_threads(),
    }


def _reward(weights: dict[str, float]):
    from services.reward.functions import ScoreInput, call

    def reward(prompts, completions, question, reference, metadata, **_) -> list[float]:
        return [
            _weighted(call, ScoreInput(q, c, r, json.loads(m)), weights)
            for q, c, r, m in zip(question, completions, reference, metadata)
        ]

    return reward


def _weighted(call, item, weights: dict[str, float]) -> float:
    """The reward service's combination: the weighted sum, 0 if any function fails."""
    try:
        return sum(weight * call(name, item)[0] for name, weight in weights.items())
    except Exception:
        return 0.0


def _time_generation(trainer) -> list[float]:
    """Wrap TRL's generation-and-scoring phase so each call's seconds are recorded."""
    seconds: list[float] = []
    generate_and_score = trainer._generate_and_score_completions

    def timed(inputs):
        started = time.perf_counter()
        output = generate_and_score(inputs)
        seconds.append(time.perf_counter() - started)
        return output

    trainer._generate_and_score_completions = timed
    return seconds


def _train_step_alone(trainer, repeats: int) -> list[float]:
    """TRL's loss and backward on each micro-batch (scaled as its training loop scales them), gradient clipping
    and optimizer step, on the last batch it prepared; the first of ``repeats + 1`` untimed."""
    model, micro_batches = trainer.model, trainer._buffered_inputs
    model.train()
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for inputs in micro_batches:
            loss = trainer.compute_loss(model, inputs) / len(micro_batches)
            trainer.accelerator.backward(loss)
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    return seconds[1:]


if __name__ == "__main__":
    child_main(TrlConfig, measure)
