"""Rollout capture: exact planner tokens from the live graph; failures count as reward 0;
every step's runs logged to rollouts.jsonl, once per step even across a resume."""

from __future__ import annotations

import json
import operator
from typing import Annotated, TypedDict

import pytest

from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from transformers import AutoTokenizer

from agentflow.evals.viewer import collect
from agentflow.models import GenerationEngine, LocalChatModel, resolve_model_path, tiny_model
from agentflow.trainer import RunResult, build_trainer, collect_rollouts, read_metrics
from agentflow.trainer.rollout import ROLLOUTS_FILE, read_rollouts, rollout_row
from trainer_helpers import first_letter_reward, tiny_config


class _State(TypedDict, total=False):
    query: str
    answer: str
    memory: Annotated[list, operator.add]
    turn: int


def _toy_graph(llm: LocalChatModel):
    """planner (trained model) -> other (same model, another node); crashes on query "crash"."""

    def planner(state, config):
        if state["query"] == "crash":
            raise RuntimeError("graph run crashed")
        text = llm.invoke([HumanMessage(state["query"])], config).content
        return {"answer": text, "turn": 1}

    def other(state, config):
        llm.invoke([HumanMessage("not the planner")], config)
        return {}

    graph = StateGraph(_State)
    graph.add_node("planner", planner)
    graph.add_node("other", other)
    graph.add_edge(START, "planner")
    graph.add_edge("planner", "other")
    graph.add_edge("other", END)
    return graph.compile()


def _llm() -> LocalChatModel:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path())
    return LocalChatModel(engine=GenerationEngine(tiny_model(), tokenizer), temperature=0.7, max_new_tokens=3)


def test_recorder_keeps_only_planner_calls_with_exact_tokens():
    llm = _llm()
    groups = collect_rollouts(_toy_graph(llm), [{"query": "hi"}], 3, lambda state, item: 1.0)
    for run in groups[0]:
        assert not run.failed and len(run.turns) == 1  # the "other" node's call is not recorded
        turn = run.turns[0]
        assert turn.prompt_ids == llm.encode_messages([HumanMessage("hi")])[0]
        assert len(turn.completion_ids) == len(turn.logprobs) == 3 and turn.temperature == 0.7


def test_crashing_graph_run_and_reward_count_as_failed_with_reward_zero():
    llm = _llm()

    def reward(state, item):
        if item["query"] == "bad reward":
            raise ValueError("reward crashed")
        return 1.0

    items = [{"query": "crash"}, {"query": "bad reward"}, {"query": "fine"}]
    groups = collect_rollouts(_toy_graph(llm), items, 2, reward)
    assert [len(g) for g in groups] == [2, 2, 2]  # failed runs stay in their group
    for run in groups[0]:
        assert run.failed and run.reward == 0.0 and "graph run crashed" in run.error
    for run in groups[1]:
        assert run.failed and run.reward == 0.0 and "reward crashed" in run.error
    assert all(not r.failed and r.reward == 1.0 for r in groups[2])


def test_failed_runs_are_counted_in_step_metrics(tmp_path):
    calls = []

    def flaky(state, item):
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("judge down")
        return 1.0

    trainer = build_trainer(tiny_config(tmp_path, max_steps=1), reward_fn=flaky)
    metrics = trainer.step(1)
    assert metrics["runs"] == 8 and metrics["failed_runs"] == 4
    assert metrics["reward_mean"] == 0.5


TURN_FIELDS = {"turn", "sub_goal", "tool", "command", "result", "error", "verdict"}


def test_each_step_appends_its_runs_to_rollouts_jsonl(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, max_steps=2), reward_fn=first_letter_reward)
    run_dir = trainer.train()
    rows = read_rollouts(run_dir)
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8  # Q=2 queries x G=4 runs per step
    items = {item["query"]: item for item in trainer.train_items}
    for r in rows:
        item = items[r["query"]]
        assert (r["gold"], r["type"], r["pid"]) == (item["answer"], item["type"], item["pid"])
        assert r["failed"] is False and r["error"] is None and isinstance(r["response"], str)
        assert r["turns"] and all(set(t) == TURN_FIELDS for t in r["turns"])
        assert r["turns"][-1]["verdict"] == r["verdict"]
        assert r["reward"] == first_letter_reward({"memory": [{"sub_goal": r["turns"][0]["sub_goal"]}]}, item)
    metrics = read_metrics(run_dir)
    for m in metrics:  # the logged rows are the runs the step trained on
        step_rewards = [r["reward"] for r in rows if r["step"] == m["step"]]
        assert m["reward_mean"] == pytest.approx(sum(step_rewards) / len(step_rewards))
    shown = [i for i in collect([run_dir])["items"] if i.get("step") is not None]  # the report viewer reads them
    assert len(shown) == 16 and all(i["memory"] and i["gold"] for i in shown)


def test_resumed_run_does_not_log_a_step_twice(tmp_path):
    first = build_trainer(tiny_config(tmp_path, max_steps=1), reward_fn=first_letter_reward)
    run_dir = first.train()  # checkpoint at step 1
    first.step(2)  # step 2 rolls out and logs, then the process "dies" before its checkpoint
    with (run_dir / ROLLOUTS_FILE).open("a") as f:
        f.write('{"step": 3, "query": "torn li')  # killed mid-write
    assert sum(r["step"] == 2 for r in read_rollouts(run_dir)) == 8
    resumed = build_trainer(tiny_config(tmp_path, max_steps=2, resume_from=str(run_dir)), reward_fn=first_letter_reward)
    resumed.train()
    lines = (run_dir / ROLLOUTS_FILE).read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone, every line parses
    assert [json.loads(line)["step"] for line in lines] == [1] * 8 + [2] * 8


def test_rollout_row_gives_each_turn_its_verdict():
    memory = [{"turn": t, "sub_goal": "s", "tool_name": "calculator", "command": "{}", "result": "1", "error": None}
              for t in (1, 2, 3)]
    run = RunResult(0, {"query": "q", "answer": "1"}, [], 1.0, n_turns=3, verdict="STOP", memory=memory)
    row = rollout_row(run, step=5, query_index=1, sample=2)
    assert [t["verdict"] for t in row["turns"]] == ["CONTINUE", "CONTINUE", "STOP"]  # only STOP ends the loop early
    assert "type" not in row and "pid" not in row  # only what the item has
    assert (row["step"], row["query_index"], row["sample"], row["gold"]) == (5, 1, 2, "1")
