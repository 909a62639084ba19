import json
import logging

import pytest
from pydantic import ValidationError

from cfpo.tasks import FileTask, TaskDataError, load_task


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_parquet(path, columns):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_jsonl_fields_map_onto_the_problem(tmp_path):
    path = write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {"question": "How many legs have 3 cats?", "solution": 12, "uid": "q-1", "extra": "ignored"},
            "",
            {"question": "Half of 1?", "solution": 0.5, "uid": "q-2"},
            {"question": "Name the constant.", "solution": "  \\pi ", "uid": "q-3"},
        ],
    )
    task = FileTask(
        path=path,
        name="gsm",
        prompt_field="question",
        answer_field="solution",
        id_field="uid",
        template="{prompt} Put the answer in \\boxed{}.",
    )
    problems = load_task(task)
    assert [p.id for p in problems] == ["q-1", "q-2", "q-3"]
    assert [p.reference for p in problems] == ["12", "0.5", "\\pi"]
    assert problems[0].prompt == "How many legs have 3 cats? Put the answer in \\boxed{}."
    assert problems[0].task == "gsm"
    assert problems[1].metadata == {"source": f"{path}:line 3"}  # the blank line still counts


def test_default_ids_name_file_and_place(tmp_path):
    jsonl = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a?", "answer": "1"}, {"prompt": "b?", "answer": "2"}])
    parquet = write_parquet(tmp_path / "more.parquet", {"prompt": ["c?", "d?"], "answer": ["3", "4"]})
    assert [p.id for p in FileTask(path=jsonl).load()] == ["train-1", "train-2"]
    assert [p.id for p in FileTask(path=parquet).load()] == ["more-0", "more-1"]


def test_parquet_fields_map_onto_the_problem(tmp_path):
    path = write_parquet(
        tmp_path / "math.parquet", {"problem": ["1+1?", "2*3?"], "gold": [2, 6], "key": ["a", "b"], "other": [1.0, 2.0]}
    )
    problems = FileTask(path=path, prompt_field="problem", answer_field="gold", id_field="key").load()
    assert [(p.id, p.prompt, p.reference, p.task) for p in problems] == [
        ("a", "1+1?", "2", "math"),
        ("b", "2*3?", "6", "math"),
    ]
    assert problems[1].metadata["source"] == f"{path}:row 1"


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"prompt": "a?", "answer": "1"}, {"prompt": "b?"}], r"line 2: missing field 'answer'"),
        ([{"prompt": "a?", "answer": None}], r"line 1: missing field 'answer'"),
        ([{"prompt": "", "answer": "1"}], r"line 1: field 'prompt' is empty"),
        ([{"prompt": ["a"], "answer": "1"}], r"line 1: field 'prompt' must be a string or a number, got list"),
        ([{"prompt": "a?", "answer": True}], r"line 1: field 'answer' must be a string or a number, got bool"),
        ([{"prompt": "a?", "answer": "1"}, "{not json"], r"line 2: not valid JSON"),
        (["[1, 2]"], r"line 1: expected a JSON object, got list"),
    ],
)
def test_bad_jsonl_record_names_file_line_and_field(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TaskDataError, match=rf"^{path}: {message}"):
        FileTask(path=path).load()


def test_bad_parquet_row_and_missing_column(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", {"prompt": ["a?", "b?", "c?"], "answer": ["1", None, "3"]})
    with pytest.raises(TaskDataError, match=rf"^{path}: row 1: missing field 'answer'"):
        FileTask(path=path).load()
    with pytest.raises(TaskDataError, match=rf"^{path}: no column 'solution' \(columns: prompt, answer\)"):
        FileTask(path=path, answer_field="solution", on_error="skip").load()


def test_duplicate_ids_are_bad_records(tmp_path):
    path = write_jsonl(
        tmp_path / "dup.jsonl", [{"prompt": "a?", "answer": "1", "id": "x"}, {"prompt": "b?", "answer": "2", "id": "x"}]
    )
    with pytest.raises(TaskDataError, match=r"line 2: duplicate id 'x' \(first at line 1\)"):
        FileTask(path=path, id_field="id").load()


def test_skip_drops_bad_records_and_counts_them(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"prompt": "a?", "answer": "1"}, {"prompt": "b?"}, "oops", {"prompt": "c?", "answer": "3"}],
    )
    with caplog.at_level(logging.WARNING, logger="cfpo.tasks.files"):
        problems = FileTask(path=path, on_error="skip").load()
    assert [p.reference for p in problems] == ["1", "3"]
    assert f"{path}: skipped 2 of 4 records" in caplog.text and "line 2: missing field 'answer'" in caplog.text


def test_a_file_with_nothing_usable_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"question": "a?", "answer": "1"}])
    with pytest.raises(TaskDataError, match=r"no usable record; first problem: line 1: missing field 'prompt'"):
        FileTask(path=path, on_error="skip").load()


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(TaskDataError, match=r"absent.jsonl: no such file"):
        FileTask(path=tmp_path / "absent.jsonl").load()
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(TaskDataError, match=r"fake.parquet: cannot read it as Parquet"):
        FileTask(path=fake).load()


def test_eval_fraction_partitions_the_file_by_prompt(tmp_path):
    rows = [{"prompt": f"What is {i} squared?", "answer": str(i * i)} for i in range(400)]
    path = write_jsonl(tmp_path / "squares.jsonl", rows)
    task = FileTask(path=path, eval_fraction=0.25)
    train, held_out = task.load("train"), task.load("eval")
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}
    assert len(train) + len(held_out) == 400 and 70 < len(held_out) < 130
    shuffled = write_jsonl(tmp_path / "reordered.jsonl", rows[::-1])  # the split follows the text, not the order
    assert {p.prompt for p in FileTask(path=shuffled, eval_fraction=0.25).load("eval")} == {p.prompt for p in held_out}


def test_eval_path_gives_the_eval_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a?", "answer": "1"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "z?", "answer": "26"}])
    task = FileTask(path=train, eval_path=test)
    assert [p.prompt for p in task.load("train")] == ["a?"]
    assert [p.prompt for p in task.load("eval")] == ["z?"]
    with pytest.raises(TaskDataError, match="no eval split"):
        FileTask(path=train).load("eval")


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"path": "data.csv"}, "path"),
        ({"path": "a.jsonl", "eval_path": "b.jsonl", "eval_fraction": 0.1}, "eval_fraction"),
        ({"path": "a.jsonl", "template": "no placeholder"}, "template"),
        ({"path": "a.jsonl", "on_error": "ignore"}, "on_error"),
        ({"path": "a.jsonl", "prompt_key": "q"}, "prompt_key"),
    ],
)
def test_bad_file_settings_name_the_field(settings, field):
    with pytest.raises(ValidationError, match=field):
        FileTask(**settings)
