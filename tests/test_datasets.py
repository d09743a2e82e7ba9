"""Benchmark loading: shipped sets, user files, ToolMix, and the errors users will hit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflow.evals import BENCHMARKS, load_benchmark, score
from agentflow.evals.datasets import (
    ANSWER_INSTRUCTION,
    BENCHMARKS_DIR_ENV,
    SHIPPED_BENCHMARKS,
    benchmarks_dir,
    gpqa_record,
    with_answer_instruction,
)

BENCHMARKS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
EXPECTED_SIZES = {
    "bamboogle": 125, "2wiki": 200, "hotpotqa": 100, "musique": 200,
    "aime24": 30, "amc23": 40, "gameof24": 300, "medqa": 300,
}


@pytest.fixture(autouse=True)
def _benchmarks_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    if not BENCHMARKS_DIR.is_dir():
        pytest.skip(f"{BENCHMARKS_DIR} not available")
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(BENCHMARKS_DIR))


@pytest.mark.parametrize("name", SHIPPED_BENCHMARKS)
def test_shipped_sets_load_with_normalised_fields(name: str) -> None:
    ds = load_benchmark(name)
    assert len(ds) == EXPECTED_SIZES[name]
    for field in ("query", "answer", "pid"):
        assert ds.features[field].dtype == "string", field
    assert len(set(ds["pid"])) == len(ds), "pids must identify rows"
    assert all(q.strip() for q in ds["query"])
    raw = json.loads((BENCHMARKS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert set(raw[0]) <= set(ds.column_names), "original fields are kept"


@pytest.mark.parametrize("name", SHIPPED_BENCHMARKS)
def test_loaded_rows_still_score_their_gold(name: str) -> None:
    """The str `answer` the loader stores must mean what the shipped value meant."""
    raw = json.loads((BENCHMARKS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    for row, original in zip(load_benchmark(name, limit=20), raw):
        gold = original["answer"]
        prediction = gold[0] if isinstance(gold, list) else str(gold)
        assert score(name, prediction, row) == 1.0


def test_field_quirks_are_normalised() -> None:
    assert load_benchmark("aime24")[0]["answer"] == "33"  # int in the file
    assert load_benchmark("bamboogle")[0]["answer"] == "['james madison']"  # list in the file
    assert load_benchmark("2wiki")[0]["pid"] == "0"  # int in the file
    medqa = load_benchmark("medqa")  # pids 0..99 then 0..199 in the file
    assert medqa["pid"][:3] == ["0", "1", "2"] and medqa["pid"][250] == "250"
    assert medqa["source_pid"][250] == "150"
    assert load_benchmark("gameof24")[0]["question"] == [1, 1, 1, 8]


def test_limit() -> None:
    assert len(load_benchmark("musique", limit=5)) == 5


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="bamboogle") as info:
        load_benchmark("bambogle")
    assert "toolmix" in str(info.value)


def test_shipped_sets_have_only_test_split() -> None:
    with pytest.raises(ValueError, match="test"):
        load_benchmark("bamboogle", split="train")


def test_benchmarks_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(tmp_path))
    assert benchmarks_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=BENCHMARKS_DIR_ENV):
        load_benchmark("bamboogle")


def test_user_jsonl_and_json(tmp_path: Path) -> None:
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"query": "q1", "answer": 3}\n\n{"question": "q2", "answer": "x", "extra": [1]}\n')
    ds = load_benchmark(str(jsonl))
    assert ds["query"] == ["q1", "q2"] and ds["answer"] == ["3", "x"] and ds["pid"] == ["0", "1"]
    assert ds["extra"] == [None, [1]]  # a key missing from the first row is kept
    as_json = tmp_path / "mine.json"
    records = [{"query": "q", "answer": "a", "pid": 7, "meta": 1}, {"query": "r", "answer": "b", "pid": 8, "meta": "two"}]
    as_json.write_text(json.dumps(records))
    ds = load_benchmark(str(as_json))
    assert ds["pid"] == ["7", "8"] and ds["meta"] == ["1", "two"]  # mixed-type column stored as text


def test_options_stored_as_json_text_still_score(tmp_path: Path) -> None:
    """An options column mixing lists and dicts is stored JSON-encoded; the scorer parses it back."""
    path = tmp_path / "mc.json"
    records = [
        {"query": "Sky?", "answer": "blue", "options": ["A. red", "B. blue"]},
        {"query": "Grass?", "answer": "green", "options": {"A": "green", "B": "gray"}},
    ]
    path.write_text(json.dumps(records))
    rows = load_benchmark(str(path))
    assert rows["options"] == [json.dumps(r["options"]) for r in records]
    assert score("multiple_choice", "B", rows[0]) == 1.0 and score("multiple_choice", "A", rows[1]) == 1.0
    assert score("multiple_choice", "A", rows[0]) == 0.0


def test_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "answer": "a"}\n{"query": "q2", "answer": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2"):
        load_benchmark(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"query": "q", "answer": "a"},\n {"query": }]')
    with pytest.raises(ValueError, match=r"bad\.json: line 2"):
        load_benchmark(str(bad_json))
    not_objects = tmp_path / "list.json"
    not_objects.write_text('[{"query": "q", "answer": "a"}, 3]')
    with pytest.raises(ValueError, match="record 1"):
        load_benchmark(str(not_objects))


def test_missing_fields_name_field_and_record(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"query": "q", "answer": "a"}\n{"query": "q2"}\n')
    with pytest.raises(ValueError, match="record 1 has no 'answer'"):
        load_benchmark(str(path))
    path.write_text('{"answer": "a"}\n')
    with pytest.raises(ValueError, match="record 0 has no 'query'"):
        load_benchmark(str(path))


def test_missing_user_file() -> None:
    with pytest.raises(FileNotFoundError):
        load_benchmark("/nonexistent/file.jsonl")


def test_answer_instruction_added_once() -> None:
    bamboogle = load_benchmark("bamboogle", limit=3)["query"]
    assert all(q.endswith(ANSWER_INSTRUCTION) for q in bamboogle)
    assert [with_answer_instruction(q) for q in bamboogle] == bamboogle
    medqa_query = load_benchmark("medqa", limit=1)[0]["query"]
    added = with_answer_instruction(medqa_query)
    assert added.endswith(ANSWER_INSTRUCTION) and added.count(ANSWER_INSTRUCTION) == 1
    assert with_answer_instruction(added) == added


def test_toolmix_loads_both_splits() -> None:
    train, test = load_benchmark("toolmix", split="train"), load_benchmark("toolmix")
    assert len(train) > len(test) > 0
    assert not set(train["query"]) & set(test["query"])
    assert {"type", "tool", "pid"} <= set(test.column_names)
    with pytest.raises(ValueError, match="train"):
        load_benchmark("toolmix", split="validation")


def test_known_names() -> None:
    assert set(EXPECTED_SIZES) | {"gaia", "gpqa", "toolmix"} == set(BENCHMARKS)


def test_gpqa_record_is_multiple_choice_and_deterministic() -> None:
    row = {"Question": "Which?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
           "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "Record ID": "rec1"}
    item = gpqa_record(row, 5)
    assert item == gpqa_record(row, 5)
    assert item["answer"] == "right" and len(item["options"]) == 4
    letter = next(o[0] for o in item["options"] if o.endswith("right"))
    assert f"{letter}. right" in item["query"]
    assert score("gpqa", letter, item) == 1.0
