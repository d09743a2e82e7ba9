"""The `local_search` tool: BM25 retrieval over a local corpus.

Offline evaluation and tests need a retriever that works without internet or
an embedding model; `bm25s` indexes a few thousand passages in well under a
second. Corpus problems are reported when the tool is built, naming the file
and line, instead of surfacing later as an empty search result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from agentflow.tools.cards import card_metadata
from agentflow.tools.contract import NonBlankText


class Passage(BaseModel):
    """One corpus entry."""

    text: str
    title: str | None = None
    id: str | None = None


class LocalSearchInput(BaseModel):
    """Arguments of the `local_search` tool."""

    query: NonBlankText = Field(description="Keywords to look up in the local documents.")


class LocalSearchTool(BaseTool):
    """Returns the top-k BM25 passages for a query, numbered; build it with from_texts/from_jsonl."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "local_search"
    description: str = "Search the local document collection by keywords and return the best matching passages."
    args_schema: type[BaseModel] = LocalSearchInput
    passages: list[Passage]
    k: int = Field(default=3, ge=1)
    metadata: dict = card_metadata(
        examples=[{"query": "capital of Australia"}],
        limitations=["Only knows the local documents; keyword matching, not meaning."],
        best_practices=["Use a few specific keywords (names, dates), not a whole question."],
    )
    _index: bm25s.BM25 = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        """Index the passages once, when the tool is built.

        bm25s indexes words of two or more characters that are not English stopwords;
        a corpus with none (`["a b c"]`, `["the of"]`) would otherwise fail inside
        bm25s with "max() arg is an empty sequence".
        """
        if not self.passages:
            raise ValueError("local_search needs at least one passage; the corpus is empty")
        tokens = _tokenize([_searchable(p) for p in self.passages])
        if not any(tokens):
            raise ValueError(
                "local_search found no searchable words in the corpus: it indexes words of two or more "
                "characters that are not English stopwords (the, of, and, ...)"
            )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)

    @classmethod
    def from_texts(cls, texts: Sequence[str], k: int = 3) -> LocalSearchTool:
        """Build from plain strings; blank strings are rejected with their position."""
        if isinstance(texts, str):
            raise ValueError("from_texts expects a list of strings, not one string")
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text #{position} is empty or not a string")
        return cls(passages=[Passage(text=text) for text in texts], k=k)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str], k: int = 3) -> LocalSearchTool:
        """Build from a JSONL file: one object per line with `text` and optional `title`/`id`."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read corpus file {path}: {exc}") from exc
        passages = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
                raise ValueError(f"{path}:{number}: expected an object with a non-empty string field 'text'")
            passages.append(
                Passage(
                    text=record["text"],
                    title=None if record.get("title") is None else str(record["title"]),
                    id=None if record.get("id") is None else str(record["id"]),
                )
            )
        if not passages:
            raise ValueError(f"corpus file {path} has no passages")
        return cls(passages=passages, k=k)

    def search(self, query: str) -> list[tuple[Passage, float]]:
        """The best passages with a positive BM25 score, best first."""
        tokens = _tokenize([query])
        if not tokens[0]:
            return []
        k = min(self.k, len(self.passages))
        ids, scores = self._index.retrieve(tokens, k=k, show_progress=False)
        return [(self.passages[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def _run(self, query: str) -> str:
        hits = self.search(query)
        if not hits:
            return f"No passages matched {query!r}. Try other keywords."
        return "\n".join(
            f"[{rank}] {passage.title + ': ' if passage.title else ''}{passage.text}"
            for rank, (passage, _) in enumerate(hits, start=1)
        )


def _searchable(passage: Passage) -> str:
    """Titles are searchable too: they often hold the entity name the query uses."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


def _tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
