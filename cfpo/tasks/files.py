"""The file task: problems from a local JSONL or Parquet file whose field names the settings give.

A bad record never vanishes silently. ``on_error="raise"`` (the default) stops at the first one with the file,
the place (JSONL ``line N``, counted from 1 as editors do; Parquet ``row N``, counted from 0 as dataframes do)
and the field; ``on_error="skip"`` drops bad records and logs one warning per file with their count and the first
problem. A missing Parquet column or a file with no usable record is an error either way.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from cfpo.config import StrictModel
from cfpo.tasks.problem import Problem, Split, in_split

log = logging.getLogger(__name__)
SUFFIXES = (".jsonl", ".parquet")
# _known_format as the schema states it: the last component has a name before its suffix
_SUFFIX_PATTERN = "[^/](" + "|".join(re.escape(suffix) for suffix in SUFFIXES) + ")$"


class TaskDataError(ValueError):
    """A data file that cannot be used; the message names the file, the record and the field."""


class BadRecord(Exception):
    """One unusable record; the reader adds the file and the place."""


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, BadRecord(f"not valid JSON: {error.msg}")
                    continue
                if not isinstance(record, dict):
                    record = BadRecord(f"expected a JSON object, got {type(record).__name__}")
                yield number, record
    except (OSError, UnicodeDecodeError) as error:
        raise TaskDataError(f"{path}: cannot read it: {error}") from None


def _parquet_records(path: Path, columns: list[str]) -> Iterator[tuple[int, dict | BadRecord]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        missing = [column for column in columns if column not in names]
        if missing:
            raise TaskDataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
        row = 0
        for batch in file.iter_batches(columns=columns):
            for record in batch.to_pylist():
                yield row, record
                row += 1
    except (OSError, pyarrow.ArrowException) as error:
        raise TaskDataError(f"{path}: cannot read it as Parquet: {error}") from None


def _records(path: Path, columns: list[str]) -> Iterator[tuple[str, int, dict | BadRecord]]:
    """(place, number, record) for each record of a .jsonl (lines from 1) or .parquet (rows from 0) file."""
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return ((f"line {number}", number, record) for number, record in _jsonl_records(path))
    return ((f"row {number}", number, record) for number, record in _parquet_records(path, columns))


def _text(record: dict, field: str) -> str:
    """The field as text: strings, and numbers for answers such as 42 or 0.5 stored as numbers."""
    if record.get(field) is None:
        raise BadRecord(f"missing field {field!r}")
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRecord(f"field {field!r} must be a string or a number, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadRecord(f"field {field!r} is empty")
    return text


class FileTask(StrictModel):
    """Settings of a file task; ``load(split)`` returns the split's problems."""

    # _one_eval_source, stated in the schema
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"properties": {"eval_path": {"type": "null"}}}, {"properties": {"eval_fraction": {"const": 0}}}]
        }
    )
    kind: Literal["file"] = "file"
    name: str = Field("math", min_length=1, description="task name the reward service sees on each problem")
    path: Path = Field(
        description="a .jsonl or .parquet file; the train split (and eval, with eval_fraction)",
        json_schema_extra={"pattern": _SUFFIX_PATTERN},
    )
    eval_path: Path | None = Field(
        None, description="a separate held-out file for the eval split", json_schema_extra={"pattern": _SUFFIX_PATTERN}
    )
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="share of path held out for eval, by prompt hash")
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    id_field: str | None = Field(None, description="default: '<file stem>-<line or row>'")
    template: str = Field(
        "{prompt}",
        description="the user message; '{prompt}' marks the prompt field's text",
        json_schema_extra={"pattern": r"\{prompt\}"},
    )
    on_error: Literal["raise", "skip"] = "raise"

    @field_validator("path", "eval_path")
    @classmethod
    def _known_format(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix not in SUFFIXES:
            raise ValueError(f"{value}: expected a file ending in {' or '.join(SUFFIXES)}")
        return value

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("must contain '{prompt}'")
        return value

    @model_validator(mode="after")
    def _one_eval_source(self) -> FileTask:
        if self.eval_path is not None and self.eval_fraction > 0:
            raise ValueError("eval_fraction: set either eval_path or eval_fraction, not both")
        return self

    def load(self, split: Split = "train") -> list[Problem]:
        """The split's problems in file order: eval_path for eval if set, else path's share by prompt hash."""
        if split == "eval" and self.eval_path is not None:
            return self._read(self.eval_path)
        if split == "eval" and self.eval_fraction == 0:
            raise TaskDataError(f"{self.path}: this file task has no eval split; set eval_path or eval_fraction")
        return self._read(self.path, split if self.eval_fraction else None)

    def _read(self, path: Path, split: Split | None = None) -> list[Problem]:
        """The usable records of ``path`` (only those whose prompt hashes into ``split``, if given) as problems.

        Every record is checked, whichever split it falls in, so a bad file fails the same way for both.
        """
        fields = [self.prompt_field, self.answer_field] + ([self.id_field] if self.id_field else [])
        problems: list[Problem] = []
        seen: dict[str, str] = {}
        bad: list[str] = []
        for place, number, record in _records(path, fields):
            try:
                if isinstance(record, BadRecord):
                    raise record
                prompt = _text(record, self.prompt_field)
                problem = Problem(
                    id=_text(record, self.id_field) if self.id_field else f"{path.stem}-{number}",
                    prompt=self.template.replace("{prompt}", prompt),
                    reference=_text(record, self.answer_field),
                    task=self.name,
                    metadata={"source": f"{path}:{place}"},
                )
                if problem.id in seen:
                    raise BadRecord(f"duplicate id {problem.id!r} (first at {seen[problem.id]})")
            except BadRecord as error:
                if self.on_error == "raise":
                    raise TaskDataError(f"{path}: {place}: {error}") from None
                bad.append(f"{place}: {error}")
                continue
            seen[problem.id] = place
            if split is None or in_split(prompt, split, self.eval_fraction):
                problems.append(problem)
        if bad:
            log.warning(
                "%s: skipped %d of %d records (on_error=skip); first: %s", path, len(bad), len(bad) + len(seen), bad[0]
            )
        if not problems:
            where = f" in the {split} split" if split else ""
            raise TaskDataError(f"{path}: no usable record{where}" + (f"; first problem: {bad[0]}" if bad else ""))
        return problems
