"""The evaluation harness (`run_eval`, `agentflow eval`) and the ReAct baseline.

These tests use the `ScriptedChatModel` fake, not a real model: what is tested here is
the harness's bookkeeping (rows, summaries, resume, failure handling, the turn sweep,
the baseline's tool-call parsing and counting, CLI errors), which needs replies we
choose (a right answer, a tool call, an exception on a given item). A real model's
replies cannot be chosen, and running one would make this file minutes long on CPU.
Benchmarks are tiny JSONL files written per test, so nothing depends on the shipped sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ScriptedChatModel, query_of
from typer.testing import CliRunner

from agentflow.cli import app
from agentflow.evals import run_eval
from agentflow.evals.report import PLOT_FILES, TABLE_FILE
from agentflow.evals.runner import read_rows, run_name
from agentflow.evals.stats import tool_error_rate
from agentflow.evals.text_tool_calling import parse_react_reply

ITEMS = [
    {"pid": "a", "query": "What is 2+2?", "answer": "4"},
    {"pid": "b", "query": "What is 3+3?", "answer": "6"},
    {"pid": "c", "query": "What is 5+5? boom", "answer": "10"},
]
ANSWERS = {"2+2": "4", "3+3": "6", "5+5": "10"}


def _bench(tmp_path: Path, items=ITEMS) -> str:
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def _answer(messages) -> str:
    text = " ".join(str(m.content) for m in messages)
    return next((v for k, v in ANSWERS.items() if k in text), "?")


def agentflow_model(verdict: str = "STOP", fail_on: str | None = None, calls: list | None = None) -> ScriptedChatModel:
    """Answers each arithmetic question right in one calculator turn; raises on `fail_on`."""

    def respond(role, messages):
        query = query_of(messages)
        if fail_on and fail_on in query:
            raise RuntimeError(f"scripted failure on {query!r}")
        if role == "planner":
            if calls is not None:
                calls.append(query)
            return " Add the numbers.\nTool Name: calculator\nContext: none"
        if role == "executor":
            expression = next((k for k in ANSWERS if k in query), "1+1")
            return f'{expression}"}}'
        if role == "verifier":
            return f" {verdict}"
        return f"<answer>{_answer(messages)}</answer>"

    return ScriptedChatModel(respond=respond)


def react_model(tool: str = "calculator") -> ScriptedChatModel:
    """Calls `tool` once, then answers from the observation."""

    def respond(role, messages):
        if not any("Observation:" in str(m.content) for m in messages):
            expression = next((k for k in ANSWERS if k in str(messages[1].content)), "1+1")
            return f' I should add.\nAction: {tool}\nAction Input: {{"expression": "{expression}"}}'
        return f" I know the answer.\nFinal Answer: <answer>{_answer(messages[1:2])}</answer>"

    return ScriptedChatModel(respond=respond)


def test_outputs_are_written(tmp_path):
    out = tmp_path / "out"
    summary = run_eval(_bench(tmp_path), llm=agentflow_model(), output=out, tools="calculator", progress=False)
    assert summary["n"] == 3 and summary["accuracy"] == 1.0 and summary["failed"] == 0
    assert summary["tool_call_ratio"] == {"calculator": 1.0}
    assert summary["tool_call_error_rate"] == 0.0 and summary["mean_turns"] == 1.0
    assert summary["config"]["tools"] == ["calculator"]
    name = run_name("mini.jsonl", "agentflow", 3)
    rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
    assert [r["pid"] for r in rows] == ["a", "b", "c"]
    row = rows[0]
    for key in ("query", "gold", "prediction", "score", "memory", "turns", "tool_calls", "tool_errors", "latency_s", "error"):
        assert key in row
    assert "<answer>" in row["query"]  # with_answer_instruction applied
    assert row["memory"][0]["tool_name"] == "calculator" and row["memory"][0]["result"] == "4"
    assert json.loads((out / f"{name}.summary.json").read_text())["accuracy"] == 1.0
    assert "mini" in (out / TABLE_FILE).read_text()
    for key in ("ratio", "errors"):
        assert (out / PLOT_FILES[key]).stat().st_size > 0
    page = (out / "report.html").read_text()  # the trajectory viewer, with every item's query
    assert all(json.dumps(r["query"])[1:20].replace("<", "\\u003c") in page for r in rows)


def test_failed_item_is_recorded_and_resume_retries_only_it(tmp_path):
    out, bench = tmp_path / "out", _bench(tmp_path)
    first = run_eval(bench, llm=agentflow_model(fail_on="boom"), output=out, tools="calculator", progress=False, plots=False)
    assert first["n"] == 3 and first["failed"] == 1 and first["correct"] == 2
    rows = read_rows(out / f"{run_name(bench, 'agentflow', 3)}.jsonl")
    assert "scripted failure" in rows["c"]["error"] and rows["c"]["score"] == 0.0
    assert rows["a"]["error"] is None

    calls: list[str] = []
    second = run_eval(bench, llm=agentflow_model(calls=calls), output=out, tools="calculator", progress=False, plots=False)
    assert len(calls) == 1 and "boom" in calls[0]  # only the failed item ran again
    assert second["resumed"] == 2 and second["ran"] == 1
    assert second["wall_s_total"] >= first["wall_s_total"]
    assert second["failed"] == 0 and second["accuracy"] == 1.0
    assert len((out / f"{run_name(bench, 'agentflow', 3)}.jsonl").read_text().splitlines()) == 3  # compacted

    calls.clear()  # a finished run is not run again
    third = run_eval(bench, llm=agentflow_model(calls=calls), output=out, tools="calculator", progress=False, plots=False)
    assert calls == [] and third["ran"] == 0 and third["accuracy"] == 1.0


def test_sweep_gives_one_summary_per_budget_over_one_graph(tmp_path, monkeypatch):
    import agentflow.factory as factory

    built = []
    real = factory.build_agentflow
    monkeypatch.setattr(factory, "build_agentflow", lambda *a, **k: built.append(k["max_turns"]) or real(*a, **k))
    out = tmp_path / "out"
    result = run_eval(
        _bench(tmp_path, ITEMS[:2]), llm=agentflow_model(verdict="CONTINUE"), output=out,
        tools="calculator", sweep_max_turns=[2, 1], progress=False,
    )
    assert built == [2]
    assert [s["max_turns"] for s in result["sweep"]] == [1, 2]
    assert [s["mean_turns"] for s in result["sweep"]] == [1.0, 2.0]
    assert result["accuracy_by_max_turns"] == {1: 1.0, 2: 1.0}
    for t in (1, 2):
        assert (out / f"{run_name('mini.jsonl', 'agentflow', t)}.summary.json").is_file()
    assert (out / PLOT_FILES["sweep"]).stat().st_size > 0


def test_react_baseline_runs_on_a_scripted_model(tmp_path):
    out = tmp_path / "out"
    summary = run_eval(_bench(tmp_path, ITEMS[:2]), system="react", llm=react_model(), output=out,
                       tools="calculator,python", progress=False, plots=False)
    assert summary["accuracy"] == 1.0 and summary["failed"] == 0
    assert summary["mean_turns"] == 2.0  # model calls: the tool call, then the answer
    assert summary["tool_call_ratio"] == {"calculator": 1.0} and summary["tool_call_error_rate"] == 0.0
    row = read_rows(out / f"{run_name('mini.jsonl', 'react', 3)}.jsonl")["a"]
    assert row["memory"][0]["result"] == "4" and row["answer"] == "4"
    assert [m["type"] for m in row["messages"]] == ["human", "ai", "tool", "ai"]

    bad = run_eval(_bench(tmp_path, ITEMS[:1]), system="react", llm=react_model(tool="nosuch"), output=tmp_path / "bad",
                   tools="calculator", progress=False, plots=False)
    assert bad["tool_calls"] == 1 and bad["tool_errors"] == 1 and bad["tool_call_error_rate"] == 1.0


def test_tool_error_rate_is_failed_calls_per_call():
    assert tool_error_rate(1, 4) == 0.25
    assert tool_error_rate(0, 0) == 0.0  # no calls: no errors, not a division by zero


def test_react_turn_budget_ends_without_recursion_error(tmp_path):
    always_tool = ScriptedChatModel(respond=lambda role, m: ' go\nAction: calculator\nAction Input: {"expression": "1+1"}')
    summary = run_eval(_bench(tmp_path, ITEMS[:1]), system="react", llm=always_tool, output=tmp_path / "o",
                       tools="calculator", max_turns=2, progress=False, plots=False)
    assert summary["failed"] == 0 and summary["tool_calls"] == 2 and summary["mean_turns"] == 3.0


def test_parse_react_reply():
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {
        "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]
    call = parse_react_reply('Thought: x\nAction: Calculator\nAction Input: "2*3"', tools).tool_calls[0]
    assert call["name"] == "calculator" and call["args"] == {"expression": "2*3"}
    assert parse_react_reply('Action: calculator\nAction Input: {"query": "1+1"}', tools).tool_calls[0]["args"] == {"expression": "1+1"}
    empty = parse_react_reply("Thought: x\nAction:\nAction Input:\nOutput: 5", tools).tool_calls[0]
    assert empty["name"] == "(none)" and empty["args"] == {}  # still a (failing) call, not a name from the next line
    trailing = parse_react_reply("Action: calculator\nAction Input: 2+3\nOutput: 5", tools).tool_calls[0]
    assert trailing["args"] == {"expression": "2+3"}
    assert parse_react_reply("Thought: done\nFinal Answer: 6", tools).tool_calls == []
    assert parse_react_reply("Final Answer: 6\nAction: calculator", tools).tool_calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmark", "nosuch"], "unknown benchmark"),
        (["--benchmark", "{bad}"], "malformed JSON"),
        (["--benchmark", "{noanswer}"], "no 'answer'"),
        (["--benchmark", "{good}", "--scorer", "nosuch"], "unknown scorer"),
        (["--benchmark", "{good}", "--system", "nosuch"], "unknown system"),
        (["--benchmark", "{good}", "--sweep-max-turns", "1,x"], "comma-separated integers"),
        (["--benchmark", "{good}", "--tools", "calculator,nosuch"], "unknown tool(s) nosuch"),
        (["--benchmark", "{good}", "--tools", "local_search"], "local_search needs a corpus"),
    ],
)
def test_cli_errors_exit_2_before_a_model_loads(tmp_path, monkeypatch, args, message):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    files = {"bad": tmp_path / "bad.jsonl", "noanswer": tmp_path / "noanswer.jsonl", "good": tmp_path / "good.jsonl"}
    files["bad"].write_text('{"query": "q", "answer": "a"}\n{not json\n')
    files["noanswer"].write_text('{"query": "q"}\n')
    files["good"].write_text('{"query": "q", "answer": "a"}\n')
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    result = CliRunner().invoke(app, ["eval", *args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


class CountingJudge:
    """Stands in for the judge model (`judge_score` only calls `invoke`): says True, counts calls."""

    model_name = "counting-judge"

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, prompt: str):
        from langchain_core.messages import AIMessage

        self.calls += 1
        return AIMessage(content="true_false: True")


def test_judge_verdicts_are_paid_for_once(tmp_path):
    """A sweep whose budgets give the same answers, then a rerun into the same folder from a
    fresh process-like start: the judge is asked once per (question, gold, prediction)."""
    judge, out = CountingJudge(), tmp_path / "out"
    result = run_eval(_bench(tmp_path, ITEMS[:2]), llm=agentflow_model(verdict="CONTINUE"), output=out,
                      tools="calculator", sweep_max_turns=[1, 2], progress=False, judge=judge)
    assert judge.calls == 2
    assert [s["judge_accuracy"] for s in result["sweep"]] == [1.0, 1.0]
    cached = [json.loads(line) for line in (out / "judge_cache.jsonl").read_text().splitlines()]
    assert len(cached) == 2 and {row["verdict"] for row in cached} == {1.0}

    from agentflow.evals.judge import JudgeCache

    again = JudgeCache(out / "judge_cache.jsonl", judge, "counting-judge")
    row = read_rows(out / f"{run_name('mini.jsonl', 'agentflow', 1)}.jsonl")["a"]
    assert again(ITEMS[0]["query"], row["answer"], str(ITEMS[0]["answer"])) == 1.0 and judge.calls == 2
    assert again(ITEMS[0]["query"], "another answer", str(ITEMS[0]["answer"])) == 1.0 and judge.calls == 3
    other_judge = JudgeCache(out / "judge_cache.jsonl", judge, "another-judge")
    other_judge(ITEMS[0]["query"], row["answer"], str(ITEMS[0]["answer"]))
    assert judge.calls == 4  # a verdict belongs to the judge that gave it
