import json

import pytest
from pydantic import ValidationError

from cfpo.config import StrictModel
from cfpo.tasks import ArithmeticTask, FileTask, TaskSpec, load_task, parse_task


def test_kind_picks_the_task():
    assert isinstance(parse_task({"kind": "arithmetic", "difficulty": 3}), ArithmeticTask)
    assert isinstance(parse_task({"kind": "file", "path": "data/train.parquet"}), FileTask)


@pytest.mark.parametrize(
    "data, where",
    [
        ({"kind": "sudoku"}, "sudoku"),
        ({"difficulty": 2}, "kind"),
        ({"kind": "arithmetic", "path": "x.jsonl"}, "arithmetic.path"),
        ({"kind": "file"}, "file.path"),
    ],
)
def test_bad_task_settings_name_the_kind_and_field(data, where):
    with pytest.raises(ValidationError, match=where):
        parse_task(data)


def test_a_run_spec_embeds_the_task(tmp_path):
    class RunSpec(StrictModel):
        task: TaskSpec

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "1 + 1?", "answer": "2"}) + "\n")
    run = RunSpec.model_validate_json(json.dumps({"task": {"kind": "file", "path": str(path)}}))
    assert [p.reference for p in load_task(run.task)] == ["2"]
    assert RunSpec.model_validate_json(run.model_dump_json()) == run


def test_load_task_returns_the_split():
    spec = ArithmeticTask(train_size=5, eval_size=3)
    assert load_task(spec) == spec.load("train") and len(load_task(spec, "eval")) == 3
