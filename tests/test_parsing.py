"""Each module's parser on good, malformed and random output (it never raises)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.extract import extract_answer, json_objects
from agentflow.nodes.parsing import (
    parse_planner,
    parse_tool_arguments,
    parse_verifier,
)
from agentflow.tools import CalculatorTool, PythonSandboxTool

TOOLS = ["python", "calculator", "local_search", "base_generator"]


def test_planner_contract():
    text = "Context: none\nSub-Goal: Multiply 3 by 4.\nTool Name: Calculator"
    action = parse_planner(text, TOOLS)
    assert (action.sub_goal, action.tool_name, action.context, action.error) == ("Multiply 3 by 4.", "calculator", "", None)


def test_planner_last_match_wins_and_names_are_fuzzy():
    text = "Sub-Goal: a\nTool Name: python\n\nSub-Goal: b\nTool Name: Local Search\nContext: the city is X"
    action = parse_planner(text, TOOLS)
    assert (action.sub_goal, action.tool_name, action.context) == ("b", "local_search", "the city is X")
    assert parse_planner("Sub-Goal: x\n**Tool Name:** `base-generator`", TOOLS).tool_name == "base_generator"
    assert parse_planner("Sub-Goal: x\nTool Name: the calculator tool", TOOLS).tool_name == "calculator"


def test_planner_malformed():
    assert "no Tool Name" in parse_planner("Sub-Goal: x", TOOLS).error
    assert "no Sub-Goal" in parse_planner("Tool Name: python", TOOLS).error
    unknown = parse_planner("Sub-Goal: x\nTool Name: google", TOOLS)
    assert unknown.tool_name == "" and "unknown tool 'google'" in unknown.error
    ambiguous = parse_planner("Sub-Goal: x\nTool Name: python or calculator", TOOLS)
    assert ambiguous.tool_name == "" and ambiguous.error


def test_tool_arguments():
    calc, py = CalculatorTool(), PythonSandboxTool()
    assert parse_tool_arguments('{"expression": "2+2"}', calc).args == {"expression": "2+2"}
    assert parse_tool_arguments('{"expression": "2+2', calc).args == {"expression": "2+2"}  # unclosed JSON
    assert parse_tool_arguments('{"query": "2+2"}', calc).args == {"expression": "2+2"}  # wrong single arg name
    assert parse_tool_arguments("```python\nprint(1)\n```", py).args == {"code": "print(1)"}
    assert parse_tool_arguments("2 + 2", calc).args == {"expression": "2 + 2"}  # bare value for a one-arg tool
    assert parse_tool_arguments('{"code": "x = 1\\nprint(x)"}', py).args == {"code": "x = 1\nprint(x)"}


def test_tool_arguments_malformed():
    calc = CalculatorTool()
    assert "could not parse" in parse_tool_arguments("", calc).error
    assert "could not parse" in parse_tool_arguments("{broken", calc).error
    assert parse_tool_arguments('{"expression": 5}', calc).error.startswith("invalid arguments")
    assert "missing argument" in parse_tool_arguments('{"a": 1, "b": 2}', calc).error


def test_verifier():
    assert parse_verifier("reasoning...\nConclusion: STOP") == ("STOP", True)
    assert parse_verifier("Conclusion: STOP\nConclusion: **continue**") == ("CONTINUE", True)
    assert parse_verifier("I think we are done") == ("CONTINUE", False)


def test_answer():
    assert extract_answer("x <answer>1</answer> y <answer> 2 </answer>") == "2"
    assert extract_answer("plain") == "plain"
    assert extract_answer("cut off <answer>3") == "3"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_raise(text):
    action = parse_planner(text, TOOLS)
    assert action.tool_name in TOOLS or action.error
    assert parse_verifier(text)[0] in {"STOP", "CONTINUE"}
    parsed = parse_tool_arguments(text, CalculatorTool())
    assert (parsed.args is None) != (parsed.error is None)
    assert isinstance(extract_answer(text), str)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["Sub-Goal:", "Tool Name:", "Context:", "calculator", "python", "\n", " ", "x", "**", ":"])))
def test_planner_fuzz_structured(parts):
    action = parse_planner("".join(parts), TOOLS)
    assert (action.error is None) == bool(action.sub_goal and action.tool_name)


def test_question_only_strips_the_answer_format_instruction():
    from agentflow.evals.datasets import with_answer_instruction
    from agentflow.extract import question_only

    assert question_only(with_answer_instruction("What is 5+5? boom")) == "What is 5+5? boom"
    assert question_only(with_answer_instruction("Who founded Loma")) == "Who founded Loma"
    assert question_only("Put the result in <answer> tags: 2+2") == "Put the result in <answer> tags: 2+2"  # other phrasings stay
    assert question_only(with_answer_instruction("")).strip().startswith("When ready")  # nothing else: keep the query


def test_json_objects_finds_each_object_in_order():
    assert json_objects('{"a":1} then {"b":2}') == [{"a": 1}, {"b": 2}]
    assert json_objects('x {"a": {"b": 2}} y {bad} z {"c": "}"}') == [{"a": {"b": 2}}, {"c": "}"}]
    assert json_objects("no objects [1, 2]") == []
