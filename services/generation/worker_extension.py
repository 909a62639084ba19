"""Runs inside each vLLM worker (``--worker-extension-cls``): replaces the weights in place from a file.

Reached through vLLM's ``/collective_rpc`` dev route. The update is checked against the checkpoint the server
started from (same tensor names, same shapes) before a single weight changes, so a missing, corrupt or
mismatched file leaves the server serving the previous weights.

Imported in the worker process before the worker builds its task queue, this module also shortens that queue's
busy wait when ``$CFPO_VLLM_BUSY_LOOP_S`` is set (the launcher sets it on CPU). vLLM's worker reads the queue by
spinning (``sched_yield``) for 1 s after each message before it sleeps on a socket (``SpinCondition.busy_loop_s``
in ``vllm/distributed/device_communicators/shm_broadcast.py``, not a setting in vLLM 0.32). This pipeline sends
messages more often than that (a weight push after every optimizer step, generation in bursts), so on CPU an idle
server kept a whole core busy: one of the cores the learner trains on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

BUSY_LOOP_ENV = "CFPO_VLLM_BUSY_LOOP_S"


def _shorten_task_queue_busy_wait() -> None:
    busy_loop_s = os.environ.get(BUSY_LOOP_ENV)
    if busy_loop_s is None:
        return
    from vllm.distributed.device_communicators import shm_broadcast

    shm_broadcast.SpinCondition.__init__.__defaults__ = (float(busy_loop_s),)  # busy_loop_s, its one default


_shorten_task_queue_busy_wait()


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    if TYPE_CHECKING:  # the worker's own, for mypy only: vLLM refuses an extension that defines a worker attribute
        model_runner: Any

        def reload_weights(self, *args: Any, **kwargs: Any) -> None: ...

    def cfpo_update_weights(self, path: str) -> dict:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"weights: no file at {file}")
        try:
            with safe_open(str(file), framework="pt") as handle:
                shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 (not iterable)
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"weights: {file} is not a readable safetensors file ({error})") from None
        _check_against(shapes, self._cfpo_checkpoint_shapes(), file)

        self.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        model = self.model_runner.get_model()
        if getattr(self.model_runner.model_config.hf_config, "tie_word_embeddings", False):
            # The output head shares the embedding but is re-packed separately for the CPU kernel at load time;
            # without this the reloaded model silently keeps the old head.
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        return {"tensors": len(tensors), "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}

    def _cfpo_checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the tensors in the model directory the server was started on."""
        if not hasattr(self, "_cfpo_shapes"):
            from safetensors import safe_open

            shapes: dict[str, tuple[int, ...]] = {}
            for file in sorted(Path(self.model_runner.model_config.model).glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as handle:
                    shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})  # noqa: SIM118 (not iterable)
            self._cfpo_shapes = shapes
        return self._cfpo_shapes


def _check_against(got: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], file: Path) -> None:
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    wrong = sorted(name for name in got.keys() & expected.keys() if got[name] != expected[name])
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unknown tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("wrong shapes " + ", ".join(f"{n} {got[n]} != {expected[n]}" for n in wrong[:5]))
    if problems:
        raise ValueError(f"weights: {file} does not fit the served model: " + "; ".join(problems))
