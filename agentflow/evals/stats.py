"""Statistics over finished eval runs: the summary of a results file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def summarize(rows: Sequence[Mapping[str, Any]], **meta: Any) -> dict[str, Any]:
    """Accuracy and tool statistics over eval result rows (failed rows count, with score 0);
    `meta` is copied in first."""
    n = len(rows)
    calls = Counter(name for row in rows for name in row.get("tool_calls", []))
    total_calls = sum(calls.values())
    errors = sum(int(row.get("tool_errors", 0)) for row in rows)

    def mean(key: str) -> float:
        return round(sum(float(row.get(key) or 0) for row in rows) / n, 4) if n else 0.0

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
        "tool_call_error_rate": round(errors / total_calls, 4) if total_calls else 0.0,
        "mean_turns": mean("turns"),
        "mean_latency_s": mean("latency_s"),
    }
