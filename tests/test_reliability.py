"""Runs always end: the turn and wall-clock limits hold whatever the models say and
however the tools behave. The models here are scripted fakes so hypothesis can drive
them with arbitrary text; the tools are real LangChain tools that hang or crash."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.tools import tool

from agentflow import build_agentflow
from tests.conftest import ScriptedChatModel


@tool
def hang(seconds: str) -> str:
    """Sleep for the given number of seconds (it may never return in time)."""
    time.sleep(min(float(seconds), 5.0))
    return "done"


@tool
def crash(text: str) -> str:
    """Always raises."""
    raise RuntimeError(f"crashed on {text!r}")


TOOLS = [hang, crash]
replies = st.text(max_size=300) | st.sampled_from(
    [
        " sleep\nTool Name: hang",
        " boom\nTool Name: crash",
        " x\nTool Name: nothing",
        '3"}',
        '0.01"}',
        " STOP",
        " CONTINUE",
        "Conclusion: STOP " * 50,
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(replies, min_size=1, max_size=12), st.integers(min_value=1, max_value=4))
def test_runs_end_within_the_turn_limit(script, max_turns):
    calls = iter(range(10**6))
    llm = ScriptedChatModel(respond=lambda role, messages: script[next(calls) % len(script)])
    graph = build_agentflow(llm, TOOLS, max_turns=max_turns, tool_timeout=0.05)
    final = graph.invoke({"query": "anything"})
    assert 1 <= final["turn"] <= max_turns
    assert len(final["memory"]) == final["turn"]
    assert final["tool_errors"] == sum(r["error"] is not None for r in final["memory"])
    assert isinstance(final["answer"], str)


def test_wall_clock_limit_holds_when_tools_hang_and_the_verifier_never_stops():
    script = {"planner": " sleep\nTool Name: hang", "executor": '3"}', "verifier": " CONTINUE"}
    llm = ScriptedChatModel(respond=lambda role, messages: script.get(role, "gave up"))
    graph = build_agentflow(llm, TOOLS, max_turns=1000, max_seconds=1.0, tool_timeout=0.2)
    start = time.time()
    final = graph.invoke({"query": "never ends"})
    elapsed = time.time() - start
    # Without the limit this runs 1000 turns of 0.2 s timeouts (200 s); the bound leaves
    # loaded CI cores a wide margin above the 1 s limit.
    assert elapsed < 20.0
    assert 3 <= final["turn"] < 1000
    assert all("timed out" in r["error"] for r in final["memory"])
    assert final["answer"] == "gave up"
