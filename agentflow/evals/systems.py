"""The systems an eval compares, built over the same models and tools, and how each is run
on one query and read back into a result row.

- agentflow: the four-module graph, one model per role;
- react: LangGraph's prebuilt ReAct agent (`agentflow.evals.react`) on the default model.

Counting, per item: AgentFlow's tool calls are its planner turns (memory records, one
tool each, an unparsable action included) and its tool errors the records with an
error; ReAct's turns are model calls and its tool calls/errors its `ToolMessage`s
(status "error").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph

from agentflow.factory import DEFAULT_ROLE, ToolSpec, agentflow_graph

SYSTEMS = ("agentflow", "react")
# The row field the scorer reads: AgentFlow's generator response (the scorer takes its
# last <answer>), ReAct's answer part of the final message (see `_react_row`).
SCORED_FIELD = {"agentflow": "prediction", "react": "answer"}


def check_system(system: str) -> None:
    """ValueError unless `system` is one of SYSTEMS."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


def eval_tools(benchmark: str, tools: str | Sequence[str] | None) -> ToolSpec:
    """The tools for `benchmark` (checked, see `ToolSpec.parse`): toolmix's local_search
    reads the corpus its items were made from."""
    corpus = None
    if benchmark == "toolmix":
        from agentflow.evals.toolmix import make_toolmix

        corpus = make_toolmix().corpus
    return ToolSpec.parse(tools, corpus)


def build_system(
    system: str, llms: Mapping[str, BaseChatModel], tools: Sequence[BaseTool], max_turns: int
) -> CompiledStateGraph:
    """The compiled `system` over `llms` (role -> model, as `agentflow.factory.load_models`
    gives them) and `tools`; `max_turns` is AgentFlow's build-time budget, the largest a
    run may ask for through `run_config`."""
    check_system(system)
    if system == "react":
        from agentflow.evals.react import build_react

        return build_react(llms[DEFAULT_ROLE], tools)
    return agentflow_graph(llms, tools, max_turns=max_turns)


def run_config(system: str, max_turns: int) -> dict[str, Any]:
    """The per-call config that holds a run of `system` to `max_turns`."""
    if system == "react":
        from agentflow.evals.react import react_recursion_limit

        return {"recursion_limit": react_recursion_limit(max_turns)}
    # planner, executor, verifier per turn, then the generator (default limit 25 is < 10 turns)
    return {"configurable": {"max_turns": max_turns}, "recursion_limit": 3 * max_turns + 5}


def run_system(graph: CompiledStateGraph, system: str, query: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Run `system` on `query`; the row fields read from its final state (prediction,
    answer, turns, memory, tool_calls, tool_errors, and the system's own extras)."""
    if system == "react":
        return _react_row(graph.invoke({"messages": [HumanMessage(query)]}, config))
    return _agentflow_row(graph.invoke({"query": query}, config))


def _agentflow_row(state: Mapping[str, Any]) -> dict[str, Any]:
    memory = list(state.get("memory", []))
    return {
        "prediction": state.get("response", ""),
        "answer": state.get("answer", ""),
        "turns": int(state.get("turn", 0)),
        "verdict": state.get("verdict"),
        "memory": memory,
        "tool_calls": [r.get("tool_name") or "(none)" for r in memory],
        "tool_errors": sum(r.get("error") is not None for r in memory),
    }


def _react_row(state: Mapping[str, Any]) -> dict[str, Any]:
    from agentflow.evals.react import react_trace
    from agentflow.extract import extract_answer

    row = react_trace(state.get("messages", []))
    text = row["prediction"]
    final = re.split(r"Final\s*Answer\s*:", text, flags=re.IGNORECASE)
    # The answer tag when there is one (the same contract as AgentFlow's generator), else
    # what follows the ReAct "Final Answer:", so the "Thought:" text is not scored.
    row["answer"] = extract_answer(text) if "<answer>" in text.lower() or len(final) == 1 else final[-1].strip()
    return row
