"""The four AgentFlow modules as LangGraph nodes.

Each factory takes a LangChain `BaseChatModel` (one model may serve all four) and
returns a plain function `state -> partial state update`. The planner calls its model
directly inside the node, so callbacks see `langgraph_node == "planner"` in their
metadata: that is how the Flow-GRPO trainer picks the planner's generations out of a
live graph run without a second code path.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool

from agentflow import prompts
from agentflow.extract import extract_answer, question_only, wants_answer_tags
from agentflow.nodes import stops
from agentflow.nodes.parsing import parse_planner, parse_tool_arguments, parse_verifier
from agentflow.state import AgentFlowState, MemoryRecord
from agentflow.tools.cards import render_tool_cards, tool_card

Node = Callable[[AgentFlowState, RunnableConfig], dict[str, Any]]

RESULT_CHARS_IN_PROMPT = 600  # memory shown to a module: enough for a result, bounded for small contexts
RESULT_CHARS_STORED = 4000


def render_memory(memory: Sequence[MemoryRecord]) -> str:
    """The memory M as the modules read it: one short block per turn."""
    if not memory:
        return prompts.NO_STEPS
    blocks = []
    for record in memory:
        outcome = f"ERROR: {record['error']}" if record["error"] else record["result"]
        if len(outcome) > RESULT_CHARS_IN_PROMPT:
            outcome = outcome[:RESULT_CHARS_IN_PROMPT] + " ..."
        blocks.append(prompts.MEMORY_RECORD.format(**record, outcome=outcome).rstrip())
    return "\n".join(blocks)


def _truncate(text: str, limit: int = RESULT_CHARS_STORED) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[truncated {len(text) - limit} characters]"


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


Shot = tuple[str, str]  # a worked exchange: (user turn, assistant reply)


def _call(
    llm: BaseChatModel,
    system: str,
    user: str,
    prefix: str,
    config: RunnableConfig,
    rule: stops.StopRule,
    shots: Sequence[Shot] = (),
    reminder: str = "",
) -> str:
    """One chat call, read up to where the module's stop rule says the reply ends.

    A model that continues a trailing AI message (`continues_final_message`, e.g.
    LocalChatModel) gets `prefix` as the start of its reply and, where it takes one
    (`takes_stop_when`), the rule's end as a stop predicate checked after every token. A
    served chat API would answer a trailing AI message as a finished turn, so it gets no
    prefix but the worked `shots` as real user/assistant turns and the format `reminder`
    after the question (docs/design.md §1). Both get the rule's stop strings (the OpenAI
    `stop` parameter for a served model); a served reply, which no predicate could stop,
    is cut where the rule says, like every reply (`StopRule.cut`, docs/design.md §1)."""
    local = bool(getattr(llm, "continues_final_message", False))
    stop = rule.stop_strings(local)
    if local:
        messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(user)]
        if prefix:
            messages.append(AIMessage(prefix))
        kwargs: dict[str, Any] = {}
        if rule.end is not None and getattr(llm, "takes_stop_when", False):
            end = rule.end
            kwargs["stop_when"] = lambda completion: end(prefix + completion) is not None
        reply = prefix + _text(llm.invoke(messages, config, stop=stop, **kwargs))
    else:
        messages = [SystemMessage(system)]
        for shot_user, shot_reply in shots:
            messages += [HumanMessage(shot_user), AIMessage(shot_reply)]
        messages.append(HumanMessage(user + reminder))
        reply = _text(llm.invoke(messages, config, stop=stop))
    return rule.cut(reply, local)


def _planner_examples(tools: Sequence[BaseTool]) -> list[tuple[str, str, str]]:
    """(question, sub-goal, tool) per kind of tool the planner has, from PLANNER_EXAMPLES."""
    names = [t.name for t in tools]
    shown = [n for n in names if n in prompts.PLANNER_EXAMPLES]
    if "calculator" in shown and "python" in shown:
        shown.remove("python")  # the same arithmetic example twice teaches nothing
    arithmetic = prompts.PLANNER_EXAMPLES["calculator"]
    return [(q, g, name) for name in (shown or names[:1]) for q, g in [prompts.PLANNER_EXAMPLES.get(name, arithmetic)]]


def planner_system_prompt(tools: Sequence[BaseTool]) -> str:
    """The planner's system prompt: tool cards, names, one example per kind of tool."""
    examples = "\n\n".join(
        prompts.PLANNER_EXAMPLE.format(question=q, sub_goal=g, tool=name) for q, g, name in _planner_examples(tools)
    )
    names = ", ".join(t.name for t in tools)
    return prompts.PLANNER_SYSTEM.format(tool_cards=render_tool_cards(tools), tool_names=names, examples=examples)


def planner_shots(tools: Sequence[BaseTool]) -> list[Shot]:
    """The planner's worked exchanges for served models: the system prompt's examples as
    chat turns, each a first turn (no steps yet)."""
    return [
        (prompts.PLANNER_USER.format(query=q, memory=prompts.NO_STEPS),
         prompts.PLANNER_SHOT_REPLY.format(sub_goal=g, tool=name))
        for q, g, name in _planner_examples(tools)
    ]


def make_planner(llm: BaseChatModel, tools: Sequence[BaseTool]) -> Node:
    names = [t.name for t in tools]
    system = planner_system_prompt(tools)
    shots = planner_shots(tools)

    def planner(state: AgentFlowState, config: RunnableConfig) -> dict[str, Any]:
        user = prompts.PLANNER_USER.format(query=question_only(state["query"]), memory=render_memory(state.get("memory", [])))
        reply = _call(llm, system, user, prompts.PLANNER_PREFIX, config, stops.PLANNER, shots, prompts.PLANNER_REMINDER)
        action = parse_planner(reply, names)
        update: dict[str, Any] = {
            "turn": state.get("turn", 0) + 1,
            "sub_goal": action.sub_goal,
            "tool_name": action.tool_name,
            "context": action.context,
            "plan_error": action.error,
        }
        if "started_at" not in state:
            update["started_at"] = time.time()
        return update

    return planner


def make_executor(llm: BaseChatModel, tools: Sequence[BaseTool], tool_timeout: float = 60.0) -> Node:
    by_name = {t.name: t for t in tools}

    def executor(state: AgentFlowState, config: RunnableConfig) -> dict[str, Any]:
        record = MemoryRecord(
            turn=state["turn"],
            sub_goal=state.get("sub_goal", ""),
            tool_name=state.get("tool_name", ""),
            command="",
            result="",
            error=state.get("plan_error"),
        )
        tool = by_name.get(state.get("tool_name", ""))
        if record["error"] is None and tool is None:
            record["error"] = f"unknown tool {state.get('tool_name')!r}"
        if record["error"] is None:
            _execute(llm, tool, state, record, tool_timeout, config)
        return {"memory": [record], "tool_errors": int(record["error"] is not None)}

    return executor


def _execute(
    llm: BaseChatModel,
    tool: BaseTool,
    state: AgentFlowState,
    record: MemoryRecord,
    timeout: float,
    config: RunnableConfig,
) -> None:
    """Write the tool's arguments with the model, validate them, run the tool with a timeout."""
    card = tool_card(tool)
    args_hint = ", ".join(f"{a} ({s['type']}): {s['description']}" for a, s in card["input_types"].items())
    example = json.dumps({a: "..." for a in card["input_types"]})
    required = tool.get_input_jsonschema().get("required", [])
    # Starting the reply with `{"arg": "` makes a small model fill in a value instead of
    # inventing a format; the parser copes with a value it forgets to close.
    prefix = f'{{"{required[0]}": "' if len(required) == 1 else prompts.EXECUTOR_PREFIX
    system = prompts.EXECUTOR_SYSTEM.format(
        tool_name=tool.name, tool_card=f"{card['description']}\nArguments: {args_hint}", example=example
    )
    shots: list[Shot] = []
    if tool.name in prompts.EXECUTOR_EXAMPLES:
        goal, call = prompts.EXECUTOR_EXAMPLES[tool.name]
        system += prompts.EXECUTOR_EXAMPLE.format(sub_goal=goal, call=call)
        # served models: the same worked call as an exchange, its question the planner
        # example's whose sub-goal it is
        question = next((q for q, g in prompts.PLANNER_EXAMPLES.values() if g == goal), goal)
        shots.append((prompts.EXECUTOR_USER.format(query=question, sub_goal=goal, context="none"), call))
    user = prompts.EXECUTOR_USER.format(
        query=question_only(state["query"]), sub_goal=record["sub_goal"], context=state.get("context") or "none"
    )
    reminder = prompts.EXECUTOR_REMINDER.format(tool_name=tool.name)
    parsed = parse_tool_arguments(_call(llm, system, user, prefix, config, stops.EXECUTOR, shots, reminder), tool)
    if parsed.args is None:
        record["error"] = parsed.error
        return
    record["command"] = json.dumps(parsed.args, ensure_ascii=False)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tool-{tool.name}")
    try:
        result = pool.submit(tool.invoke, parsed.args, config).result(timeout=timeout)
        record["result"] = _truncate(result if isinstance(result, str) else str(result))
    except concurrent.futures.TimeoutError:
        record["error"] = f"tool {tool.name} timed out after {timeout:g}s"
    except Exception as exc:  # a tool crash is data for the memory, never the end of the run
        record["error"] = _truncate(f"{type(exc).__name__}: {exc}", 1000)
    finally:
        # A hung tool thread cannot be killed; do not wait for it (the sandboxed
        # python tool kills its own process group on its own timeout).
        pool.shutdown(wait=False, cancel_futures=True)


VERIFIER_SHOTS: list[Shot] = [
    (prompts.VERIFIER_USER.format(query=query, memory=memory), reply) for query, memory, reply in prompts.VERIFIER_SHOTS
]


def verifier_user(query: str, memory: Sequence[MemoryRecord]) -> str:
    """The verifier's question: the query (without any answer-format instruction) and the memory."""
    return prompts.VERIFIER_USER.format(query=question_only(query), memory=render_memory(memory))


def make_verifier(llm: BaseChatModel) -> Node:
    def verifier(state: AgentFlowState, config: RunnableConfig) -> dict[str, Any]:
        user = verifier_user(state["query"], state.get("memory", []))
        reply = _call(llm, prompts.VERIFIER_SYSTEM, user, prompts.VERIFIER_PREFIX, config, stops.VERIFIER,
                      VERIFIER_SHOTS, prompts.VERIFIER_REMINDER)
        verdict, _ = parse_verifier(reply)
        return {"verdict": verdict}

    return verifier


def make_generator(llm: BaseChatModel) -> Node:
    def generator(state: AgentFlowState, config: RunnableConfig) -> dict[str, Any]:
        query = state["query"]
        system = prompts.GENERATOR_SYSTEM + (prompts.GENERATOR_ANSWER_TAGS if wants_answer_tags(query) else "")
        # the tag instruction is in the system prompt; repeated in the question, a small
        # generator tends to echo it instead of answering
        user = prompts.GENERATOR_USER.format(query=question_only(query), memory=render_memory(state.get("memory", [])))
        response = _call(llm, system, user, "", config, stops.GENERATOR)
        return {"response": response, "answer": extract_answer(response)}

    return generator

