"""The eval harness's figures (matplotlib, Agg backend: no display needed).

- `plot_tool_call_ratio`: share of calls going to each tool, per benchmark and system (paper Fig. 5);
- `plot_tool_error_rate`: tool-call error rate per benchmark and system (Fig. 6);
- `plot_accuracy_vs_turns`: accuracy against the max-turns budget (Fig. 10).

Each takes the summaries the harness writes; where a benchmark/system was run at several
budgets, Figs. 5 and 6 show the largest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Summary = Mapping[str, Any]


def _largest_budget(summaries: Sequence[Summary]) -> list[Summary]:
    best: dict[tuple[str, str], Summary] = {}
    for s in summaries:
        key = (s["benchmark"], s["system"])
        if key not in best or s["max_turns"] > best[key]["max_turns"]:
            best[key] = s
    return [best[k] for k in sorted(best)]


def _labels(summaries: Sequence[Summary]) -> list[str]:
    systems = {s["system"] for s in summaries}
    return [f"{s['benchmark']}\n{s['system']}" if len(systems) > 1 else s["benchmark"] for s in summaries]


def plot_tool_call_ratio(summaries: Sequence[Summary], path: str | Path) -> Path:
    rows = _largest_budget(summaries)
    tools = sorted({t for s in rows for t in s.get("tool_call_ratio", {})})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    bottoms = [0.0] * len(rows)
    cmap = plt.get_cmap("tab10")
    for k, tool in enumerate(tools):
        values = [100 * s.get("tool_call_ratio", {}).get(tool, 0.0) for s in rows]
        ax.bar(range(len(rows)), values, bottom=bottoms, label=tool, color=cmap(k % 10))
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_xticks(range(len(rows)), _labels(rows), fontsize=8)
    ax.set_ylabel("share of tool calls (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Tool-call ratio per benchmark")
    if tools:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_tool_error_rate(summaries: Sequence[Summary], path: str | Path) -> Path:
    rows = _largest_budget(summaries)
    benches = list(dict.fromkeys(s["benchmark"] for s in rows))
    systems = sorted({s["system"] for s in rows})
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(benches) + 2), 4.0))
    for k, system in enumerate(systems):
        by = {s["benchmark"]: s for s in rows if s["system"] == system}
        values = [100 * by[b]["tool_call_error_rate"] if b in by else 0.0 for b in benches]
        ax.bar([i + (k - (len(systems) - 1) / 2) * width for i in range(len(benches))], values, width, label=system)
    ax.set_xticks(range(len(benches)), benches, fontsize=8)
    ax.set_ylabel("tool-call error rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Tool-call error rate per benchmark")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_turns(summaries: Sequence[Summary], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for bench, system in sorted({(s["benchmark"], s["system"]) for s in summaries}):
        points = sorted((s["max_turns"], 100 * s["accuracy"]) for s in summaries
                        if (s["benchmark"], s["system"]) == (bench, system))
        if len(points) > 1:
            ax.plot(*zip(*points), marker="o", label=f"{bench} ({system})")
    ax.set_xlabel("max turns")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against the turn budget")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
