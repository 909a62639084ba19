"""Benchmarks of the pipeline (``python -m benchmarks``, ``cfpo bench``); not tests: figures, printed as tables and
written as JSON. One module per benchmark:

- ``async_vs_sync``: throughput at max_staleness 0, 1, 2, 4 against the sum-of-work and overlap bounds;
- ``overhead``: the learner's wall time spent reading the queue and pushing weights;
- ``weight_sync``: weight push seconds and bytes per second by model size, beside a memory copy;
- ``peer_trl``: TRL's GRPOTrainer on the same task and settings, and the training step alone of each.

Shared: ``settings`` (what is measured), ``session`` (one stack per session, shared measurements, child
processes), ``pipeline`` (pipeline runs through the control API; its halves alone), ``placement`` (taskset
pinning), ``report`` (tables and JSON). ``learner_step`` and ``trl_grpo`` run in child processes.
"""
