"""The state one AgentFlow run carries through the graph.

Everything a run knows lives here and nowhere else: memory is a field of the
graph state, so two runs (two threads, two `batch` items) never share steps.
The published implementation kept one `Memory()` per solver object and leaked
earlier tasks' steps into later ones; per-run state rules that out by construction.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal, TypedDict

Verdict = Literal["STOP", "CONTINUE"]


class MemoryRecord(TypedDict):
    """One turn of the shared memory M: what was planned, what ran, what came back."""

    turn: int
    sub_goal: str
    tool_name: str
    command: str
    result: str
    error: str | None


class AgentFlowState(TypedDict, total=False):
    """Graph state: the query, the evolving memory, the loop's bookkeeping, the answer.

    `memory` and `tool_errors` are append/add reducers so nodes return only what
    they add. `started_at` is the run's start as `time.time()`, set by the planner's
    first call and read by the router's time limit. Wall-clock time, not
    `time.monotonic()`: a checkpointed run can resume in another process, where a
    monotonic clock's origin means nothing.
    """

    query: str
    memory: Annotated[list[MemoryRecord], operator.add]
    turn: int
    verdict: Verdict
    response: str  # the generator's raw output
    answer: str  # the final answer extracted from it (last <answer> tag, else all of it)
    tool_errors: Annotated[int, operator.add]
    started_at: float
    # The planner's parsed action of the current turn, consumed by the executor.
    sub_goal: str
    tool_name: str
    context: str
    plan_error: str | None
