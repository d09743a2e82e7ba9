"""Each module's stop rule (agentflow/nodes/stops.py): where a reply is done, that cutting
there keeps what the parser reads, that the local engine stops on it and that served models
get the same rule as stop strings plus a cut (docs/design.md §1)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ScriptedChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

from agentflow import prompts
from agentflow.extract import json_objects
from agentflow.nodes import make_executor, make_planner, make_verifier, stops
from agentflow.nodes.parsing import parse_planner, parse_verifier
from agentflow.tools import CalculatorTool

PLANNER_REPLY = "Sub-Goal: Multiply 55084 by 6444.\nTool Name: calculator\nContext: none"


@pytest.mark.parametrize("reply, cut", [
    (PLANNER_REPLY + "\n\nSub-Goal: Find the founding year of Tou", PLANNER_REPLY),  # runs on into a second block
    (PLANNER_REPLY + "\nQuestion: What is the capital", PLANNER_REPLY),  # starts inventing the next item
    ("Context: none\nSub-Goal: Find it.\nTool Name: local_search\nmore", "Context: none\nSub-Goal: Find it.\nTool Name: local_search"),
    ("Sub-Goal: Add them.\n\nTool Name: calculator\nContext:\n  none\nmore", "Sub-Goal: Add them.\n\nTool Name: calculator\nContext:\n  none"),
])
def test_the_planner_is_done_after_the_line_that_completes_its_contract(reply, cut):
    assert stops.PLANNER.done(reply) and stops.PLANNER.cut(reply) == cut
    assert parse_planner(cut, ["calculator", "local_search"]).error is None


@pytest.mark.parametrize("partial", [
    "Sub-Goal: Multiply 55084 by 6444.\nTool Name: calculator\nContext: no",  # the last line may still grow
    "Sub-Goal: Multiply 55084 by 6444.\nTool Name: calculator\n",
    "Sub-Goal: 594551674\n\n",
])
def test_the_planner_is_not_done_before_that(partial):
    assert not stops.PLANNER.done(partial)


@pytest.mark.parametrize("reply, cut", [
    ('{"expression": "55084 * 6444"}\n\nThe answer is: 219248000', '{"expression": "55084 * 6444"}'),
    ('{"a": {"b": 1}, "c": "}{"}\n{"d": 2}', '{"a": {"b": 1}, "c": "}{"}'),  # nesting and braces in strings
    ('say "hi" {query: x} then {"query": "x"} and more', 'say "hi" {query: x} then {"query": "x"}'),  # not JSON: skipped
])
def test_the_executor_is_done_after_one_complete_json_object(reply, cut):
    assert stops.EXECUTOR.done(reply) and stops.EXECUTOR.cut(reply) == cut
    assert json_objects(cut) == json_objects(reply)[:1]  # the parser finds the first object, and only it


@pytest.mark.parametrize("partial", ['{"query": "Velmora found', '{"a": {"b": 1}', "The answer is 4."])
def test_the_executor_is_not_done_before_that(partial):
    assert not stops.EXECUTOR.done(partial) and stops.EXECUTOR.cut(partial) == partial


@pytest.mark.parametrize("reply, cut, verdict", [
    ("Conclusion: STOP or CONTINUE.", "Conclusion: STOP", ("STOP", True)),
    ("The result answers it.\nConclusion: CONTINUE\nmore", "The result answers it.\nConclusion: CONTINUE", ("CONTINUE", True)),
    ("Conclusion: No, the question is not answered.\n\nThe answer", "Conclusion: No, the question is not answered.",
     ("CONTINUE", False)),
])
def test_the_verifier_is_done_after_its_conclusion(reply, cut, verdict):
    assert stops.VERIFIER.done(reply) and stops.VERIFIER.cut(reply) == cut
    assert parse_verifier(cut) == parse_verifier(reply) == verdict


@pytest.mark.parametrize("partial", ["Conclusion: STOP", "Conclusion: STOPP", "Conclusion:\n\nYes, it was"])
def test_the_verifier_is_not_done_before_that(partial):
    assert not stops.VERIFIER.done(partial)


def test_the_generators_blank_line_stop_is_for_local_models_only():
    reply = "Multiply first.\n\n<answer>42</answer>"
    assert stops.GENERATOR.cut(reply, local=True) == "Multiply first."
    assert stops.GENERATOR.cut(reply, local=False) == reply  # a served model reasons in paragraphs
    assert stops.GENERATOR.stop_strings(local=False) is None


def test_the_local_engine_stops_on_a_rule_end(tiny_llm):
    """The predicate hook: with an end that any text satisfies, a request ends after its
    first token; with one no text satisfies, it runs to the length limit."""
    messages = [HumanMessage("Say something.")]
    early = tiny_llm.invoke(messages, stop_when=lambda completion: bool(completion))
    late = tiny_llm.invoke(messages, stop_when=lambda completion: False)
    assert early.usage_metadata["output_tokens"] == 1 and early.response_metadata["finish_reason"] == "stop"
    assert late.usage_metadata["output_tokens"] == tiny_llm.max_new_tokens
    assert late.response_metadata["finish_reason"] == "length"


class _Recording(ScriptedChatModel):
    """A scripted model that keeps every call's messages and stop arguments."""

    calls: list[dict[str, Any]] = []
    takes_stop_when: bool = False  # as LocalChatModel: True, the node passes the rule's end as `stop_when`

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self.calls.append({"messages": messages, "stop": stop, **kwargs})
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.respond("", messages)))])


def _state() -> dict[str, Any]:
    return {"query": "What is 55084 * 6444?", "memory": [], "turn": 1, "sub_goal": "Multiply 55084 by 6444.",
            "tool_name": "calculator", "context": "", "plan_error": None}


def test_a_served_planner_gets_worked_exchanges_a_reminder_and_the_stop_strings():
    served = _Recording(respond=lambda role, m: PLANNER_REPLY + "\n\nQuestion: What is 2 + 2?",
                        continues_final_message=False, calls=[])
    update = make_planner(served, [CalculatorTool()])(_state(), {})
    assert (update["sub_goal"], update["tool_name"], update["plan_error"]) == ("Multiply 55084 by 6444.", "calculator", None)
    [call] = served.calls
    kinds = [m.type for m in call["messages"]]
    assert kinds == ["system", "human", "ai", "human"]  # one worked exchange per kind of tool, then the question
    assert call["messages"][2].content.startswith("Sub-Goal:") and "Tool Name: calculator" in call["messages"][2].content
    assert call["messages"][-1].content.endswith(prompts.PLANNER_REMINDER)
    assert call["stop"] == list(stops.PLANNER.strings) and "stop_when" not in call  # no predicate reaches an API


def test_a_local_planner_gets_its_reply_started_and_the_rule_as_a_predicate():
    local = _Recording(respond=lambda role, m: " Multiply.\nTool Name: calculator\nContext: none\n",
                       takes_stop_when=True, calls=[])
    make_planner(local, [CalculatorTool()])(_state(), {})
    [call] = local.calls
    assert [m.type for m in call["messages"]] == ["system", "human", "ai"]
    assert call["messages"][-1].content == prompts.PLANNER_PREFIX
    done = call["stop_when"]  # given the completion only; the rule sees it after the prefix
    assert not done(" Multiply.\nTool Name: calculator\nContext: none")
    assert done(" Multiply.\nTool Name: calculator\nContext: none\n")


def test_served_executor_and_verifier_replies_are_cut_by_their_rules():
    replies = {"executor": '{"expression": "55084 * 6444"}\n\nThe answer is 3', "verifier": "Conclusion: STOP\nStep 2"}
    served = _Recording(respond=lambda role, m: replies["executor" if "JSON" in m[0].content else "verifier"],
                        continues_final_message=False, calls=[])
    update = make_executor(served, [CalculatorTool()])(_state(), {})
    assert update["memory"][0]["command"] == '{"expression": "55084 * 6444"}' and update["tool_errors"] == 0
    assert make_verifier(served)({**_state(), "memory": update["memory"]}, {})["verdict"] == "STOP"
    executor_call, verifier_call = served.calls
    assert [m.type for m in executor_call["messages"]] == ["system", "human", "ai", "human"]  # the calculator's worked call
    assert executor_call["messages"][-1].content.endswith(prompts.EXECUTOR_REMINDER.format(tool_name="calculator"))
    assert [m.type for m in verifier_call["messages"]].count("ai") == len(prompts.VERIFIER_SHOTS)


def test_a_tool_without_a_worked_call_gets_only_the_reminder():
    @tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    served = _Recording(respond=lambda role, m: '{"text": "hi"}', continues_final_message=False, calls=[])
    update = make_executor(served, [shout])({**_state(), "tool_name": "shout"}, {})
    assert update["memory"][0]["result"] == "HI"
    assert [m.type for m in served.calls[0]["messages"]] == ["system", "human"]
