"""The AgentFlow graph: topology, routing, memory, limits, error handling, embedding."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import MemorySaver

from agentflow import agentflow_tool, build_agentflow
from agentflow.graph import NODES, make_router
from agentflow.tools import CalculatorTool, PythonSandboxTool
from tests.conftest import ScriptedChatModel


def calculator_script(role, messages):
    """A competent scripted agent: calculator once, STOP, answer from memory."""
    text = str(messages[1].content)
    if role == "planner":
        expr = re.search(r"What is (.*)\?", text).group(1)
        return f" Compute {expr}.\nTool Name: calculator\nContext: none"
    if role == "executor":
        expr = re.search(r"Sub-Goal: Compute (.*)\.", text).group(1)
        return f'{expr}"}}'
    if role == "verifier":
        return " STOP" if "Result:" in text else " CONTINUE"
    result = re.findall(r"Result: (.*)", text)[-1]
    return f"The answer is <answer>{result}</answer>"


def test_topology():
    graph = build_agentflow(llm=_dummy_llm(), tools=[CalculatorTool()])
    g = graph.get_graph()
    assert set(g.nodes) - {"__start__", "__end__"} == set(NODES)
    edges = {(e.source, e.target, e.conditional) for e in g.edges}
    assert ("__start__", "planner", False) in edges
    assert ("planner", "executor", False) in edges
    assert ("executor", "verifier", False) in edges
    assert ("verifier", "planner", True) in edges
    assert ("verifier", "generator", True) in edges
    assert ("generator", "__end__", False) in edges
    assert len(edges) == 6


def _dummy_llm():
    return ScriptedChatModel(respond=lambda role, messages: "")


@pytest.mark.parametrize(
    ("state", "configurable", "expected"),
    [
        ({"verdict": "STOP", "turn": 1}, {}, "generator"),
        ({"verdict": "CONTINUE", "turn": 1}, {}, "planner"),
        ({"verdict": "CONTINUE", "turn": 3}, {}, "generator"),  # turn limit
        ({"verdict": "CONTINUE", "turn": 1}, {"max_turns": 1}, "generator"),  # per-call override
        ({"verdict": "CONTINUE", "turn": 1, "started_at": time.time() - 100}, {}, "generator"),  # time limit
        ({"verdict": "CONTINUE", "turn": 1, "started_at": time.time() - 100}, {"max_seconds": 1000}, "planner"),
    ],
)
def test_router(state, configurable, expected):
    route = make_router(max_turns=3, max_seconds=50)
    assert route(state, {"configurable": configurable}) == expected


def test_full_run_with_calculator(scripted):
    graph = build_agentflow(scripted(calculator_script), [CalculatorTool()], max_turns=5)
    final = graph.invoke({"query": "What is 12345 * 6789?"})
    assert final["answer"] == "83810205"
    assert final["turn"] == 1 and final["verdict"] == "STOP"
    assert final["tool_errors"] == 0
    (record,) = final["memory"]
    assert record["tool_name"] == "calculator"
    assert json.loads(record["command"]) == {"expression": "12345 * 6789"}
    assert record["result"] == "83810205" and record["error"] is None


@pytest.mark.parametrize(
    ("planner_reply", "executor_reply", "error_pattern"),
    [
        (" Do it.\nTool Name: teleporter", '1"}', "unknown tool 'teleporter'"),
        (" Do it.", '1"}', "no Tool Name"),
        ("\nTool Name: calculator", '1"}', "no Sub-Goal"),
        (" Do it.\nTool Name: calculator", "", "could not parse arguments|missing argument"),
        (" Do it.\nTool Name: calculator", '1 +* 2"}', "ToolException: cannot parse"),  # the tool itself fails
    ],
)
def test_malformed_output_is_recorded_and_run_goes_on(scripted, planner_reply, executor_reply, error_pattern):
    def script(role, messages):
        return {"planner": planner_reply, "executor": executor_reply, "verifier": " CONTINUE"}.get(role, "no idea")

    graph = build_agentflow(scripted(script), [CalculatorTool()], max_turns=2)
    final = graph.invoke({"query": "What is 2 + 2?"})
    assert final["turn"] == 2
    assert final["tool_errors"] == 2
    assert all(re.search(error_pattern, r["error"]) for r in final["memory"])
    assert final["answer"] == "no idea"


def test_tool_timeout_is_recorded(scripted):
    @tool
    def sleeper(seconds: str) -> str:
        """Sleep."""
        time.sleep(float(seconds))
        return "woke"

    def script(role, messages):
        return {"planner": " Sleep.\nTool Name: sleeper", "executor": '6"}', "verifier": " STOP"}.get(role, "done")

    graph = build_agentflow(scripted(script), [sleeper], tool_timeout=0.3)
    start = time.time()
    final = graph.invoke({"query": "Sleep"})
    assert time.time() - start < 5  # the tool would sleep 6 s; the call is abandoned at 0.3 s
    assert "timed out after 0.3s" in final["memory"][0]["error"]
    assert final["tool_errors"] == 1


def test_unparsable_verifier_continues_until_turn_limit(scripted):
    def script(role, messages):
        return {"planner": " Add.\nTool Name: calculator", "executor": '1+1"}', "verifier": " maybe?"}.get(role, "2")

    final = build_agentflow(scripted(script), [CalculatorTool()], max_turns=3).invoke({"query": "What is 1+1?"})
    assert final["turn"] == 3 and len(final["memory"]) == 3


def test_concurrent_runs_keep_separate_memories(scripted):
    graph = build_agentflow(scripted(calculator_script), [CalculatorTool()], max_turns=3)
    queries = [f"What is {i} * 1000?" for i in range(64)]
    finals = graph.batch([{"query": q} for q in queries], config={"max_concurrency": 16})
    for i, final in enumerate(finals):
        assert [r["command"] for r in final["memory"]] == [json.dumps({"expression": f"{i} * 1000"})]
        assert final["answer"] == str(i * 1000)


def test_async_and_checkpointer(scripted):
    graph = build_agentflow(scripted(calculator_script), [CalculatorTool()], checkpointer=MemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    final = asyncio.run(graph.ainvoke({"query": "What is 6 * 7?"}, config))
    assert final["answer"] == "42"
    assert graph.get_state(config).values["answer"] == "42"


def test_agentflow_as_a_tool(scripted):
    as_tool = agentflow_tool(build_agentflow(scripted(calculator_script), [CalculatorTool()]))
    assert isinstance(as_tool, BaseTool)
    assert as_tool.invoke({"query": "What is 3 * 5?"}) == "15"
    assert asyncio.run(as_tool.ainvoke({"query": "What is 4 * 5?"})) == "20"


def test_build_errors(scripted):
    llm = scripted(calculator_script)
    with pytest.raises(ValueError, match="max_turns"):
        build_agentflow(llm, [CalculatorTool()], max_turns=0)
    with pytest.raises(ValueError, match="unique"):
        build_agentflow(llm, [CalculatorTool(), CalculatorTool()])
    with pytest.raises(ValueError, match="at least one tool"):
        build_agentflow(llm, [])


def test_python_tool_in_the_graph(scripted):
    def script(role, messages):
        return {"planner": " Square.\nTool Name: python", "executor": 'print(2**10)"}', "verifier": " STOP"}.get(
            role, "<answer>1024</answer>"
        )

    final = build_agentflow(scripted(script), [PythonSandboxTool()]).invoke({"query": "2^10?"})
    assert final["memory"][0]["result"].strip() == "1024"


def test_models_that_cannot_continue_a_reply_get_no_prefix():
    """An API chat model (ChatOpenAI & co.) answers a trailing AI message as a finished
    turn, so such models get the plain conversation and write the whole contract."""
    seen = []

    def api_script(role, messages):
        seen.append(type(messages[-1]).__name__)
        if role == "planner":
            return "Sub-Goal: Compute 7 * 6.\nTool Name: calculator"
        if role == "executor":
            return '{"expression": "7 * 6"}'
        return calculator_script(role, messages)

    llm = ScriptedChatModel(respond=api_script, continues_final_message=False)
    final = build_agentflow(llm, [CalculatorTool()]).invoke({"query": "What is 7 * 6?"})
    assert final["answer"] == "42"
    assert set(seen) == {"HumanMessage"}
