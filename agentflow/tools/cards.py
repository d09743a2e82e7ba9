"""Tool cards: what the planner and executor prompts say about each tool.

Cards are derived from the tool itself (name, description, args schema) so a
prompt can never describe arguments a tool does not accept. Extra guidance
(`examples`, `limitations`, `best_practices`, `output_type`) comes from
`tool.metadata` (LangChain's own field) when the tool provides it; AgentFlow's
tools write it with `card_metadata`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.tools import BaseTool


def card_metadata(
    *, examples: list[dict[str, str]], limitations: list[str], best_practices: list[str]
) -> dict[str, Any]:
    """A tool's `metadata` holding the guidance `tool_card` reads.

    Written through this function rather than as a dict literal so that a misspelt
    key fails where the tool is defined instead of silently leaving the guidance out
    of every prompt. Use it as the field default (`metadata: dict = card_metadata(...)`);
    pydantic copies a mutable default for each instance.
    """
    return {"examples": examples, "limitations": limitations, "best_practices": best_practices}


def tool_card(tool: BaseTool) -> dict[str, Any]:
    """Build `{name, description, input_types, output_type, demo_commands, limitations, best_practices}`."""
    metadata = tool.metadata or {}
    properties = tool.get_input_jsonschema().get("properties", {})
    input_types = {
        arg: {"type": _type_name(schema), "description": schema.get("description", "")}
        for arg, schema in properties.items()
    }
    return {
        "name": tool.name,
        "description": tool.description,
        "input_types": input_types,
        "output_type": metadata.get("output_type", "str"),
        "demo_commands": [tool_call_text(tool.name, args) for args in metadata.get("examples", [])],
        "limitations": list(metadata.get("limitations", [])),
        "best_practices": list(metadata.get("best_practices", [])),
    }


def tool_call_text(name: str, args: Mapping[str, Any]) -> str:
    """A call written the way prompts show it: `calculator(expression="2 + 2")`."""
    rendered = ", ".join(f"{arg}={json.dumps(value, ensure_ascii=False)}" for arg, value in args.items())
    return f"{name}({rendered})"


def render_tool_cards(tools: Iterable[BaseTool]) -> str:
    """A compact block for prompts: a small model reads it, so one short entry per tool.

    Each entry is the name and first sentence of the description, the
    argument names with types, and one example call.
    """
    entries = []
    for tool in tools:
        card = tool_card(tool)
        args = ", ".join(f"{arg} ({spec['type']})" for arg, spec in card["input_types"].items())
        lines = [f"- {card['name']}: {_first_sentence(card['description'])}", f"  args: {args or 'none'}"]
        if card["demo_commands"]:
            lines.append(f"  example: {card['demo_commands'][0]}")
        entries.append("\n".join(lines))
    return "\n".join(entries)


def _type_name(schema: Mapping[str, Any]) -> str:
    """JSON-schema type as a word; unions (`anyOf`) joined with `|`."""
    if "type" in schema:
        return schema["type"] if isinstance(schema["type"], str) else "|".join(schema["type"])
    if "anyOf" in schema:
        return "|".join(_type_name(option) for option in schema["anyOf"])
    return "any"


def _first_sentence(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    end = first_line.find(". ")
    return first_line if end < 0 else first_line[: end + 1]
