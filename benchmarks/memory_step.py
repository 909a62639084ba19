"""One learner step measured alone: ``python benchmarks/memory_step.py CASE.json RESULT.json``.

Run as a script, not a module, and importing only ``cfpo`` and ``trainer``, so that ``PYTHONPATH`` can point it
at another checkout's learner (``learner_memory --before``). Peak RSS is the process's own high-water mark.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(case_path: Path, result_path: Path) -> None:
    import torch

    import trainer.learner
    from cfpo.config import LearnerConfig
    from cfpo.sample import Sample
    from trainer.learner import Learner

    case = json.loads(case_path.read_text())
    generator = torch.Generator().manual_seed(0)
    vocabulary, prompt, completion = case["vocabulary"], case["prompt_tokens"], case["completion_tokens"]
    samples = [
        Sample(
            prompt_ids=torch.randint(vocabulary, (prompt,), generator=generator).tolist(),
            completion_ids=torch.randint(vocabulary, (completion,), generator=generator).tolist(),
            behaviour_logprobs=[case["behaviour_logprob"]] * completion,
            advantage=1.0 if i % 2 else -1.0,
            reward=float(i % 2),
            min_version=0,
            max_version=0,
        )
        for i in range(case["sequences"])
    ]
    learner = Learner(case["model"], LearnerConfig(batch_size=len(samples), precision="fp32", **case["learner"]))
    started = time.perf_counter()
    (step,) = learner.train_on(samples)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "seconds": seconds,
        "peak_rss_gb": peak_kib * 1024 / 1e9,
        "grad_norm": step.metrics["grad_norm"],
        "learner": trainer.learner.__file__,
    }
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:3]))
