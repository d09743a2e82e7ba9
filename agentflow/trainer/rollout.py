"""Rollouts: run the compiled AgentFlow graph G times per query and record the planner's
generations from the live run.

The trainer does not know the graph's internals. Each graph run gets its own
`PlannerRecorder` (a LangChain callback handler) through its own `config["callbacks"]`;
the recorder keeps the chat-model calls whose callback metadata says they were made
inside the planner node (`langgraph_node`), and on `on_llm_end` takes the token ids and
sampling log-probs that `LocalChatModel` puts in `generation_info`. One recorder per
run means no run-id bookkeeping across concurrent runs, and the tokens trained on are
exactly the ones sampled (never decoded and re-encoded).

Each `RunResult` also keeps what the run did (memory, final verdict, the generator's
response), so a training step can log its trajectories (`rollout_row`, `RolloutLog`:
`<run_dir>/rollouts.jsonl`, docs/design.md §8) and failures can be classified from them.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from agentflow.evals.jsonl import read_jsonl

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
    response: str = ""  # the generator's raw text
    verdict: str | None = None  # the verifier's last verdict (CONTINUE when the turn budget ended the run)
    memory: list[dict[str, Any]] = field(default_factory=list)  # the run's memory records (docs/design.md §1)


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
        response=str(state.get("response", "")),
        verdict=state.get("verdict"),
        memory=[dict(record) for record in memory],
    )
    try:
        result.reward = float(reward_fn(state, item))
        if result.reward != result.reward:  # NaN reward: a reward bug, not a signal
            raise ValueError("reward is NaN")
    except Exception as e:  # noqa: BLE001 - any reward failure is a failed run, counted
        result.reward, result.failed, result.error = 0.0, True, f"reward: {type(e).__name__}: {e}"
    return result



# ---------------------------------------------------------------------------------------
# Rollout logs: <run_dir>/rollouts.jsonl (docs/design.md §8)
# ---------------------------------------------------------------------------------------

ROLLOUTS_FILE = "rollouts.jsonl"  # the name agentflow.evals.viewer looks for


def rollout_row(run: RunResult, step: int, query_index: int, sample: int) -> dict[str, Any]:
    """One graph run as one JSON-ready object, in the field names the report viewer reads.

    The memory records become `turns`, each with the verifier's verdict after that turn.
    The state keeps only the last verdict, but the graph's one loop (docs/design.md §2)
    means every turn but the last was followed by CONTINUE (STOP routes to the generator),
    and the last turn's verdict is the state's. A run that raised has no state: no turns.
    """
    last = len(run.memory) - 1
    turns = [
        {
            "turn": record.get("turn", i + 1),
            "sub_goal": record.get("sub_goal", ""),
            "tool": record.get("tool_name", ""),
            "command": record.get("command", ""),
            "result": record.get("result", ""),
            "error": record.get("error"),
            "verdict": run.verdict if i == last else "CONTINUE",
        }
        for i, record in enumerate(run.memory)
    ]
    row: dict[str, Any] = {"step": step, "query_index": query_index, "sample": sample}
    if "pid" in run.item:
        row["pid"] = run.item["pid"]
    row.update({
        "query": run.item.get("query", ""),
        "gold": run.item.get("answer"),
    })
    if "type" in run.item:
        row["type"] = run.item["type"]
    row.update({
        "reward": run.reward,
        "answer": run.answer,
        "response": run.response,
        "verdict": run.verdict,
        "n_turns": run.n_turns,
        "tool_errors": run.tool_errors,
        "failed": run.failed,
        "error": run.error,
        "turns": turns,
    })
    return row


class RolloutLog:
    """Appends each training step's graph runs to `<run_dir>/rollouts.jsonl`.

    One write and flush per step, so an interrupted run leaves whole lines (at worst a
    torn last line, which readers skip). `truncate_after(step)` on resume drops the rows
    of steps after the checkpoint, as `MetricsLogger.truncate_after` does for metrics,
    so a resumed run never logs a step twice.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / ROLLOUTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [row for row in read_rollouts(self.path.parent) if row.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in kept)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)


def read_rollouts(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of `<run_dir>/rollouts.jsonl`; a torn line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / ROLLOUTS_FILE
    return read_jsonl(path) if path.exists() else []
