"""Text tool calling for chat models without native tool calls.

`LocalChatModel` (and any small local model) has no `bind_tools`: it emits text, not
structured tool calls. `TextToolCallingChatModel` wraps such a model so LangChain /
LangGraph code that needs `bind_tools` (the prebuilt ReAct agent, the eval harness's
monolithic baseline) can run on it:

- `bind_tools(tools)` stores the tools' OpenAI-style schemas on the binding, as native
  tool-calling models do (so `create_react_agent` sees them bound);
- each call renders those tools into a ReAct system prompt (`prompts.REACT_SYSTEM`),
  turns earlier tool calls / `ToolMessage`s back into `Action:` / `Observation:` text,
  starts the reply with `prompts.REACT_PREFIX` (a trailing `AIMessage` is a reply prefix
  for `LocalChatModel`), and stops at `Observation:`;
- the reply's `Action:` / `Action Input:` is parsed into an `AIMessage.tool_calls` entry.
  A call to an unknown tool or with arguments that do not parse is still emitted as a
  tool call, so the tool node answers it with an error `ToolMessage` and the eval counts
  it as a tool-call error, the same way an unparsable planner action counts in AgentFlow.
  A reply without `Action:` is the final answer.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from agentflow import prompts
from agentflow.extract import json_objects

_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_ACTION_INPUT = re.compile(r"^\s*Action\s*Input\s*:\s*", re.IGNORECASE | re.MULTILINE)
_FINAL = re.compile(r"Final\s*Answer\s*:", re.IGNORECASE)
_EXAMPLE_INPUTS = {"calculator": {"expression": "4821 * 377"}, "python": {"code": "print(4821 * 377)"}}


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def render_tools(tools: Sequence[dict[str, Any]]) -> str:
    """One block per tool: name, description, arguments."""
    blocks = []
    for tool in tools:
        fn = _function(tool)
        props = fn.get("parameters", {}).get("properties", {})
        args = ", ".join(f"{name} ({spec.get('type', 'any')}): {spec.get('description', '')}".rstrip(": ")
                         for name, spec in props.items())
        blocks.append(f"- {fn['name']}: {fn.get('description', '').strip()}\n  Arguments: {args or 'none'}")
    return "\n".join(blocks)


def react_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    names = [_function(t)["name"] for t in tools]
    example_tool = next((n for n in ("calculator", "python") if n in names), names[0] if names else "calculator")
    example_input = _EXAMPLE_INPUTS.get(example_tool, {"input": "..."})
    return prompts.REACT_SYSTEM.format(
        tool_descriptions=render_tools(tools),
        tool_names=", ".join(names),
        example_tool=example_tool,
        example_input=json.dumps(example_input),
    )


def parse_action_input(text: str, tool: dict[str, Any] | None) -> dict[str, Any]:
    """The arguments of a call: the last JSON object in `text`; for a tool with one
    required argument also a bare value. Unparsable input gives `{}` (the tool node then
    reports the missing argument as the call's error)."""
    text = text.strip()
    fn = _function(tool) if tool else {}
    params = fn.get("parameters", {})
    props = params.get("properties", {})
    required = params.get("required", [])
    candidates = json_objects(text)
    if candidates:
        args = candidates[-1]
        if len(required) == 1 and required[0] not in args and len(args) == 1:
            args = {required[0]: next(iter(args.values()))}  # {"query": ..} to a differently named arg
        return args
    if len(required) == 1 and text:
        raw = text.split("\n```")[0].strip().strip("`").strip()
        if raw.startswith(("python\n", "py\n")):
            raw = raw.split("\n", 1)[1]
        if raw[:1] == raw[-1:] and raw[:1] in "'\"" and len(raw) >= 2:
            raw = raw[1:-1]
        if raw and props.get(required[0], {}).get("type", "string") == "string":
            return {required[0]: raw}
    return {}


def parse_react_reply(text: str, tools: Sequence[dict[str, Any]]) -> AIMessage:
    """An `AIMessage` with one tool call if the reply names an action before any final answer."""
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if action is None or (final is not None and final.start() < action.start()):
        return AIMessage(content=text)
    name = action.group(1).strip().strip("`*'\"[]() ").split()[0] if action.group(1).strip() else ""
    by_name = {_function(t)["name"]: t for t in tools}
    lowered = {n.lower(): n for n in by_name}
    name = lowered.get(name.lower(), name)
    rest = text[action.end():]
    found = _ACTION_INPUT.search(rest)
    args_text = rest[found.end():] if found else ""
    # Small models run on past the call ("Output: ...", a new "Thought:"); that is not input.
    args_text = re.split(r"^[ \t]*(?:Observation|Output|Thought|Action|Final\s*Answer)[ \t]*:", args_text,
                         flags=re.IGNORECASE | re.MULTILINE)[0]
    args = parse_action_input(args_text, by_name.get(name))
    call = {"name": name or "(none)", "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}
    return AIMessage(content=text, tool_calls=[call])


def _as_text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


def render_react_messages(messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    """The conversation as plain text turns for a model without tool messages."""
    system = react_system_prompt(tools)
    extra = [_as_text(m) for m in messages if isinstance(m, SystemMessage)]
    if extra:
        system += "\n\n" + "\n\n".join(extra)
    out: list[BaseMessage] = [SystemMessage(system)]
    for message in messages:
        if isinstance(message, SystemMessage):
            continue
        if isinstance(message, ToolMessage):
            observation = prompts.REACT_OBSERVATION.format(result=_as_text(message))
            if out and isinstance(out[-1], HumanMessage):  # several tool results in a row
                out[-1] = HumanMessage(_as_text(out[-1]) + "\n" + observation)
            else:
                out.append(HumanMessage(observation))
        elif isinstance(message, AIMessage):
            text = _as_text(message)
            if message.tool_calls and "Action" not in text:  # a call not written by this wrapper
                call = message.tool_calls[0]
                text += f"\nAction: {call['name']}\nAction Input: {json.dumps(call['args'])}"
            out.append(AIMessage(text))
        else:
            content = _as_text(message)
            out.append(HumanMessage(f"Question: {content}" if len(out) == 1 else content))
    return out


class TextToolCallingChatModel(BaseChatModel):
    """Wrap `inner` (any chat model) with prompt-rendered tools and text-parsed tool calls.

    With no tools bound it passes messages through unchanged. `prefix` starts each
    reply (the inner model must treat a trailing `AIMessage` as a reply prefix, as
    `LocalChatModel` does; set it to "" for models that do not).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseChatModel
    prefix: str = prompts.REACT_PREFIX

    @property
    def _llm_type(self) -> str:
        return f"text-tool-calling({self.inner._llm_type})"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not tools:
            reply = self.inner.invoke(messages, stop=stop, **kwargs)
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=_as_text(reply)))])
        rendered = render_react_messages(messages, tools)
        if self.prefix:
            rendered.append(AIMessage(self.prefix))
        stops = list(dict.fromkeys([*(stop or []), "\nObservation:"]))
        reply = self.inner.invoke(rendered, stop=stops, **kwargs)
        text = (self.prefix + " " + _as_text(reply).lstrip()) if self.prefix else _as_text(reply)
        message = parse_react_reply(text, tools)
        message.response_metadata = dict(reply.response_metadata or {})
        if getattr(reply, "usage_metadata", None):
            message.usage_metadata = reply.usage_metadata
        return ChatResult(generations=[ChatGeneration(message=message)])


def with_text_tool_calling(llm: BaseChatModel, prefix: str = prompts.REACT_PREFIX) -> BaseChatModel:
    """`llm` itself if it implements `bind_tools`, else wrapped in `TextToolCallingChatModel`."""
    if type(llm).bind_tools is not BaseChatModel.bind_tools:
        return llm
    return TextToolCallingChatModel(inner=llm, prefix=prefix)
