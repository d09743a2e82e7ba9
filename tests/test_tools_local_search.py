"""The `local_search` tool: BM25 over texts or a JSONL file, with clear corpus errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentflow.tools.local_search import LocalSearchTool

TEXTS = [
    "Canberra is the capital city of Australia.",
    "Paris is the capital and largest city of France.",
    "The Great Barrier Reef lies off the coast of Queensland.",
    "Mount Everest is the highest mountain above sea level.",
]


def test_from_texts_ranks_the_matching_passage_first() -> None:
    out = LocalSearchTool.from_texts(TEXTS, k=2).invoke({"query": "capital of Australia"})
    lines = out.splitlines()
    assert lines[0] == "[1] Canberra is the capital city of Australia."
    assert len(lines) == 2 and lines[1].startswith("[2] Paris")


def test_k_larger_than_corpus_and_unmatched_query() -> None:
    tool = LocalSearchTool.from_texts(TEXTS[:2], k=10)
    assert len(tool.invoke({"query": "capital"}).splitlines()) == 2
    assert tool.invoke({"query": "zebra quantum"}).startswith("No passages matched")
    assert tool.invoke({"query": "the of and"}).startswith("No passages matched")


def test_blank_query_is_refused_by_the_args_schema() -> None:
    with pytest.raises(ValidationError, match="at least 1 character"):
        LocalSearchTool.from_texts(TEXTS).invoke({"query": "  "})


@pytest.mark.parametrize("texts", [["a b c", "x y z"], ["the of and", "I"]])
def test_corpus_without_searchable_words_is_a_clear_error(texts: list[str]) -> None:
    with pytest.raises(ValueError, match="no searchable words in the corpus"):
        LocalSearchTool.from_texts(texts)


def test_passages_without_searchable_words_are_kept_beside_others() -> None:
    tool = LocalSearchTool.from_texts(["a b c", "Canberra is the capital."])
    assert tool.invoke({"query": "capital"}) == "[1] Canberra is the capital."
    assert tool.invoke({"query": "b"}).startswith("No passages matched")


def test_from_jsonl_uses_titles(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    records = [{"id": 1, "title": "Everest", "text": "Highest mountain, 8,849 m."}, {"text": "Reefs are made of coral."}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    tool = LocalSearchTool.from_jsonl(path, k=1)
    assert tool.invoke({"query": "everest"}) == "[1] Everest: Highest mountain, 8,849 m."
    assert tool.passages[0].id == "1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "has no passages"),
        ('{"text": "ok"}\n{not json}\n', r"corpus.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n{"title": "no text"}\n', r"corpus.jsonl:2: expected an object"),
        ('["a list"]\n', r"corpus.jsonl:1: expected an object"),
        ('{"text": "   "}\n', r"corpus.jsonl:1: expected an object"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        LocalSearchTool.from_jsonl(path)


def test_missing_file_and_bad_texts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read corpus file .*missing.jsonl"):
        LocalSearchTool.from_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="empty"):
        LocalSearchTool.from_texts([])
    with pytest.raises(ValueError, match="text #1"):
        LocalSearchTool.from_texts(["fine", ""])
    with pytest.raises(ValueError, match="not one string"):
        LocalSearchTool.from_texts("just one string")
