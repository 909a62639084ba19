"""The staleness bound holds on the policy versions that made each group, not only on the one served when the
group was admitted: the race a resumed learner's first push opens, forced on the real vLLM server."""

import contextlib
import json

import pytest
from transformers import AutoModelForCausalLM

from cfpo.clients.generation import GenerationClient
from tests.e2e.conftest import toy_spec_with
from tests.e2e.generation_proxy import GenerationProxy
from trainer.weight_sync.file import StagedWeights

pytestmark = pytest.mark.slow

RACED_SLOT = 8  # the first group of step 2: synchronous, so only version 2 may make it
RACED_SEED = RACED_SLOT * 101  # the worker's sampling seed of a slot's first attempt (run seed 0)


def test_a_group_made_by_older_weights_than_its_slot_allows_is_made_again(start_run, stack, tmp_path):
    # Between the worker's admission check for slot 8 (generation serving version 2) and its request, generation
    # is made to serve the initial weights as version 0, as a learner resumed from an older checkpoint would
    # push them; once that request is answered, version 2 is served again. Without the check after generation,
    # step 2 would train on a group 2 versions stale in a run whose bound is 0.
    initial = StagedWeights(tmp_path, "initial").write(AutoModelForCausalLM.from_pretrained(stack.model_dir))
    generation = GenerationClient(stack.generation_url)
    raced: list[int] = []

    @contextlib.contextmanager
    def older_weights_during(body: dict):
        if body["sampling_params"]["seed"] != RACED_SEED or raced:
            yield
            return
        served = generation.version()
        raced.append(served.number)
        generation.update_weights(initial, 0, run=served.run)
        try:
            yield
        finally:
            # the run's one claim stages its weights in a file of its own (trainer/weight_sync/file.py)
            (staged,) = (run.directory / "weights").glob(f"{run.run_id}-*.safetensors")
            generation.update_weights(staged, served.number, run=served.run)

    proxy = GenerationProxy(stack.generation_url, around_generate=older_weights_during)
    try:
        run = start_run(
            toy_spec_with(staleness={"mode": "bounded", "max_staleness": 0}, rollout__max_inflight_groups=1, steps=4),
            generation_url=proxy.start(),
        )
        run.start_learner()
        run.wait()
    finally:
        proxy.stop()
    assert raced == [2]
    raced_calls = [call for call in proxy.calls if json.loads(call.body)["sampling_params"]["seed"] == RACED_SEED]
    assert len(raced_calls) == 2  # made by version 0, refused, made again by version 2
    rows = run.metrics()
    assert [row["staleness_max"] for row in rows] == [0, 0, 0, 0]
    assert all(row["bound_violations"] == 0 for row in rows)
    assert sorted(slot for line in run.applied() for slot in line["slots"]) == list(range(16))
