"""The evaluation harness: run AgentFlow (or the ReAct baseline) over a benchmark.

`run_eval(benchmark, ...)` (and `agentflow eval --benchmark NAME`) loads the items,
builds the system once, runs the items concurrently (`max_concurrency` parallel runs,
whose model requests the local engine decodes together), scores each prediction with
the benchmark's deterministic scorer and writes, into the output folder:

- `<run>.jsonl`: one row per item (query, gold, prediction, score, memory, turns,
  tool calls, tool errors, latency, error), appended as items finish;
- `<run>.summary.json`: accuracy, n, tool-call ratio per tool, tool-call error rate,
  mean turns, mean latency, the config;
- `results.md` and the plots (`tool_call_ratio.png`, `tool_error_rate.png`,
  `accuracy_vs_max_turns.png` once some run sweeps the turn budget), rebuilt over
  every summary in the folder, so several benchmarks/systems evaluated into one
  folder give one table.

`<run>` is `<benchmark>__<system>__turns<N>`. A rerun into the same folder keeps the
finished rows of each run and runs only the items that are missing or failed (resume;
the config is not compared, so use a new folder for a different model). An item whose
run raises is recorded with its error and score 0 and the eval goes on.

Answer format: every query gets `with_answer_instruction` (the `<answer></answer>`
instruction, added only where the shipped query lacks it), for both systems and every
benchmark, so all are held to one answer contract; the scorer reads the last
`<answer>` tag (else the whole prediction).

Counting, per item: AgentFlow's tool calls are its planner turns (memory records, one
tool each, an unparsable action included) and its tool errors the records with an
error; ReAct's turns are model calls and its tool calls/errors its `ToolMessage`s
(status "error"). Tool-call ratio: calls to each tool / all tool calls; tool-call
error rate: tool errors / tool calls.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableLambda

from agentflow.evals.datasets import BENCHMARKS, load_benchmark, with_answer_instruction
from agentflow.evals.scoring import BENCHMARK_SCORER, DEFAULT_SCORER, SCORERS, score
from agentflow.factory import DEFAULT_ROLE, ROLES, ModelSpec, ToolSpec, agentflow_graph, load_models, role_specs
from agentflow.models import DEFAULT_MODEL

SYSTEMS = ("agentflow", "react")
TABLE_FILE = "results.md"
PLOT_FILES = {
    "ratio": "tool_call_ratio.png",
    "errors": "tool_error_rate.png",
    "sweep": "accuracy_vs_max_turns.png",
}


# --------------------------------------------------------------------------- names


def benchmark_label(benchmark: str) -> str:
    """The name used in file names and tables: the benchmark, or a file's stem."""
    return Path(benchmark).stem if benchmark.endswith((".json", ".jsonl")) else benchmark


def resolve_scorer(benchmark: str, scorer: str | None) -> str:
    """The `score()` key for a benchmark: its own name, or a scorer kind for files."""
    if scorer is not None:
        if scorer not in SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; scorers: {', '.join(sorted(SCORERS))}")
        return scorer
    if benchmark in BENCHMARK_SCORER:
        return benchmark
    if benchmark.endswith((".json", ".jsonl")):
        return DEFAULT_SCORER
    raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)} (or a .json/.jsonl path)")


def eval_tools(benchmark: str, tools: str | Sequence[str] | None) -> ToolSpec:
    """The tools for `benchmark` (checked, see `ToolSpec.parse`): toolmix's local_search
    reads the corpus its items were made from."""
    corpus = None
    if benchmark == "toolmix":
        from agentflow.evals.toolmix import make_toolmix

        corpus = make_toolmix().corpus
    return ToolSpec.parse(tools, corpus)


# --------------------------------------------------------------------------- one item


def _agentflow_row(state: Mapping[str, Any]) -> dict[str, Any]:
    memory = list(state.get("memory", []))
    return {
        "prediction": state.get("response", ""),
        "answer": state.get("answer", ""),
        "turns": int(state.get("turn", 0)),
        "verdict": state.get("verdict"),
        "memory": memory,
        "tool_calls": [r.get("tool_name") or "(none)" for r in memory],
        "tool_errors": sum(r.get("error") is not None for r in memory),
    }


def _react_row(state: Mapping[str, Any]) -> dict[str, Any]:
    from agentflow.evals.react import react_trace
    from agentflow.extract import extract_answer

    row = react_trace(state.get("messages", []))
    text = row["prediction"]
    final = re.split(r"Final\s*Answer\s*:", text, flags=re.IGNORECASE)
    # The answer tag when there is one (the same contract as AgentFlow's generator), else
    # what follows the ReAct "Final Answer:", so the "Thought:" text is not scored.
    row["answer"] = extract_answer(text) if "<answer>" in text.lower() or len(final) == 1 else final[-1].strip()
    return row


def _run_config(system: str, max_turns: int) -> dict[str, Any]:
    if system == "react":
        from agentflow.evals.react import react_recursion_limit

        return {"recursion_limit": react_recursion_limit(max_turns)}
    # planner, executor, verifier per turn, then the generator (default limit 25 is < 10 turns)
    return {"configurable": {"max_turns": max_turns}, "recursion_limit": 3 * max_turns + 5}


def _make_runner(graph, system: str, scorer_key: str, max_turns: int):
    """item -> row: run the graph on the item, score it, never raise."""
    config = _run_config(system, max_turns)

    def run_item(item: dict[str, Any]) -> dict[str, Any]:
        query = with_answer_instruction(item["query"])
        row: dict[str, Any] = {
            "pid": item["pid"],
            "query": query,
            "gold": item["answer"],
            "prediction": "",
            "answer": "",
            "score": 0.0,
            "turns": 0,
            "memory": [],
            "tool_calls": [],
            "tool_errors": 0,
            "latency_s": 0.0,
            "error": None,
        }
        start = time.perf_counter()
        try:
            if system == "react":
                state = graph.invoke({"messages": [HumanMessage(query)]}, config)
                row.update(_react_row(state))
            else:
                state = graph.invoke({"query": query}, config)
                row.update(_agentflow_row(state))
            # AgentFlow: the generator's whole response (the scorer reads its last <answer>);
            # ReAct: the final message's answer part (see _react_row).
            scored = row["answer"] if system == "react" else row["prediction"]
            row["score"] = float(score(scorer_key, scored, item))
        except Exception as exc:  # a failed item is data: recorded, scored 0, retried on resume
            row["score"] = 0.0
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=8)[-4000:]
        row["latency_s"] = round(time.perf_counter() - start, 3)
        return row

    return run_item


# --------------------------------------------------------------------------- files


def run_name(benchmark: str, system: str, max_turns: int) -> str:
    return f"{benchmark_label(benchmark)}__{system}__turns{max_turns}"


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """pid -> row of a results file (the last row of a pid wins; a torn last line is skipped)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "pid" in row:
            rows[str(row["pid"])] = row
    return rows


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def summarize(rows: Sequence[Mapping[str, Any]], **meta: Any) -> dict[str, Any]:
    """Accuracy and tool statistics over result rows (failed rows count, with score 0)."""
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


# --------------------------------------------------------------------------- the eval


def run_eval(
    benchmark: str,
    *,
    system: str = "agentflow",
    limit: int | None = None,
    concurrency: int = 8,
    max_turns: int = 3,
    sweep_max_turns: Sequence[int] | None = None,
    output: str | os.PathLike[str] = "eval_out",
    tools: Sequence[str] | str | None = None,
    scorer: str | None = None,
    model: str = DEFAULT_MODEL,
    planner_model: str | None = None,
    executor_model: str | None = None,
    verifier_model: str | None = None,
    generator_model: str | None = None,
    llm: BaseChatModel | None = None,
    llms: Mapping[str, BaseChatModel] | None = None,
    max_new_tokens: int = 128,
    dtype: str = "float32",
    seed: int = 0,
    split: str = "test",
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate `system` on `benchmark` and write results into `output`; returns the summary.

    `benchmark`: a name in BENCHMARKS or a .json/.jsonl file (`scorer` picks its scorer
    kind, default "qa_em"). Models: pass chat models (`llm` for every role, or `llms`
    with key "default" and any of planner/executor/verifier/generator), else they are
    loaded by name (`model`, and per-module `*_model`), each distinct name once. ReAct
    and base_generator use the default model. `sweep_max_turns` runs every turn budget over one compiled graph and
    returns `{"sweep": [summary per budget], "accuracy_by_max_turns": {...}}`.
    Raises ValueError for an unknown benchmark/system/scorer/tool or a malformed file,
    before any model is loaded.
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    budgets = sorted(dict.fromkeys(int(t) for t in sweep_max_turns)) if sweep_max_turns else [int(max_turns)]
    if any(t < 1 for t in budgets):
        raise ValueError(f"max turns must be >= 1, got {budgets}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    scorer_key = resolve_scorer(benchmark, scorer)
    items = [dict(row) for row in load_benchmark(benchmark, split=split, limit=limit)]  # ValueError on bad input
    if not items:
        raise ValueError(f"{benchmark}: no items to evaluate")

    tool_spec = eval_tools(benchmark, tools)

    if llms is None:
        if llm is not None:
            llms = {role: llm for role in (DEFAULT_ROLE, *ROLES)}
        else:
            spec = ModelSpec(model, dtype=dtype, seed=seed, max_new_tokens=max_new_tokens)
            llms = load_models(role_specs(spec, planner=planner_model, executor=executor_model,
                                          verifier=verifier_model, generator=generator_model))
    tool_list = tool_spec.build(llms[DEFAULT_ROLE])

    if system == "react":
        from agentflow.evals.react import build_react

        graph = build_react(llms[DEFAULT_ROLE], tool_list)
    else:
        graph = agentflow_graph(llms, tool_list, max_turns=max(budgets))

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "benchmark": benchmark, "system": system, "limit": limit, "concurrency": concurrency,
        "tools": [t.name for t in tool_list], "scorer": scorer_key,
        "models": {role: getattr(m, "model_name", type(m).__name__) for role, m in llms.items()},
        "max_new_tokens": max_new_tokens, "dtype": dtype, "seed": seed, "split": split,
        "answer_instruction": "with_answer_instruction applied to every query",
    }
    summaries = [
        _run_budget(graph, items, benchmark, system, scorer_key, budget, out, concurrency, config, progress)
        for budget in budgets
    ]
    if plots:
        write_report(out)
    if len(summaries) == 1:
        return summaries[0]
    sweep = {
        "benchmark": benchmark_label(benchmark), "system": system,
        "accuracy_by_max_turns": {s["max_turns"]: s["accuracy"] for s in summaries},
        "sweep": summaries,
    }
    (out / f"{benchmark_label(benchmark)}__{system}__sweep.json").write_text(json.dumps(sweep, indent=2))
    return sweep


def _run_budget(graph, items, benchmark, system, scorer_key, max_turns, out: Path, concurrency, config, progress):
    name = run_name(benchmark, system, max_turns)
    results_path = out / f"{name}.jsonl"
    done = read_rows(results_path)
    todo = [item for item in items if item["pid"] not in done or done[item["pid"]].get("error") is not None]
    skipped = len(items) - len(todo)
    runner = RunnableLambda(_make_runner(graph, system, scorer_key, max_turns), name=f"eval-{system}")
    start = time.perf_counter()
    if todo:
        bar = _progress(len(todo), f"{name}", progress, skipped)
        with results_path.open("a", encoding="utf-8") as f:
            # Concurrent runs: the engine batches the requests of up to `concurrency` graphs.
            for _, row in runner.batch_as_completed(todo, config={"max_concurrency": concurrency}):
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                f.flush()
                done[row["pid"]] = row
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(acc=f"{_running_accuracy(done, items):.2f}")
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    order = [item["pid"] for item in items]
    rows = [done[pid] for pid in order if pid in done]
    wanted = set(order)
    extra = [row for pid, row in done.items() if pid not in wanted]  # from earlier, larger runs
    _write_rows(results_path, rows + extra)
    summary_path = out / f"{name}.summary.json"
    earlier = 0.0
    if skipped and summary_path.is_file():  # wall time of the earlier invocations of a resumed run
        try:
            earlier = float(json.loads(summary_path.read_text(encoding="utf-8")).get("wall_s_total", 0.0))
        except (OSError, ValueError, AttributeError):
            earlier = 0.0
    summary = summarize(
        rows, benchmark=benchmark_label(benchmark), system=system, max_turns=max_turns,
        resumed=skipped, ran=len(todo), wall_s=round(wall, 2), wall_s_total=round(earlier + wall, 2), config=config,
    )
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def _running_accuracy(done: Mapping[str, Mapping[str, Any]], items) -> float:
    scores = [float(done[i["pid"]].get("score") or 0) for i in items if i["pid"] in done]
    return sum(scores) / len(scores) if scores else 0.0


def _progress(total: int, desc: str, enabled: bool, skipped: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc + (f" (resumed {skipped})" if skipped else ""), unit="item", dynamic_ncols=True)


# --------------------------------------------------------------------------- table and plots


def load_summaries(output: str | os.PathLike[str]) -> list[dict[str, Any]]:
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
    """Rebuild `results.md` and the plots from every summary in `output`."""
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
    return written


def parse_turns(text: str | None) -> list[int] | None:
    """'1,3,5,10' -> [1, 3, 5, 10]; ValueError on anything else."""
    if not text:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"--sweep-max-turns takes comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--sweep-max-turns takes integers >= 1, got {text!r}")
    return values
