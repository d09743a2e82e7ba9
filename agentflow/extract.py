"""Pulling answers and JSON objects out of model text.

A leaf module: the nodes (the generator's answer contract, the executor's arguments),
the ReAct baseline's adapter and the scorers (which are also the training reward) all
read model text through these functions, so each rule has one definition.
"""

from __future__ import annotations

import json
from typing import Any

from agentflow import prompts


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object embedded in `text`, in order (`'{"a":1} then {"b":2}'` gives both).

    `json.JSONDecoder.raw_decode` parses one value from each `{` and says where it ends,
    so objects next to prose, to each other, or nested in code fences are found without
    a regex guessing where an object stops; an object inside another is part of it.
    """
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    pos = text.find("{")
    while pos != -1:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        pos = text.find("{", end)
    return found


def extract_answer(text: str) -> str:
    """The text of the last `<answer>...</answer>` (the generator's contract), else all of it.

    Found with rfind (last closing tag, nearest opening tag before it), which is linear in
    the text; a non-greedy regex is quadratic on outputs repeating "<answer>".
    Without any closed tag, an unclosed opening tag (generation cut at the length limit)
    still marks where the answer starts; taking the whole output instead would compare
    the reasoning text against the gold.
    """
    text = text or ""
    lowered = text.lower()
    close = lowered.rfind("</answer>")
    if close != -1 and (opened := lowered.rfind("<answer>", 0, close)) != -1:
        return text[opened + len("<answer>") : close].strip()
    opened = lowered.rfind("<answer>")
    if opened != -1:
        return text[opened + len("<answer>") :].strip()
    return text.strip()


def question_only(query: str) -> str:
    """`query` without the answer-format instruction (`prompts.ANSWER_INSTRUCTION`).

    The instruction is for the generator, which writes the final answer; a small planner
    shown it starts writing "<answer>" instead of a plan, and a small generator echoes it
    (both measured on ToolMix with the 135M model). Every module gets the question alone;
    the generator's system prompt asks for the tags when the query wanted them.
    """
    stripped = query.replace(prompts.ANSWER_INSTRUCTION, "").strip()
    return stripped or query


def wants_answer_tags(query: str) -> bool:
    return "<answer>" in query.lower()
