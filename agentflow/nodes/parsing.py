"""Parsers for every module's output. They never raise: each returns a result that
says what it found and, when the output was malformed, why (recorded in memory as a
tool-call error so the run goes on and the trainer can count it)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel, ValidationError

from agentflow.extract import json_objects

# A planner field's label at the start of a line ("Sub-Goal:", "**Tool Name**:", "- context:").
# The planner's stop rule (nodes/stops.py) finds the end of the contract with the same pattern.
PLANNER_LABEL = r"^[\s*#>-]*(context|sub[- _]?goal|tool[ _]?name)\s*\**\s*[:：]"
_FIELD = re.compile(
    r"(?im)" + PLANNER_LABEL + r"\s*\**(.*?)\s*(?=" + PLANNER_LABEL.replace("(", "(?:", 1) + r"|\Z)",
    re.S,
)


@dataclass(frozen=True)
class PlannerAction:
    context: str
    sub_goal: str
    tool_name: str  # the canonical tool name, or "" when none could be matched
    error: str | None


def canonical_tool_name(name: str) -> str:
    """Tool names compare case-insensitively, with spaces, dashes and underscores alike."""
    return re.sub(r"[\s_\-]+", "_", name.strip().strip("`*'\".").lower())


def parse_planner(text: str, tool_names: list[str]) -> PlannerAction:
    """Read `Context / Sub-Goal / Tool Name` (any order; the last match of each field wins)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(text or ""):
        fields[re.sub(r"[^a-z]", "", key.lower())] = value.strip()
    context, sub_goal, raw_tool = fields.get("context", ""), fields.get("subgoal", ""), fields.get("toolname", "")
    error = None
    if not sub_goal:
        error = "planner output has no Sub-Goal"
    tool = ""
    if raw_tool:
        # The first line only: small models often keep talking after the tool's name.
        wanted = canonical_tool_name(raw_tool.splitlines()[0])
        by_canonical = {canonical_tool_name(n): n for n in tool_names}
        tool = by_canonical.get(wanted, "")
        if not tool:  # "the calculator tool", "calculator()": accept a single known name inside
            line = raw_tool.splitlines()[0].lower()
            found = {
                n
                for c, n in by_canonical.items()
                if re.search(r"(?<![a-z0-9])" + r"[\s_\-]+".join(map(re.escape, c.split("_"))) + r"(?![a-z0-9])", line)
            }
            tool = found.pop() if len(found) == 1 else ""
        if not tool and error is None:
            error = f"unknown tool {raw_tool.splitlines()[0][:60]!r}; valid tools: {', '.join(tool_names)}"
    elif error is None:
        error = "planner output has no Tool Name"
    if context.lower() in {"none", "none.", "n/a", "-"}:
        context = ""
    return PlannerAction(context=context, sub_goal=sub_goal, tool_name=tool, error=error)


@dataclass(frozen=True)
class ToolArguments:
    args: dict[str, Any] | None
    error: str | None


def _arg_names(tool: BaseTool) -> tuple[list[str], list[str]]:
    schema = tool.get_input_jsonschema()
    props = schema.get("properties", {})
    required = list(schema.get("required", []))
    return list(props), required


def parse_tool_arguments(text: str, tool: BaseTool) -> ToolArguments:
    """Turn the executor's reply into arguments the tool's schema accepts.

    Tried in order: the last JSON object in the text; for a tool with a single
    required argument, the reply's raw value (a fenced code block, or the text of
    an unterminated `{"arg": "...` when the model forgot to close the JSON).
    Whatever is chosen is validated against the tool's args schema.
    """
    text = (text or "").strip()
    props, required = _arg_names(tool)
    candidates = json_objects(text)
    if not candidates and len(required) == 1:
        raw = _raw_single_value(text, required[0])
        if raw:
            candidates.append({required[0]: raw})
    if not candidates:
        return ToolArguments(None, f"could not parse arguments for {tool.name} from {text[:80]!r}")
    args = {k: v for k, v in candidates[-1].items() if k in props}
    if len(required) == 1 and required[0] not in args and len(candidates[-1]) == 1:
        # {"query": "..."} sent to a tool whose one argument is named differently.
        args = {required[0]: next(iter(candidates[-1].values()))}
    missing = [r for r in required if r not in args]
    if missing:
        return ToolArguments(None, f"missing argument(s) {missing} for {tool.name}")
    schema = tool.args_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            schema.model_validate(args)
        except ValidationError as exc:
            return ToolArguments(None, f"invalid arguments for {tool.name}: {_first_line(str(exc))}")
    return ToolArguments(args, None)


def _raw_single_value(text: str, arg: str) -> str:
    fence = re.findall(r"```(?:[a-zA-Z]*)\n(.*?)```", text, re.S)
    if fence:
        return fence[-1].strip()
    unterminated = re.search(r'\{\s*"' + re.escape(arg) + r'"\s*:\s*"(.*)', text, re.S)
    if unterminated:
        value = re.split(r'"\s*\}', unterminated.group(1))[0]
        try:
            return json.loads(f'"{value}"')
        except json.JSONDecodeError:
            return value.strip()
    return text.strip() if "{" not in text else ""


def _first_line(text: str) -> str:
    return " ".join(text.split("\n")[:3])


# "Conclusion: STOP" (also "**Conclusion**: continue"); the verifier's stop rule uses it too.
VERDICT = r"conclusion\s*\**\s*[:：]?\s*\**\s*(stop|continue)"


def parse_verifier(text: str) -> tuple[str, bool]:
    """The last `Conclusion: STOP|CONTINUE` wins; unparsable means CONTINUE (as published).

    Returns the verdict and whether it was parsed.
    """
    found = re.findall(VERDICT, text or "", re.I)
    if not found:
        return "CONTINUE", False
    return found[-1].upper(), True


