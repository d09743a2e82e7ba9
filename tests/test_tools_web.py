"""Online tools without a network: skip messages, and formatting with fake clients."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
from langchain_core.tools import ToolException

from agentflow.tools.web import (
    ToolUnavailable,
    WebSearchTool,
    WikipediaTool,
    web_search_tool,
    wikipedia_tool,
)


class _FakeTavily:
    def __init__(self, response: dict[str, Any] | Exception) -> None:
        self.response = response
        self.calls: list[tuple[str, int]] = []

    def search(self, query: str, max_results: int) -> dict[str, Any]:
        self.calls.append((query, max_results))
        if isinstance(self.response, Exception):
            raise self.response
        return self.response


def test_web_search_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    with pytest.raises(ToolUnavailable, match="set TAVILY_API_KEY"):
        web_search_tool()


def test_web_search_built_from_key_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAVILY_API_KEY", "tvly-test")
    tool = web_search_tool(max_results=5)
    assert tool.name == "web_search" and tool.max_results == 5


def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAVILY_API_KEY", "tvly-test")
    real_import = builtins.__import__

    def no_tavily(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tavily" or name.startswith("langchain_community"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tavily)
    with pytest.raises(ToolUnavailable, match="'tavily-python' package"):
        web_search_tool()
    with pytest.raises(ToolUnavailable, match="'langchain-community' package"):
        wikipedia_tool()


def test_web_search_formats_results() -> None:
    client = _FakeTavily(
        {
            "answer": "Bern",
            "results": [
                {"title": "Bern - Wikipedia", "url": "https://en.wikipedia.org/wiki/Bern", "content": "Bern is\n the capital."},
                {"title": "Swiss cities", "url": "https://example.org", "content": "x" * 600},
            ],
        }
    )
    out = WebSearchTool(client=client, max_results=2).invoke({"query": "capital of Switzerland"})
    assert client.calls == [("capital of Switzerland", 2)]
    lines = out.splitlines()
    assert lines[0] == "Answer: Bern"
    assert lines[1:3] == ["[1] Bern - Wikipedia (https://en.wikipedia.org/wiki/Bern)", "Bern is the capital."]
    assert lines[3] == "[2] Swiss cities (https://example.org)"
    assert lines[4] == "x" * 500 + " ..."


def test_web_search_errors_and_empty_results() -> None:
    assert WebSearchTool(client=_FakeTavily({"results": []})).invoke({"query": "q"}) == "No web results found."
    with pytest.raises(ToolException, match="web_search failed: offline"):
        WebSearchTool(client=_FakeTavily(ConnectionError("offline"))).invoke({"query": "q"})


def test_wikipedia_uses_wrapper_and_wraps_errors() -> None:
    class Wrapper:
        def run(self, query: str) -> str:
            if query == "down":
                raise ConnectionError("no network")
            return f"Page: {query}\nSummary: ..."

    tool = WikipediaTool(api_wrapper=Wrapper())
    assert tool.invoke({"query": "Alan Turing"}).startswith("Page: Alan Turing")
    with pytest.raises(ToolException, match="wikipedia failed: no network"):
        tool.invoke({"query": "down"})
    assert wikipedia_tool().name == "wikipedia"
