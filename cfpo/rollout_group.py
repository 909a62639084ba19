"""The rollout group and its wire form: what a rollout worker appends to the queue and the learner reads back.

A group is the G scored completions of one prompt plus the group-level facts the learner logs. On the wire it is
two stream fields:

- ``schema``: the format version (``SCHEMA_VERSION``), checked before anything else so that an entry written by
  a newer producer is refused with a clear reason instead of being misread;
- ``body``: compact JSON. Token ids and log-probs are base64 of little-endian int32 / float32 arrays (about 5.3
  bytes per value instead of ~20 as JSON decimals, and float32 is the sampler's own precision, so log-probs that
  are float32 values round-trip bit-exactly; float64 inputs are rounded to the nearest float32). The prompt's
  ids are stored once per group; completion masks are uint8 0/1 arrays, ``null`` when every token trains.

``decode_group`` validates everything (the ``Sample`` rules: shapes, finite log-probs, non-empty completions)
and raises ``MalformedEntry`` with a reason that names the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import time
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator

from cfpo.advantages import is_zero_variance
from cfpo.config import StrictModel, describe_validation_error
from cfpo.sample import Sample

SCHEMA_VERSION = 1

# Sample fields sent as packed arrays, with their little-endian struct codes.
_ARRAYS = {"completion_ids": "i", "behaviour_logprobs": "f", "completion_mask": "B"}
_ARRAY_KINDS = {"i": "int32", "f": "float32", "B": "uint8"}

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class MalformedEntry(ValueError):
    """A queue entry that cannot be decoded into a valid group; ``reason`` says which field and why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RolloutGroup(StrictModel):
    """The G completions of one prompt, scored, with advantages: the unit the queue carries."""

    run_id: str = Field(min_length=1)
    prompt_id: str = Field(min_length=1)
    slot: int = Field(ge=0, description="admission-control slot (cfpo.staleness): the group belongs to step slot // P")
    samples: list[Sample] = Field(min_length=1)
    zero_variance_discarded: int = Field(
        0, ge=0, description="zero-variance groups generated and discarded for this slot before this one"
    )
    timings: dict[str, Seconds] = Field(default_factory=dict, description="seconds per stage: generate, reward...")
    produced_at: float = Field(default_factory=time.time, description="unix time it was made, for queue latency")

    @model_validator(mode="after")
    def _one_scored_prompt(self) -> RolloutGroup:
        if any(s.prompt_ids != self.samples[0].prompt_ids for s in self.samples):
            raise ValueError("samples: the completions of one group must share their prompt_ids")
        if not all(math.isfinite(r) for r in self.rewards):
            raise ValueError("samples: every reward must be finite")
        return self

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]

    @property
    def zero_variance(self) -> bool:
        """Rewards (almost) all equal: group-normalised advantages are zero, so the group carries no gradient."""
        return is_zero_variance(self.rewards)

    @property
    def min_version(self) -> int:
        """The oldest policy version behind any token of the group; the learner's version minus it is the staleness."""
        return min(s.min_version for s in self.samples)

    @property
    def max_version(self) -> int:
        return max(s.max_version for s in self.samples)


def encode_group(group: RolloutGroup) -> dict[bytes, bytes]:
    """The stream fields of ``group``. Raises ValueError for a token id or log-prob outside int32 / float32."""
    body = group.model_dump(mode="json", exclude={"samples"})
    body["prompt_ids"] = _pack("i", group.samples[0].prompt_ids, "prompt_ids")
    body["samples"] = [_sample_to_wire(sample, i) for i, sample in enumerate(group.samples)]
    return {b"schema": str(SCHEMA_VERSION).encode(), b"body": json.dumps(body, separators=(",", ":")).encode()}


# Upper bounds of the wire form (checked against encode_group by tests/cfpo/queue): per completion token, an int32 id,
# a float32 log-prob and a mask byte in base64 (4/3 characters per byte); per prompt token, an int32 once per group;
# per sample and per entry, the JSON around them and the stream entry's own keeping in Redis.
WIRE_BYTES_PER_COMPLETION_TOKEN = 12
WIRE_BYTES_PER_PROMPT_TOKEN = 6
WIRE_BYTES_PER_SAMPLE = 400
WIRE_BYTES_PER_ENTRY = 1024


def max_entry_bytes(group_size: int, prompt_tokens: int, completion_tokens: int) -> int:
    """The most a group of ``group_size`` completions of up to ``completion_tokens`` tokens, on a prompt of up to
    ``prompt_tokens``, takes as a stream entry: for sizing Redis before a run starts."""
    per_sample = WIRE_BYTES_PER_SAMPLE + WIRE_BYTES_PER_COMPLETION_TOKEN * completion_tokens
    return WIRE_BYTES_PER_ENTRY + WIRE_BYTES_PER_PROMPT_TOKEN * prompt_tokens + group_size * per_sample


def decode_group(fields: Mapping[bytes, bytes]) -> RolloutGroup:
    """The group in the stream fields ``fields``; raises MalformedEntry with a readable reason if it is invalid."""
    unexpected = sorted(k.decode(errors="replace") for k in set(fields) - {b"schema", b"body"})
    if unexpected:
        raise MalformedEntry(f"unexpected field(s) {unexpected}; schema {SCHEMA_VERSION} has 'schema' and 'body'")
    for name in (b"schema", b"body"):
        if name not in fields:
            raise MalformedEntry(f"missing field {name.decode()!r}")
    schema = fields[b"schema"].decode(errors="replace")
    if schema != str(SCHEMA_VERSION):
        raise MalformedEntry(f"unknown schema version {schema!r}; this reader knows {SCHEMA_VERSION}")
    try:
        body = json.loads(fields[b"body"])
    except ValueError as error:
        raise MalformedEntry(f"body: not JSON: {error}") from None
    except RecursionError:  # JSON nested deeper than Python's parser recurses; no valid group nests at all
        raise MalformedEntry("body: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise MalformedEntry("body: expected a JSON object")
    return _group_from_wire(body)


def _sample_to_wire(sample: Sample, index: int) -> dict[str, Any]:
    wire = sample.model_dump(exclude={"prompt_ids", *_ARRAYS})
    for name, code in _ARRAYS.items():
        values = getattr(sample, name)
        wire[name] = None if values is None else _pack(code, values, f"samples.{index}.{name}")
    return wire


def _group_from_wire(body: dict[str, Any]) -> RolloutGroup:
    """Unpack the arrays in place, give every sample the group's prompt ids, then let the models validate."""
    if not isinstance(body.get("prompt_ids"), str):
        raise MalformedEntry("prompt_ids: missing, or not a base64 string")
    prompt_ids = _unpack("i", body.pop("prompt_ids"), "prompt_ids")
    samples = body.get("samples")
    if isinstance(samples, list):
        for index, sample in enumerate(samples):
            if not isinstance(sample, dict):
                continue  # validation below names it
            for name, code in _ARRAYS.items():
                if isinstance(sample.get(name), str):
                    sample[name] = _unpack(code, sample[name], f"samples.{index}.{name}")
            sample["prompt_ids"] = prompt_ids
    try:
        return RolloutGroup.model_validate(body)
    except ValidationError as error:
        raise MalformedEntry(describe_validation_error(error)) from None


def _pack(code: str, values: list, where: str) -> str:
    try:
        return base64.b64encode(struct.pack(f"<{len(values)}{code}", *values)).decode()
    except (struct.error, OverflowError) as error:
        raise ValueError(f"{where}: does not fit {_ARRAY_KINDS[code]}: {error}") from None


def _unpack(code: str, text: str, where: str) -> list:
    kind = _ARRAY_KINDS[code]
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise MalformedEntry(f"{where}: not base64 ({error})") from None
    width = struct.calcsize(code)
    if len(data) % width:
        raise MalformedEntry(f"{where}: {len(data)} bytes is not a whole number of {kind} values")
    return list(struct.unpack(f"<{len(data) // width}{code}", data))
