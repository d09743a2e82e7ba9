"""The eval folder's report: `results.md` and the plots, rebuilt from every
`*.summary.json` in the folder, so several benchmarks/systems evaluated into one folder
give one table.

Plots (`agentflow.evals.plots`): `tool_call_ratio.png`, `tool_error_rate.png`, and
`accuracy_vs_max_turns.png` once some benchmark/system was run at several turn budgets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentflow.evals.systems import SYSTEMS

TABLE_FILE = "results.md"
PLOT_FILES = {
    "ratio": "tool_call_ratio.png",
    "errors": "tool_error_rate.png",
    "sweep": "accuracy_vs_max_turns.png",
}


def load_summaries(output: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every readable summary in the folder (an unreadable one is skipped, not fatal)."""
    summaries = []
    for path in sorted(Path(output).glob("*.summary.json")):
        try:
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return summaries


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy side by side (benchmark x system, at each turn budget), then the details."""
    if not summaries:
        return "_no results_\n"
    key = lambda s: (s["benchmark"], s["system"], s["max_turns"])  # noqa: E731
    summaries = sorted(summaries, key=key)
    columns = sorted({(s["system"], s["max_turns"]) for s in summaries}, key=lambda c: (SYSTEMS.index(c[0]) if c[0] in SYSTEMS else 9, c[1]))
    by = {key(s): s for s in summaries}
    lines = [
        "| benchmark | " + " | ".join(f"{sys} (T={t})" for sys, t in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for bench in dict.fromkeys(s["benchmark"] for s in summaries):
        cells = []
        for sys, t in columns:
            s = by.get((bench, sys, t))
            cells.append(f"{_pct(s['accuracy'])} ({s['correct']}/{s['n']})" if s else "–")
        lines.append(f"| {bench} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| benchmark | system | max turns | n | accuracy % | failed | tool calls | tool-call error rate % "
        "| mean turns | mean latency s | tool-call ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        ratio = ", ".join(f"{name} {_pct(r)}%" for name, r in s.get("tool_call_ratio", {}).items()) or "–"
        lines.append(
            f"| {s['benchmark']} | {s['system']} | {s['max_turns']} | {s['n']} | {_pct(s['accuracy'])} | {s['failed']} "
            f"| {s['tool_calls']} | {_pct(s['tool_call_error_rate'])} | {s['mean_turns']:.2f} "
            f"| {s['mean_latency_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_report(output: str | os.PathLike[str]) -> dict[str, Path]:
    """Rebuild `results.md`, the plots and `report.html` (the trajectory viewer) from `output`."""
    out = Path(output)
    summaries = load_summaries(out)
    written = {"table": out / TABLE_FILE}
    (out / TABLE_FILE).write_text("# Evaluation results\n\n" + markdown_table(summaries), encoding="utf-8")
    if summaries:
        from agentflow.evals.plots import plot_accuracy_vs_turns, plot_tool_call_ratio, plot_tool_error_rate

        written["ratio"] = plot_tool_call_ratio(summaries, out / PLOT_FILES["ratio"])
        written["errors"] = plot_tool_error_rate(summaries, out / PLOT_FILES["errors"])
        if any(len({s["max_turns"] for s in summaries if (s["benchmark"], s["system"]) == pair}) > 1
               for pair in {(s["benchmark"], s["system"]) for s in summaries}):
            written["sweep"] = plot_accuracy_vs_turns(summaries, out / PLOT_FILES["sweep"])
        # Last: the page embeds the plots written above.
        from agentflow.evals.viewer import write_html_report

        written["html"] = write_html_report([out])
    return written
