"""Rollouts: run the compiled AgentFlow graph G times per query and record the planner's
generations from the live run.

The trainer does not know the graph's internals. Each graph run gets its own
`PlannerRecorder` (a LangChain callback handler) through its own `config["callbacks"]`;
the recorder keeps the chat-model calls whose callback metadata says they were made
inside the planner node (`langgraph_node`), and on `on_llm_end` takes the token ids and
sampling log-probs that `LocalChatModel` puts in `generation_info`. One recorder per
run means no run-id bookkeeping across concurrent runs, and the tokens trained on are
exactly the ones sampled (never decoded and re-encoded).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

RewardFn = Callable[[Mapping[str, Any], Mapping[str, Any]], float]


@dataclass
class Turn:
    """One planner generation: exactly what was sampled, and how."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # log softmax(logits / temperature) of each sampled token
    temperature: float  # the sampling temperature (1.0 when greedy, as the engine scores it)


@dataclass
class RunResult:
    """One graph run of a group: its planner turns, its reward, what it did."""

    query_index: int
    item: Mapping[str, Any]
    turns: list[Turn]
    reward: float
    failed: bool = False  # the graph or the reward raised: reward 0, counted in metrics
    error: str | None = None
    n_turns: int = 0  # the graph's turn counter (planner turns taken)
    tool_errors: int = 0
    tools: Counter = field(default_factory=Counter)  # tool name -> calls, from memory records
    answer: str = ""


class PlannerRecorder(BaseCallbackHandler):
    """Collects the generations of chat-model calls made inside one graph node.

    Used with one instance per graph run, so everything it sees belongs to that run.
    """

    raise_error = True  # a broken recorder must fail the run, not silently lose turns

    def __init__(self, node: str = "planner") -> None:
        self.node = node
        self.turns: list[Turn] = []
        self._calls: set[UUID] = set()
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (metadata or {}).get("langgraph_node") == self.node:
            with self._lock:
                self._calls.add(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            if run_id not in self._calls:
                return
            self._calls.discard(run_id)
        for generations in response.generations:
            for generation in generations:
                info = generation.generation_info or {}
                if "completion_token_ids" not in info:
                    raise ValueError(
                        f"the {self.node!r} node's chat model reports no token ids; train a LocalChatModel"
                    )
                temperature = float(info.get("temperature") or 0.0)
                with self._lock:
                    self.turns.append(
                        Turn(
                            prompt_ids=list(info["prompt_token_ids"]),
                            completion_ids=list(info["completion_token_ids"]),
                            logprobs=[float(x) for x in info["logprobs"]],
                            temperature=temperature if temperature > 0 else 1.0,
                        )
                    )


def collect_rollouts(
    graph: Any,
    items: Sequence[Mapping[str, Any]],
    group_size: int,
    reward_fn: RewardFn,
    *,
    node: str = "planner",
    max_concurrency: int | None = None,
    max_turns: int | None = None,
    max_seconds: float | None = None,
) -> list[list[RunResult]]:
    """Run `graph` `group_size` times per item, all runs in one `graph.batch`.

    Returns one group (list of G RunResults) per item, in item order. A run whose graph
    or reward raises gets reward 0 and `failed=True`; it stays in its group (dropping it
    would bias the group's baseline towards the runs that survived).
    """
    inputs, configs, recorders, owners = [], [], [], []
    for index, item in enumerate(items):
        for _ in range(group_size):
            recorder = PlannerRecorder(node)
            configurable = {k: v for k, v in (("max_turns", max_turns), ("max_seconds", max_seconds)) if v is not None}
            inputs.append({"query": item["query"]})
            configs.append(
                {
                    "callbacks": [recorder],
                    "max_concurrency": max_concurrency or len(items) * group_size,
                    "configurable": configurable,
                    "run_name": "flow_grpo_rollout",
                }
            )
            recorders.append(recorder)
            owners.append(index)
    states = graph.batch(inputs, config=configs, return_exceptions=True) if inputs else []
    groups: list[list[RunResult]] = [[] for _ in items]
    for index, state, recorder in zip(owners, states, recorders):
        groups[index].append(_score_run(index, items[index], state, recorder.turns, reward_fn))
    return groups


def _score_run(
    index: int, item: Mapping[str, Any], state: Any, turns: list[Turn], reward_fn: RewardFn
) -> RunResult:
    if isinstance(state, BaseException):
        return RunResult(index, item, turns, 0.0, failed=True, error=f"{type(state).__name__}: {state}")
    memory = state.get("memory", []) or []
    result = RunResult(
        index,
        item,
        turns,
        0.0,
        n_turns=int(state.get("turn", len(turns))),
        tool_errors=int(state.get("tool_errors", 0)),
        tools=Counter(record.get("tool_name") or "<none>" for record in memory),
        answer=str(state.get("answer", "")),
    )
    try:
        result.reward = float(reward_fn(state, item))
        if result.reward != result.reward:  # NaN reward: a reward bug, not a signal
            raise ValueError("reward is NaN")
    except Exception as e:  # noqa: BLE001 - any reward failure is a failed run, counted
        result.reward, result.failed, result.error = 0.0, True, f"reward: {type(e).__name__}: {e}"
    return result

