"""The wire codec on its own: exact round trips, compactness, and a readable refusal of every malformed entry."""

import struct

import pytest
from pydantic import ValidationError

from cfpo.rollout_group import (
    SCHEMA_VERSION,
    MalformedEntry,
    RolloutGroup,
    decode_group,
    encode_group,
    max_entry_bytes,
)
from cfpo.sample import Sample
from tests.cfpo.queue.groups import MALFORMED, f32, make_group


def float_bits(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_round_trip_is_exact():
    group = make_group(
        "run-a",
        slot=17,
        zero_variance_discarded=2,
        timings={"generate": 1.25, "reward": 0.1},
        produced_at=1_790_000_000.123456,
    )
    edge_logprobs = [0.0, -0.0, f32(-1e-40), f32(-87.3), -(2.0**-149)]  # zeros, a subnormal, large, the smallest
    samples = [
        *group.samples,
        group.samples[0].model_copy(
            update={
                "completion_ids": [0, 2**31 - 1, 7, 8, 9],
                "behaviour_logprobs": edge_logprobs,
                "completion_mask": [True, False, True, True, False],
                "min_version": 0,
                "max_version": 12,
            }
        ),
    ]
    group = group.model_copy(update={"samples": samples})

    fields = encode_group(group)
    decoded = decode_group(fields)

    assert fields[b"schema"] == str(SCHEMA_VERSION).encode()
    assert decoded == group
    for sent, received in zip(group.samples, decoded.samples):
        assert float_bits(received.behaviour_logprobs) == float_bits(sent.behaviour_logprobs)  # -0.0 too


def test_float64_log_probs_arrive_as_their_float32_value():
    group = make_group("run-a")
    precise = [-0.1, -1 / 3, -2.718281828459045]
    sample = group.samples[0].model_copy(update={"behaviour_logprobs": precise})
    decoded = decode_group(encode_group(group.model_copy(update={"samples": [sample]})))
    assert decoded.samples[0].behaviour_logprobs == [f32(x) for x in precise]
    assert decoded.samples[0].behaviour_logprobs != precise


def test_wire_form_is_compact():
    tokens = 1000
    group = make_group("run-a", rewards=(1.0, 0.0, 0.5, 0.25), length=tokens)
    size = sum(len(v) for v in encode_group(group).values())
    assert size < 4 * tokens * 11  # ~10.7 bytes per completion token (ids + log-probs); JSON decimals take ~25


@pytest.mark.parametrize("group_size, prompt_tokens, completion_tokens", [(2, 1, 1), (4, 100, 50), (16, 1024, 4096)])
def test_the_entry_size_bound_holds_for_the_largest_values_and_is_not_loose(
    group_size, prompt_tokens, completion_tokens
):
    """Redis's memory budget (services/control/budget.py) rests on this bound: the widest ids and log-probs, a mask,
    the longest timings and names still fit, and a typical group is not far below it."""
    samples = [
        Sample(
            prompt_ids=[2**31 - 1] * prompt_tokens,
            completion_ids=[2**31 - 1] * completion_tokens,
            behaviour_logprobs=[-1.2345678901234567e-30] * completion_tokens,
            completion_mask=[True] * completion_tokens,
            advantage=-1.2345678901234567e300,
            reward=-1.2345678901234567e300,
            min_version=2**31 - 1,
            max_version=2**31 - 1,
        )
        for _ in range(group_size)
    ]
    group = RolloutGroup(
        run_id="r" * 64,
        prompt_id="p" * 128,
        slot=2**31 - 1,
        samples=samples,
        zero_variance_discarded=8,
        timings={stage: 1.2345678901234567e300 for stage in ("admission_wait", "generate", "reward")},
    )
    encoded = sum(len(key) + len(value) for key, value in encode_group(group).items())
    bound = max_entry_bytes(group_size, prompt_tokens, completion_tokens)
    assert encoded <= bound
    if completion_tokens >= 50:
        assert bound < 1.5 * encoded


@pytest.mark.parametrize("corrupt, reason", MALFORMED)
def test_malformed_entry_is_refused_with_its_reason(corrupt, reason):
    fields = corrupt(encode_group(make_group("run-a")))
    with pytest.raises(MalformedEntry) as caught:
        decode_group(fields)
    assert reason in caught.value.reason


def test_token_id_outside_int32_is_refused_when_encoding():
    group = make_group("run-a")
    sample = group.samples[0].model_copy(update={"completion_ids": [1, 2**31, 3]})
    with pytest.raises(ValueError, match="samples.0.completion_ids: does not fit int32"):
        encode_group(group.model_copy(update={"samples": [sample]}))


def test_group_holds_the_completions_of_one_prompt():
    group = make_group("run-a")
    other_prompt = Sample(
        prompt_ids=[9], completion_ids=[1], behaviour_logprobs=[-1.0], advantage=0.0, min_version=3, max_version=4
    )
    with pytest.raises(ValidationError, match="share their prompt_ids"):
        RolloutGroup(run_id="run-a", prompt_id="p0", slot=0, samples=[*group.samples, other_prompt])


def test_group_level_facts():
    group = make_group("run-a", rewards=(1.0, 0.0))
    assert (group.rewards, group.zero_variance, group.min_version, group.max_version) == ([1.0, 0.0], False, 3, 4)
    assert make_group("run-a", rewards=(0.5, 0.5)).zero_variance
