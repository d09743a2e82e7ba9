"""Where a failed ToolMix run went wrong, module by module: deterministic rules over eval rows.

A failed run (score 0) gets exactly one failure class, the first thing that went wrong in
it, because everything after that point happened on a memory the mistake had already
shaped. The rules read only what an eval row or a rollout row holds (docs/design.md §8):
the gold, the answer, the memory records (tool name, command, result, error), the final
verdict, the turn count and the run-level error; plus the item's question `type` or its
needed `tools` (ToolMix items carry both).

The needed tools are the item's `tools`, else by type (`TYPE_TOOLS`): a lookup needs
`local_search`, arithmetic the `calculator`, a two-step item `local_search` then
`calculator` (ToolMix's "capital of a realm" two-step items need `local_search` twice
and say so in their `tools`).

Rules, applied in this order (the first that fits is the class):

1. `run_error` (harness): the graph run raised, so there is no trajectory to judge.
2. `generator_missed` (generator): the gold appears in the result of an error-free tool
   call, yet the answer does not score. Whatever came before, the facts were in memory.
   "Appears": for a numeric gold, some number in the result equals it (commas ignored);
   for a text gold, it occurs as whole words, case-insensitively.
3. The turns are walked in order against the needed tools; a turn either achieves the
   next needed step or deviates, and the first deviation is the class:
   - `planner_format` (planner): the planner's output named no tool, an unknown tool, or
     had no sub-goal (the record has an error and no tool, or a "planner output" error);
   - `wrong_tool` (planner): a valid tool other than the next needed one;
   - `executor_error` (executor): the right tool, but its arguments did not parse or
     failed its schema, or the tool raised on them (a calculator given words);
   - `bad_search_query` (executor) and `search_missed` (retriever): `local_search` ran
     without error but the fact the step needs is not in its results: the gold for the
     last step; for a search that feeds a calculation, the intermediate fact, which
     ToolMix's "years between the founding of X and Y" items define as Y - gold (the one
     number in the question minus the gold). A search whose intermediate fact cannot be
     derived (the capital of a realm) counts as achieved when it runs without error.
     The executor is blamed when its query names none of the names it could have used
     (`names`: capitalised words of the question but its first, and of the results of
     the steps already achieved, less a few sentence-initial words): measured on the untrained
     system, most missed searches were the query "2018" or "2000" for a question about a
     named town. A query with such a name that still misses is the retriever's;
   - `wrong_calculation` (executor): the `calculator` ran without error on the last step,
     but its result is not the gold: the executor computed another expression.
4. No turn deviated but needed steps are left, so the run ended too soon:
   - `stopped_early` (verifier): the last verdict is STOP;
   - `turn_budget` (verifier): the verifier never said STOP and the turn budget ran out;
   - `time_limit` (harness): neither, so the router's wall-clock limit ended the run.

Besides the class, every failed run reports `ran_out_of_turns` (it used the whole turn
budget without a STOP), and every turn of every run gets an outcome (`achieved` or one of
the deviation classes of rule 3, judged against the step still needed): the first says
how often a budget was too short whatever the first mistake, the second how often each
module errs over all turns, not only first mistakes.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TYPE_TOOLS: dict[str, list[str]] = {
    "lookup": ["local_search"],
    "arithmetic": ["calculator"],
    "two_step": ["local_search", "calculator"],
}

CLASSES: dict[str, str] = {  # failure class -> the module (or harness) it blames, in rule order
    "run_error": "harness",
    "generator_missed": "generator",
    "planner_format": "planner",
    "wrong_tool": "planner",
    "executor_error": "executor",
    "bad_search_query": "executor",
    "search_missed": "retriever",
    "wrong_calculation": "executor",
    "stopped_early": "verifier",
    "turn_budget": "verifier",
    "time_limit": "harness",
}
NO_TOOL = "(none)"  # first-tool choice when the planner named no valid tool
NO_TURNS = "(no turns)"

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}\b")
# capitalised at the start of a ToolMix question or passage, and in "No passages matched ... Try"
_NOT_NAMES = {"What", "Who", "How", "Which", "When", "Where", "The", "Its", "It", "No", "Try"}
_SEARCH = "local_search"
_CALCULATOR = "calculator"


@dataclass
class Failure:
    """Why one run failed: its class, the module blamed, the 1-based turn (None when no turn is to blame)."""

    cls: str
    module: str
    turn: int | None
    ran_out_of_turns: bool
    turn_outcomes: list[str] = field(default_factory=list)


def needed_tools(item: Mapping[str, Any]) -> list[str]:
    """The tools an item needs, in order: its own `tools` (or `tools_needed`), else by its `type`."""
    for key in ("tools_needed", "tools"):
        tools = item.get(key)
        if isinstance(tools, list) and tools:
            return [str(t) for t in tools]
    kind = item.get("type")
    if kind not in TYPE_TOOLS:
        raise ValueError(f"item has no 'tools' and its type {kind!r} is not one of {sorted(TYPE_TOOLS)}")
    return list(TYPE_TOOLS[kind])


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def contains_gold(text: str, gold: Any) -> bool:
    """Whether `text` states `gold`: an equal number for a numeric gold, whole words otherwise."""
    gold_text = str(gold).strip()
    if not gold_text:
        return False
    value = _number(gold_text)
    if value is not None:
        return any(_number(n) == value for n in _NUMBER.findall(text or ""))
    return re.search(r"(?<!\w)" + re.escape(gold_text) + r"(?!\w)", text or "", re.I) is not None


def _records(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Memory records of an eval row (`memory`, `tool_name`) or a rollout row (`turns`, `tool`)."""
    raw = row.get("memory")
    if not isinstance(raw, list):
        raw = row.get("turns") if isinstance(row.get("turns"), list) else []
    return [
        {
            "tool": str(r.get("tool_name", r.get("tool")) or ""),
            "command": str(r.get("command") or ""),
            "result": str(r.get("result") or ""),
            "error": r.get("error"),
        }
        for r in raw
    ]


def _score(row: Mapping[str, Any]) -> float:
    value = row.get("score", row.get("reward"))
    return float(value) if isinstance(value, (int, float)) else 0.0


def _n_turns(row: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> int:
    turns = row.get("turns")
    if isinstance(turns, int):
        return turns
    n = row.get("n_turns")
    return int(n) if isinstance(n, (int, float)) else len(records)


def _step_fact(row: Mapping[str, Any], needed: Sequence[str], step: int) -> str | None:
    """What the result of needed step `step` must contain (see rule 3), or None when unknowable."""
    gold = row.get("gold")
    if step == len(needed) - 1:
        return str(gold)
    if needed[step] == _SEARCH and needed[step + 1] == _CALCULATOR:
        numbers = _NUMBER.findall(str(row.get("query", "")))
        gold_value = _number(str(gold))
        if len(numbers) == 1 and gold_value is not None:
            fact = _number(numbers[0]) - gold_value
            return str(int(fact)) if fact == int(fact) else str(fact)
    return None


def names(text: str, skip_first: bool = False) -> set[str]:
    """Capitalised words of `text` that may be names (rule 3, `bad_search_query`)."""
    if skip_first:  # a question's first word is capitalised whatever it is
        parts = (text or "").split(maxsplit=1)
        text = parts[1] if len(parts) == 2 else ""
    return set(_NAME.findall(text or "")) - _NOT_NAMES


def _turn_outcome(record: Mapping[str, Any], tool: str, fact: str | None, known: set[str]) -> str:
    """`achieved`, or the deviation class of rule 3 for one turn whose next needed tool is
    `tool`; `known` are the names the executor could have put in a search query."""
    error = record["error"]
    if not record["tool"] or (error is not None and str(error).startswith("planner output")):
        return "planner_format"
    if record["tool"] != tool:
        return "wrong_tool"
    if error is not None:
        return "executor_error"
    if fact is not None and not contains_gold(record["result"], fact):
        if tool != _SEARCH:
            return "wrong_calculation"
        command = record["command"].lower()
        return "search_missed" if any(name.lower() in command for name in known) else "bad_search_query"
    return "achieved"


def classify(row: Mapping[str, Any], max_turns: int) -> Failure | None:
    """The failure of one run (rules in the module docstring), or None when it scored."""
    if _score(row) > 0:
        return None
    records = _records(row)
    n_turns = _n_turns(row, records)
    ran_out = n_turns >= max_turns and row.get("verdict") != "STOP"
    if row.get("error") and not records:
        return Failure("run_error", CLASSES["run_error"], None, False)
    needed = needed_tools(row)
    step, first, outcomes = 0, None, []
    known = names(str(row.get("query", "")), skip_first=True)
    for turn, record in enumerate(records, start=1):
        if step == len(needed):  # every needed step done (so the gold is in memory: rule 2 decides)
            outcomes.append("after_done")
            continue
        outcome = _turn_outcome(record, needed[step], _step_fact(row, needed, step), known)
        outcomes.append(outcome)
        if outcome == "achieved":
            known |= names(record["result"])
            step += 1
        elif first is None:
            first = (outcome, turn)
    if any(r["error"] is None and contains_gold(r["result"], row.get("gold")) for r in records):
        return Failure("generator_missed", CLASSES["generator_missed"], None, ran_out, outcomes)
    if first is not None:
        return Failure(first[0], CLASSES[first[0]], first[1], ran_out, outcomes)
    if row.get("verdict") == "STOP":
        cls = "stopped_early"
    elif n_turns >= max_turns:
        cls = "turn_budget"
    else:
        cls = "time_limit"
    return Failure(cls, CLASSES[cls], n_turns or None, ran_out, outcomes)


def first_tool(row: Mapping[str, Any]) -> str:
    """The tool the planner chose on the first turn, `(none)` for no valid tool."""
    records = _records(row)
    if not records:
        return NO_TURNS
    return records[0]["tool"] or NO_TOOL


def _signal_groups(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int] | None:
    """(groups, groups whose runs got different rewards) for training rollouts, whose rows
    carry `step` and `query_index`; None for eval rows. Flow-GRPO's advantage is zero in a
    group whose runs all scored the same, so the second count is how many of a question
    type's groups could teach the planner anything."""
    if not rows or any("step" not in r or "query_index" not in r for r in rows):
        return None
    rewards: dict[tuple[Any, Any], set[float]] = defaultdict(set)
    for r in rows:
        rewards[(r["step"], r["query_index"])].add(_score(r))
    return len(rewards), sum(len(v) > 1 for v in rewards.values())


def failure_report(rows: Iterable[Mapping[str, Any]], max_turns: int) -> dict[str, dict[str, Any]]:
    """Per question type (and `all`): runs, correct, failure-class counts, first-tool choice
    and how many runs each first tool got right, runs out of turns, the outcome of every
    turn, and for training rollouts the groups with a learning signal."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row.get("type") or "untyped")].append(row)
        groups["all"].append(row)
    report: dict[str, dict[str, Any]] = {}
    for kind in sorted(groups, key=lambda k: (k == "all", k)):
        subset = groups[kind]
        verdicts = [(r, classify(r, max_turns)) for r in subset]
        failures = [f for _, f in verdicts if f is not None]
        report[kind] = {
            "runs": len(subset),
            "correct": len(subset) - len(failures),
            "failed": len(failures),
            "classes": dict(Counter(f.cls for f in failures).most_common()),
            "ran_out_of_turns": sum(f.ran_out_of_turns for f in failures),
            "first_tool": dict(Counter(first_tool(r) for r in subset).most_common()),
            "correct_by_first_tool": dict(Counter(first_tool(r) for r, f in verdicts if f is None).most_common()),
            "failed_turn_outcomes": dict(Counter(o for f in failures for o in f.turn_outcomes).most_common()),
        }
        if (signal := _signal_groups(subset)) is not None:
            report[kind]["groups"], report[kind]["groups_with_signal"] = signal
    return report


def format_report(report: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one failure table per question type, then the first-tool choice per type."""
    out: list[str] = []
    for kind, part in report.items():
        failed = part["failed"]
        out += [
            f"### {kind}: {part['runs']} runs, {part['correct']} correct, {failed} failed",
            "",
            "| failure class | module | runs | share of failed |",
            "|---|---|---:|---:|",
        ]
        out += [
            f"| {cls} | {CLASSES[cls]} | {n} | {n / failed:.0%} |" for cls, n in part["classes"].items()
        ]
        out.append(f"| (any class) ran out of turns | | {part['ran_out_of_turns']} | "
                   f"{part['ran_out_of_turns'] / max(failed, 1):.0%} |")
        outcomes = part["failed_turn_outcomes"]
        out += ["", "turn outcomes in failed runs: " + _shares(outcomes, sum(outcomes.values())), ""]
    out += ["### first tool chosen (runs, share, right answers)", "", "| type | first tool |", "|---|---|"]
    out += [f"| {kind} | {_shares(part['first_tool'], part['runs'], part.get('correct_by_first_tool'))} |"
            for kind, part in report.items()]
    if all("groups" in part for part in report.values()):
        out += ["", "### groups with a learning signal (runs of one query with different rewards)", ""]
        out += [f"- {kind}: {part['groups_with_signal']} of {part['groups']}" for kind, part in report.items()]
    return "\n".join(out)


def _shares(counts: Mapping[str, int], total: int, right: Mapping[str, int] | None = None) -> str:
    return ", ".join(
        f"{name} {n} ({n / max(total, 1):.0%}" + (f", {right.get(name, 0)} right)" if right is not None else ")")
        for name, n in counts.items()
    ) or "-"


__all__ = ["CLASSES", "Failure", "TYPE_TOOLS", "classify", "contains_gold", "failure_report", "first_tool",
           "format_report", "names", "needed_tools"]
