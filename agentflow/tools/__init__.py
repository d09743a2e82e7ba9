"""AgentFlow's tools: LangChain `BaseTool`s that raise `ToolException` on failure.

`default_tools` gives the offline set the agent runs with by default;
`get_tools` builds a set by name (the CLI's `--tools python,calculator`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool

from agentflow.tools.base_generator import BASE_GENERATOR_SYSTEM, BaseGeneratorTool
from agentflow.tools.calculator import CalculatorTool
from agentflow.tools.cards import render_tool_cards, tool_card
from agentflow.tools.local_search import LocalSearchTool
from agentflow.tools.python_sandbox import PythonSandboxTool, SandboxLimits
from agentflow.tools.web import (
    ToolUnavailable,
    WebSearchTool,
    WikipediaTool,
    web_search_tool,
    wikipedia_tool,
)

Corpus = str | os.PathLike[str] | Sequence[str]

TOOL_NAMES = ("python", "calculator", "local_search", "base_generator", "web_search", "wikipedia")

__all__ = [
    "BASE_GENERATOR_SYSTEM",
    "TOOL_NAMES",
    "BaseGeneratorTool",
    "CalculatorTool",
    "LocalSearchTool",
    "PythonSandboxTool",
    "SandboxLimits",
    "ToolUnavailable",
    "WebSearchTool",
    "WikipediaTool",
    "default_tools",
    "get_tools",
    "render_tool_cards",
    "tool_card",
    "web_search_tool",
    "wikipedia_tool",
]


def default_tools(
    llm: BaseChatModel | None = None, corpus: Corpus | None = None, python_timeout: float = 10.0
) -> list[BaseTool]:
    """The offline set: python and calculator, plus local_search with a corpus and base_generator with an llm."""
    tools: list[BaseTool] = [_python(python_timeout), CalculatorTool()]
    if corpus is not None:
        tools.append(_local_search(corpus))
    if llm is not None:
        tools.append(BaseGeneratorTool(llm=llm))
    return tools


def get_tools(
    names: Sequence[str],
    llm: BaseChatModel | None = None,
    corpus: Corpus | None = None,
    python_timeout: float = 10.0,
) -> list[BaseTool]:
    """Build the named tools, in order.

    Unknown names and tools missing what they need (an llm, a corpus) raise
    ValueError; online tools that cannot be built raise ToolUnavailable.
    """
    wanted = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in wanted if name not in TOOL_NAMES]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; valid tools: {', '.join(TOOL_NAMES)}")
    tools: list[BaseTool] = []
    for name in dict.fromkeys(wanted):
        if name == "python":
            tools.append(_python(python_timeout))
        elif name == "calculator":
            tools.append(CalculatorTool())
        elif name == "local_search":
            if corpus is None:
                raise ValueError("local_search needs a corpus (a JSONL path or a list of texts)")
            tools.append(_local_search(corpus))
        elif name == "base_generator":
            if llm is None:
                raise ValueError("base_generator needs a chat model (llm)")
            tools.append(BaseGeneratorTool(llm=llm))
        elif name == "web_search":
            tools.append(web_search_tool())
        else:
            tools.append(wikipedia_tool())
    return tools


def _python(timeout: float) -> PythonSandboxTool:
    return PythonSandboxTool(limits=SandboxLimits(timeout_s=timeout))


def _local_search(corpus: Corpus) -> LocalSearchTool:
    """A path (str or PathLike) is a JSONL file; any other sequence is the texts themselves."""
    if isinstance(corpus, (str, os.PathLike)):
        return LocalSearchTool.from_jsonl(corpus)
    return LocalSearchTool.from_texts(list(corpus))
