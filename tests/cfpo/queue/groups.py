"""Groups for the queue tests: a valid one, and its wire form broken in each way a learner must survive."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable

import pytest

from cfpo.rollout_group import RolloutGroup
from cfpo.sample import Sample

Fields = dict[bytes, bytes]


def f32(value: float) -> float:
    """``value`` rounded to float32, the precision log-probs travel in."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def make_group(run_id: str, prompt_id: str = "p0", rewards=(1.0, 0.0), length: int = 3, **fields) -> RolloutGroup:
    fields.setdefault("slot", 0)
    samples = [
        Sample(
            prompt_ids=[5, 6, 7],
            completion_ids=[100 + i + k for k in range(length)],
            behaviour_logprobs=[f32(-0.1 * (i + 1) * (k + 1)) for k in range(length)],
            advantage=reward - sum(rewards) / len(rewards),
            reward=reward,
            min_version=3,
            max_version=4,
        )
        for i, reward in enumerate(rewards)
    ]
    return RolloutGroup(run_id=run_id, prompt_id=prompt_id, samples=samples, **fields)


def packed(code: str, values: list) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}{code}", *values)).decode()


def _edit_body(edit: Callable[[dict], None]) -> Callable[[Fields], Fields]:
    def corrupt(fields: Fields) -> Fields:
        body = json.loads(fields[b"body"])
        edit(body)
        return {**fields, b"body": json.dumps(body).encode()}

    return corrupt


def _without(name: bytes) -> Callable[[Fields], Fields]:
    return lambda fields: {k: v for k, v in fields.items() if k != name}


def _set_sample(index: int, **values) -> Callable[[Fields], Fields]:
    return _edit_body(lambda body: body["samples"][index].update(values))


# (how to break a valid entry's fields, a fragment the reason must contain); make_group has 2 samples of 3 tokens.
MALFORMED = [
    pytest.param(lambda f: {**f, b"schema": b"2"}, "unknown schema version '2'", id="unknown-schema"),
    pytest.param(_without(b"schema"), "missing field 'schema'", id="missing-schema"),
    pytest.param(_without(b"body"), "missing field 'body'", id="missing-body"),
    pytest.param(lambda f: {**f, b"extra": b"1"}, "unexpected field(s) ['extra']", id="unexpected-field"),
    pytest.param(lambda f: {**f, b"body": b"{"}, "body: not JSON", id="not-json"),
    pytest.param(
        lambda f: {**f, b"body": b'{"timings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"},
        "body: JSON nested too deeply",
        id="deep-nesting",
    ),
    pytest.param(_edit_body(lambda b: b.pop("run_id")), "run_id: Field required", id="missing-run-id"),
    pytest.param(_edit_body(lambda b: b.pop("prompt_ids")), "prompt_ids: missing", id="missing-prompt-ids"),
    pytest.param(
        _edit_body(lambda b: b["samples"][1].pop("advantage")),
        "samples.1.advantage: Field required",
        id="missing-advantage",
    ),
    pytest.param(
        _edit_body(lambda b: b["samples"][0].pop("min_version")),
        "samples.0.min_version: Field required",
        id="missing-min-version",
    ),
    pytest.param(
        _set_sample(1, behaviour_logprobs=packed("f", [-0.5, -0.5])),
        "samples.1: behaviour_logprobs: 2 values for 3 completion tokens",
        id="logprobs-shorter",
    ),
    pytest.param(
        _set_sample(0, completion_mask=packed("B", [1, 0])),
        "samples.0: completion_mask: 2 values for 3 completion tokens",
        id="mask-shorter",
    ),
    pytest.param(
        _set_sample(0, behaviour_logprobs=packed("f", [-0.5, float("nan"), -0.5])),
        "finite log-probability",
        id="nan-logprob",
    ),
    pytest.param(
        _set_sample(0, behaviour_logprobs=packed("f", [-0.5, float("-inf"), -0.5])),
        "finite log-probability",
        id="inf-logprob",
    ),
    pytest.param(
        _set_sample(0, completion_ids=packed("i", []), behaviour_logprobs=packed("f", [])),
        "samples.0.completion_ids: List should have at least 1 item",
        id="empty-completion",
    ),
    pytest.param(_set_sample(0, completion_ids="%%%"), "samples.0.completion_ids: not base64", id="not-base64"),
    pytest.param(
        _set_sample(0, completion_ids=base64.b64encode(b"12345").decode()),
        "samples.0.completion_ids: 5 bytes is not a whole number of int32 values",
        id="ragged-array",
    ),
    pytest.param(
        _edit_body(lambda b: b.update(samples=[])), "samples: List should have at least 1 item", id="no-samples"
    ),
]
