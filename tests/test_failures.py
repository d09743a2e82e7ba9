"""Failure classification: each rule of agentflow.evals.failures on hand-made eval rows.

Every case is built so that, with its rule removed, the row would fall to another class
(named in the test's comment)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentflow.evals.failures import classify, contains_gold, failure_report, format_report, needed_tools

YEARS_QUERY = "How many years passed between the founding of Zorvath and 2000?"
LOOKUP_QUERY = "In what year was Zorvath founded?"
CAPITAL_QUERY = "In what year was the capital of Quor founded?"


def rec(tool: str, result: str = "", error: str | None = None, query: str = "") -> dict[str, Any]:
    command = json.dumps({"query": query}) if query else ("{}" if tool else "")
    return {"turn": 0, "sub_goal": "x", "tool_name": tool, "command": command, "result": result, "error": error}


def row(kind: str, gold: str, memory: list[dict[str, Any]], *, answer: str = "no idea", verdict: str = "STOP",
        score: float = 0.0, query: str = "q?", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "query": query, "gold": gold, "answer": answer, "prediction": answer, "score": score,
            "turns": len(memory), "verdict": verdict, "memory": memory, "error": None, **extra}


def cls(r: dict[str, Any], max_turns: int = 2) -> str:
    failure = classify(r, max_turns)
    assert failure is not None
    return failure.cls


def test_a_scored_run_is_no_failure():
    assert classify(row("arithmetic", "7", [rec("calculator", "7")], answer="7", score=1.0), 2) is None


def test_gold_matching_numbers_and_names():
    assert contains_gold("population of 1,873 people", "1873")
    assert not contains_gold("founded in 1873", "187")  # a number inside another is not the gold
    assert contains_gold("[1] Zorvath was founded by brath kolo.", "Brath Kolo")
    assert not contains_gold("Kolo", "Kol")


def test_run_that_raised_is_a_run_error():
    # without rule 1: no turns, no STOP, under budget -> time_limit
    r = row("lookup", "1750", [], verdict=None, error="RuntimeError: boom")
    r["turns"] = 0
    assert cls(r) == "run_error"


def test_gold_in_memory_but_not_in_answer_blames_the_generator():
    # without rule 2 the calculator turn achieved the step and the verifier stopped -> stopped_early
    assert cls(row("arithmetic", "12345", [rec("calculator", "12345")], answer="12354")) == "generator_missed"


def test_generator_rule_comes_before_an_earlier_wrong_tool():
    # the planner first chose the calculator (a wrong tool), then found the fact: the facts were there
    memory = [rec("calculator", "3"), rec("local_search", "[1] Zorvath was founded in 1750.")]
    assert cls(row("lookup", "1750", memory, answer="1705")) == "generator_missed"


@pytest.mark.parametrize("record", [
    rec("", error="planner output has no Tool Name"),  # without the rule: "" != local_search -> wrong_tool
    rec("local_search", error="planner output has no Sub-Goal"),  # a valid tool, but the plan was broken -> not executor_error
])
def test_planner_format_errors(record):
    assert cls(row("lookup", "1750", [record])) == "planner_format"


def test_valid_but_wrong_tool():
    # without the rule the calculator's result would be judged as a search -> search_missed
    assert cls(row("lookup", "1750", [rec("calculator", "12")])) == "wrong_tool"


def test_item_tools_override_the_type_default():
    # a "capital of a realm" two-step item needs two searches; by type alone the second would be wrong_tool
    memory = [rec("local_search", "[1] Quor is a fictional realm. Its capital is Zorvath.", query="Quor capital"),
              rec("local_search", "[1] Brel was founded in 1801.", query="Zorvath founded")]
    r = row("two_step", "1750", memory, tools=["local_search", "local_search"], query=CAPITAL_QUERY)
    assert needed_tools(r) == ["local_search", "local_search"]
    # the second query names the capital, a name from the first result: without counting the names
    # of earlier results, it would be blamed on the executor (bad_search_query)
    assert cls(r) == "search_missed"


def test_executor_error_on_the_right_tool():
    # without the rule the empty result lacks the gold -> wrong_calculation
    r = row("arithmetic", "12345", [rec("calculator", error="could not parse arguments for calculator from 'hm'")])
    assert cls(r) == "executor_error"


def test_search_without_the_fact_is_a_missed_search():
    # without the rule the search counts as achieved and the verifier stopped -> stopped_early
    r = row("lookup", "1750", [rec("local_search", "[1] Brel was founded in 1801.", query="Zorvath founded")],
            query=LOOKUP_QUERY)
    assert cls(r) == "search_missed"


def test_search_query_without_the_questions_name_blames_the_executor():
    # what the untrained executor wrote for most look-ups; without the rule -> search_missed
    r = row("lookup", "1750", [rec("local_search", "No passages matched '2018'. Try other keywords.", query="2018")],
            query=LOOKUP_QUERY)
    assert cls(r) == "bad_search_query"


def test_two_step_search_must_find_the_intermediate_fact():
    found = rec("local_search", "[1] Zorvath was founded in 1750.", query="Zorvath")
    missed = rec("local_search", "[1] Brel was founded in 1760.", query="Zorvath")
    wrong_sum = rec("calculator", "260")
    # 2000 - 250 = 1750 is the fact the search needs; without the intermediate rule the missed
    # search would count as achieved and the calculator would be blamed (wrong_calculation)
    assert cls(row("two_step", "250", [missed, wrong_sum], query=YEARS_QUERY, verdict="CONTINUE")) == "search_missed"
    assert cls(row("two_step", "250", [found, wrong_sum], query=YEARS_QUERY, verdict="CONTINUE")) == "wrong_calculation"


def test_calculator_on_the_wrong_expression():
    # without the rule the calculator turn achieves the step -> stopped_early
    assert cls(row("arithmetic", "1000", [rec("calculator", "999")])) == "wrong_calculation"


def test_verifier_stopped_before_the_needed_tools_ran():
    # without the rule: one turn of two, no STOP considered -> time_limit
    r = row("two_step", "250", [rec("local_search", "[1] Zorvath was founded in 1750.")], query=YEARS_QUERY)
    assert cls(r) == "stopped_early"


def test_turn_budget_and_time_limit_end_a_run_that_never_went_wrong():
    r = row("two_step", "250", [rec("local_search", "[1] Zorvath was founded in 1750.")], query=YEARS_QUERY,
            verdict="CONTINUE")
    assert cls(r, max_turns=1) == "turn_budget"  # without the rule: -> time_limit
    assert cls(r, max_turns=2) == "time_limit"  # CONTINUE after 1 of 2 turns: only the clock ends a run there
    failure = classify(r, 1)
    assert failure is not None and failure.ran_out_of_turns


def test_rollout_rows_classify_like_eval_rows():
    memory = [rec("calculator", "12"), rec("local_search", "[1] Brel was founded in 1801.")]
    eval_row = row("lookup", "1750", memory, verdict="CONTINUE")
    rollout = {"type": "lookup", "query": "q?", "gold": "1750", "answer": "x", "reward": 0.0, "verdict": "CONTINUE",
               "n_turns": 2, "error": None,
               "turns": [{"turn": i + 1, "tool": m["tool_name"], "command": "", "result": m["result"], "error": None,
                          "verdict": "CONTINUE"} for i, m in enumerate(memory)]}
    assert classify(eval_row, 2) == classify(rollout, 2)
    failure = classify(rollout, 2)
    assert failure is not None and (failure.cls, failure.turn) == ("wrong_tool", 1)
    assert failure.turn_outcomes == ["wrong_tool", "bad_search_query"] and failure.ran_out_of_turns


def test_report_counts_classes_and_first_tools_per_type():
    rows = [
        row("lookup", "1750", [rec("calculator", "12")]),
        row("lookup", "1750", [rec("local_search", "1750")], answer="1750", score=1.0),
        row("arithmetic", "12", [rec("", error="planner output has no Tool Name")]),
    ]
    report = failure_report(rows, max_turns=2)
    assert report["lookup"]["runs"] == 2 and report["lookup"]["correct"] == 1
    assert report["lookup"]["classes"] == {"wrong_tool": 1}
    assert report["lookup"]["first_tool"] == {"calculator": 1, "local_search": 1}
    assert report["arithmetic"]["first_tool"] == {"(none)": 1}
    assert report["all"]["classes"] == {"wrong_tool": 1, "planner_format": 1}
    assert report["lookup"]["correct_by_first_tool"] == {"local_search": 1}
    assert "groups" not in report["lookup"]  # eval rows belong to no training group
    text = format_report(report)
    assert "### lookup: 2 runs, 1 correct, 1 failed" in text and "| wrong_tool | planner | 1 | 100% |" in text
    assert "| lookup | calculator 1 (50%, 0 right), local_search 1 (50%, 1 right) |" in text
    assert "learning signal" not in text


def test_rollout_report_counts_the_groups_with_a_learning_signal():
    """A group (step, query_index) teaches the planner only if its runs' rewards differ."""
    def run(step: int, query: int, kind: str, reward: float) -> dict[str, Any]:
        return {"step": step, "query_index": query, "type": kind, "query": "q?", "gold": "7", "answer": "x",
                "reward": reward, "verdict": "STOP", "n_turns": 1, "error": None,
                "turns": [{"turn": 1, "tool": "calculator", "command": "", "result": "7" if reward else "1",
                           "error": None, "verdict": "STOP"}]}

    rows = [run(1, 0, "arithmetic", 1.0), run(1, 0, "arithmetic", 0.0),   # signal
            run(1, 1, "lookup", 0.0), run(1, 1, "lookup", 0.0),           # all wrong: none
            run(2, 0, "lookup", 1.0), run(2, 0, "lookup", 1.0)]           # all right: none
    report = failure_report(rows, max_turns=2)
    assert (report["arithmetic"]["groups"], report["arithmetic"]["groups_with_signal"]) == (1, 1)
    assert (report["lookup"]["groups"], report["lookup"]["groups_with_signal"]) == (2, 0)
    assert (report["all"]["groups"], report["all"]["groups_with_signal"]) == (3, 1)
    assert "- lookup: 0 of 2" in format_report(report)
