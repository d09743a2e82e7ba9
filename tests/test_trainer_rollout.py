"""Rollout capture: exact planner tokens from the live graph; failures count as reward 0."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from transformers import AutoTokenizer

from agentflow.models import GenerationEngine, LocalChatModel, resolve_model_path, tiny_model
from agentflow.trainer import build_trainer, collect_rollouts
from trainer_helpers import tiny_config


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
