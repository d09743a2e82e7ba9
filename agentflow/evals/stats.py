"""Statistics over finished runs, shared by eval summaries, the trainer's metrics and the
learning benchmark, so a number means one thing wherever it is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def tool_error_rate(tool_errors: int, tool_calls: int) -> float:
    """Failed tool calls / tool calls (0.0 when no tool was called).

    A tool call is one AgentFlow memory record (one planner turn, whose action names one
    tool; an unparsable action counts as a failed call) or one ReAct `ToolMessage`; it
    failed when its record carries an error (ReAct: status "error"). Eval summaries store
    this as `tool_call_error_rate`, trainer metrics and learning.json as `tool_error_rate`:
    the same quantity under two names, so results written before stay readable.
    """
    return tool_errors / tool_calls if tool_calls else 0.0


def summarize(rows: Sequence[Mapping[str, Any]], **meta: Any) -> dict[str, Any]:
    """Accuracy and tool statistics over eval result rows (failed rows count, with score 0);
    `meta` is copied in first."""
    n = len(rows)
    calls = Counter(name for row in rows for name in row.get("tool_calls", []))
    total_calls = sum(calls.values())
    errors = sum(int(row.get("tool_errors", 0)) for row in rows)

    def mean(key: str) -> float:
        return round(sum(float(row.get(key) or 0) for row in rows) / n, 4) if n else 0.0

    # Summed per model name, as each row's `usage` holds them (LangChain's usage_metadata).
    tokens: dict[str, Counter[str]] = {}
    for row in rows:
        for model, counts in (row.get("usage") or {}).items():
            tokens.setdefault(model, Counter()).update(
                {k: int(counts.get(k) or 0) for k in ("input_tokens", "output_tokens", "total_tokens")})

    return {
        **meta,
        "n": n,
        "accuracy": mean("score"),
        "correct": int(sum(float(row.get("score") or 0) for row in rows)),
        "failed": sum(row.get("error") is not None for row in rows),
        "tool_calls": total_calls,
        "tool_call_counts": dict(calls.most_common()),
        "tool_call_ratio": {name: round(c / total_calls, 4) for name, c in calls.most_common()} if total_calls else {},
        "tool_errors": errors,
        "tool_call_error_rate": round(tool_error_rate(errors, total_calls), 4),
        "mean_turns": mean("turns"),
        "mean_latency_s": mean("latency_s"),
        "token_usage": {model: dict(counts) for model, counts in tokens.items()},
        **({"judge_accuracy": mean("judge_score")} if any("judge_score" in row for row in rows) else {}),
    }
