"""`build_agentflow`: the four modules wired as a LangGraph `StateGraph`.

    START -> planner -> executor -> verifier --CONTINUE--> planner
                                             \\--STOP / turn limit / time limit--> generator -> END

The verifier's verdict is the graph's only conditional edge (`route_after_verifier`).
Limits can be set when building and overridden per call through
`config["configurable"]` (`max_turns`, `max_seconds`), so an eval can sweep the turn
budget over one compiled graph.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agentflow.state import AgentFlowState
from agentflow.nodes import make_executor, make_generator, make_planner, make_verifier

NODES = ("planner", "executor", "verifier", "generator")
DEFAULT_MAX_TURNS = 10  # published inference limits: 10 steps, 300 s
DEFAULT_MAX_SECONDS = 300.0


def make_router(max_turns: int, max_seconds: float):
    """The conditional edge out of the verifier, with the limits it enforces."""

    def route_after_verifier(state: AgentFlowState, config: RunnableConfig) -> Literal["planner", "generator"]:
        configurable = (config or {}).get("configurable", {})
        turns = configurable.get("max_turns", max_turns)
        seconds = configurable.get("max_seconds", max_seconds)
        if state.get("verdict") == "STOP" or state.get("turn", 0) >= turns:
            return "generator"
        if time.time() - state.get("started_at", time.time()) >= seconds:
            return "generator"
        return "planner"

    return route_after_verifier


def build_agentflow(
    llm: BaseChatModel | None = None,
    tools: Sequence[BaseTool] | None = None,
    *,
    planner_llm: BaseChatModel | None = None,
    executor_llm: BaseChatModel | None = None,
    verifier_llm: BaseChatModel | None = None,
    generator_llm: BaseChatModel | None = None,
    max_turns: int = DEFAULT_MAX_TURNS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    tool_timeout: float = 60.0,
    checkpointer=None,
    corpus=None,
) -> CompiledStateGraph:
    """Compile an AgentFlow graph.

    `llm` serves every module unless a per-module model is given; with neither, the
    embedded default (SmolLM2-135M-Instruct) is loaded. `tools` defaults to the
    offline set (`agentflow.tools.default_tools`, with `local_search` over `corpus`
    when one is given). `checkpointer` is passed to `compile` unchanged.
    """
    from agentflow.tools import default_tools

    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if llm is None and None in (planner_llm, executor_llm, verifier_llm, generator_llm):
        from agentflow.models import LocalChatModel

        llm = LocalChatModel.from_pretrained()
    tools = list(tools) if tools is not None else default_tools(llm=llm or generator_llm, corpus=corpus)
    if not tools:
        raise ValueError("AgentFlow needs at least one tool")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique, got {names}")

    graph = StateGraph(AgentFlowState)
    graph.add_node("planner", make_planner(planner_llm or llm, tools))
    graph.add_node("executor", make_executor(executor_llm or llm, tools, tool_timeout=tool_timeout))
    graph.add_node("verifier", make_verifier(verifier_llm or llm))
    graph.add_node("generator", make_generator(generator_llm or llm))
    graph.add_edge(START, "planner")
    graph.add_edge("planner", "executor")
    graph.add_edge("executor", "verifier")
    graph.add_conditional_edges("verifier", make_router(max_turns, max_seconds), ["planner", "generator"])
    graph.add_edge("generator", END)
    return graph.compile(checkpointer=checkpointer, name="agentflow")
