"""ToolMix generation: deterministic, disjoint splits, answers consistent with the corpus."""

from __future__ import annotations

import re
from pathlib import Path

from agentflow.evals import load_benchmark, make_toolmix, score
from agentflow.evals.toolmix import write_jsonl

_NAME = re.compile(r"\b[A-Z][a-z]{2,}\b")
_COMMON = {"What", "Who", "How", "In"}


def _entities(items: list[dict]) -> set[str]:
    return {word for item in items for word in _NAME.findall(item["query"] + " " + item["answer"])} - _COMMON


def test_deterministic_for_a_seed() -> None:
    assert make_toolmix(seed=3, n_train=90, n_test=30) == make_toolmix(seed=3, n_train=90, n_test=30)
    assert make_toolmix(seed=3, n_train=90, n_test=30).test != make_toolmix(seed=4, n_train=90, n_test=30).test


def test_sizes_fields_and_types() -> None:
    suite = make_toolmix(seed=0, n_train=300, n_test=60)
    assert len(suite.train) == 300 and len(suite.test) == 60
    for item in suite.train + suite.test:
        assert set(item) == {"query", "answer", "pid", "type", "tool", "tools"}
        assert isinstance(item["answer"], str) and item["tool"] == item["tools"][0]
        expected_tool = "calculator" if item["type"] == "arithmetic" else "local_search"
        assert item["tool"] == expected_tool
    assert {i["type"] for i in suite.test} == {"arithmetic", "lookup", "two_step"}
    assert len({i["pid"] for i in suite.train + suite.test}) == 360


def test_splits_are_disjoint() -> None:
    suite = make_toolmix(seed=1, n_train=600, n_test=150)
    assert not {i["query"] for i in suite.train} & {i["query"] for i in suite.test}
    assert len({i["query"] for i in suite.train}) == len(suite.train)
    assert not _entities(suite.train) & _entities(suite.test)


def test_arithmetic_answers_are_right_and_hard() -> None:
    for item in make_toolmix(seed=2, n_train=200, n_test=0).train:
        if item["type"] == "arithmetic":
            expression = item["query"].removeprefix("What is ").removesuffix("?")
            assert all(len(n) >= 4 for n in re.findall(r"\d+", expression))
            assert int(item["answer"]) == eval(expression)  # noqa: S307 - generated digits and + *


def test_lookup_answers_are_in_the_corpus() -> None:
    suite = make_toolmix(seed=0, n_train=120, n_test=60)
    corpus = "\n".join(suite.corpus)
    for item in suite.train + suite.test:
        if item["type"] == "lookup":
            entity = _NAME.findall(item["query"])[-1]
            passage = next(p for p in suite.corpus if p.startswith(entity + " "))
            assert item["answer"] in passage
        elif item["type"] == "two_step" and item["query"].startswith("How many years"):
            entity = _NAME.findall(item["query"])[-1]
            founded = re.search(rf"^{entity} is .* founded in (\d+)", corpus, re.M).group(1)
            assert int(item["answer"]) == 2000 - int(founded)


def test_jsonl_round_trip_and_scoring(tmp_path: Path) -> None:
    suite = make_toolmix(seed=0, n_train=30, n_test=12)
    path = write_jsonl(suite.test, tmp_path / "sub" / "test.jsonl")
    ds = load_benchmark(str(path))
    assert ds["query"] == [i["query"] for i in suite.test]
    assert ds["answer"] == [i["answer"] for i in suite.test]
    assert all(score("toolmix", f"<answer>{row['answer']}</answer>", row) == 1.0 for row in ds)
