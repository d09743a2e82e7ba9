"""Online tools: `web_search` (Tavily) and `wikipedia`.

They need a network, and Tavily needs an API key, so they are built by
factories that raise `ToolUnavailable` with a message saying what is missing
(the CLI prints it). Client libraries are imported lazily so the offline tools
work without them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from agentflow.tools.cards import card_metadata
from agentflow.tools.contract import NonBlankText, reported_as_tool_failure

TAVILY_KEY_ENV = "TAVILY_API_KEY"


class ToolUnavailable(RuntimeError):
    """A tool cannot be built here (missing API key or package)."""


class WebQueryInput(BaseModel):
    """Arguments of the online search tools."""

    query: NonBlankText = Field(description="A short web search query.")


class WebSearchTool(BaseTool):
    """Tavily web search; `client` is anything with Tavily's `search(query, max_results=...)`."""

    name: str = "web_search"
    description: str = "Search the web and return the top results (title, URL, snippet). Use for recent or niche facts."
    args_schema: type[BaseModel] = WebQueryInput
    client: Any
    max_results: int = Field(default=3, ge=1)
    max_snippet_chars: int = 500
    metadata: dict = card_metadata(
        examples=[{"query": "2024 Nobel Prize in Physics winners"}],
        limitations=["Snippets can be outdated or wrong; needs internet."],
        best_practices=["Search for one specific fact at a time."],
    )

    def _run(self, query: str) -> str:
        with reported_as_tool_failure(self.name):
            response = self.client.search(query, max_results=self.max_results)
        return format_search_results(response, self.max_snippet_chars)


def format_search_results(response: dict[str, Any], max_snippet_chars: int = 500) -> str:
    """Number Tavily's results as `[i] title (url)` plus a snippet, answer first if given."""
    lines = []
    if response.get("answer"):
        lines.append(f"Answer: {response['answer']}")
    for rank, item in enumerate(response.get("results") or [], start=1):
        snippet = " ".join(str(item.get("content", "")).split())
        if len(snippet) > max_snippet_chars:
            snippet = snippet[:max_snippet_chars].rstrip() + " ..."
        lines.append(f"[{rank}] {item.get('title', '(no title)')} ({item.get('url', '')})\n{snippet}")
    return "\n".join(lines) if lines else "No web results found."


class WikipediaTool(BaseTool):
    """Wikipedia lookup through langchain-community's WikipediaAPIWrapper; errors become ToolException."""

    name: str = "wikipedia"
    description: str = "Look up a topic on Wikipedia and return page summaries. Use for people, places, events, definitions."
    args_schema: type[BaseModel] = WebQueryInput
    api_wrapper: Any
    metadata: dict = card_metadata(
        examples=[{"query": "Alan Turing"}],
        limitations=["Summaries only; needs internet."],
        best_practices=["Query the page title (a name or term), not a full question."],
    )

    def _run(self, query: str) -> str:
        with reported_as_tool_failure(self.name):
            return self.api_wrapper.run(query)


def web_search_tool(max_results: int = 3) -> WebSearchTool:
    """Build `web_search` from TAVILY_API_KEY; ToolUnavailable says what is missing."""
    api_key = os.environ.get(TAVILY_KEY_ENV, "").strip()
    if not api_key:
        raise ToolUnavailable(f"web_search skipped: set {TAVILY_KEY_ENV} to use Tavily web search")
    try:
        from tavily import TavilyClient
    except ImportError as exc:
        raise ToolUnavailable("web_search skipped: the 'tavily-python' package is not installed") from exc
    return WebSearchTool(client=TavilyClient(api_key=api_key), max_results=max_results)


def wikipedia_tool(top_k_results: int = 2, max_chars: int = 2000) -> WikipediaTool:
    """Build `wikipedia`; ToolUnavailable when langchain-community or `wikipedia` is missing."""
    try:
        with warnings.catch_warnings():  # the package's sunset notice is noise for our users
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_community.utilities.wikipedia import WikipediaAPIWrapper
    except ImportError as exc:
        raise ToolUnavailable("wikipedia skipped: the 'langchain-community' package is not installed") from exc
    try:
        wrapper = WikipediaAPIWrapper(top_k_results=top_k_results, doc_content_chars_max=max_chars)
    except ImportError as exc:
        raise ToolUnavailable("wikipedia skipped: the 'wikipedia' package is not installed") from exc
    return WikipediaTool(api_wrapper=wrapper)
