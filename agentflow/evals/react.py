"""The monolithic baseline: LangGraph's prebuilt ReAct agent with AgentFlow's tools.

One model does everything (think, pick a tool, write its arguments, answer) in one
growing conversation, where AgentFlow splits the work over four modules and a memory.
Same tools, same model, same answer instruction, so the two systems compare directly.

Models without native tool calling (`LocalChatModel`, the scripted test model) are
wrapped in `TextToolCallingChatModel` (tools rendered into a ReAct prompt, the call
parsed from the text). Tool failures reach the model as error `ToolMessage`s
(`handle_tool_errors=True`), as AgentFlow puts them in its memory, instead of ending
the run.

Turn budget: `max_turns` tool rounds, then one more model call to answer. In the
prebuilt agent a round is two graph steps (agent, tools) and the answering call needs
a spare step, so the recursion limit is `2 * max_turns + 2` (an odd limit can raise
GraphRecursionError instead); if the model still asks for a tool on its last call, the prebuilt
agent answers "Sorry, need more steps to process this request." (scored as is).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph

from agentflow.evals.text_tool_calling import with_text_tool_calling


def react_recursion_limit(max_turns: int) -> int:
    """Graph steps for `max_turns` tool rounds plus the answering call."""
    return 2 * max_turns + 2


def build_react(llm: BaseChatModel, tools: Sequence[BaseTool]) -> CompiledStateGraph:
    """The prebuilt ReAct agent over `llm` (wrapped for text tool calls if needed) and `tools`.

    The turn budget is per call: `config={"recursion_limit": react_recursion_limit(n)}`.
    """
    from langgraph.prebuilt import ToolNode

    with warnings.catch_warnings():  # deprecated in favour of langchain.agents.create_agent (not installed)
        warnings.simplefilter("ignore")
        from langgraph.prebuilt import create_react_agent

        return create_react_agent(
            with_text_tool_calling(llm), ToolNode(list(tools), handle_tool_errors=True), name="react"
        )


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


def react_trace(messages: Sequence[BaseMessage]) -> dict[str, Any]:
    """Turns, tool calls, errors and a memory-like record list from a ReAct transcript.

    turns = model calls (AIMessages); tool calls = ToolMessages; tool errors = those with
    status "error"; prediction = the last AIMessage's text.
    """
    ai = [m for m in messages if isinstance(m, AIMessage)]
    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    memory: list[dict[str, Any]] = []
    for turn, message in enumerate(ai, start=1):
        for call in message.tool_calls:
            result = results.get(call["id"])
            failed = result is not None and result.status == "error"
            memory.append({
                "turn": turn,
                "sub_goal": _text(message),
                "tool_name": call["name"],
                "command": json.dumps(call["args"], ensure_ascii=False),
                "result": "" if result is None or failed else _text(result),
                "error": (_text(result) if failed else None) if result is not None else "no tool result",
            })
    tool_messages = [m for m in messages if isinstance(m, ToolMessage)]
    return {
        "prediction": _text(ai[-1]) if ai else "",
        "turns": len(ai),
        "memory": memory,
        "tool_calls": [m.name or "" for m in tool_messages],
        "tool_errors": sum(m.status == "error" for m in tool_messages),
        "messages": [
            {"type": m.type, "content": _text(m), **({"tool_calls": m.tool_calls} if isinstance(m, AIMessage) and m.tool_calls else {}),
             **({"name": m.name, "status": m.status} if isinstance(m, ToolMessage) else {})}
            for m in messages
        ],
    }
