"""Run AgentFlow (or the ReAct baseline) over a benchmark: `run_eval`, `agentflow eval`.

`run_eval` loads the items, builds the system once, runs the items concurrently
(`concurrency` runs in flight, whose model requests the local engine decodes together),
scores each prediction with the benchmark's deterministic scorer and writes, into the
output folder:

- `<run>.jsonl`: one row per item (query, gold, prediction, score, memory, turns,
  tool calls, tool errors, latency, error), appended as items finish;
- `<run>.summary.json`: accuracy, n, tool-call ratio per tool, tool-call error rate,
  mean turns, mean latency, the config (`agentflow.evals.stats.summarize`);
- the table and plots over every summary in the folder (`agentflow.evals.report`).

`<run>` is `<benchmark>__<system>__turns<N>`. A rerun into the same folder keeps the
finished rows of each run and runs only the items that are missing or failed (resume).
Every row records each role's model (`models`, the spec's label), and a rerun with other
models than the folder's rows were made with is refused: their rows would be mixed into
one score. An item whose run raises (a served model's call that still fails after the
client's retries included) is recorded with its error and score 0 and the eval goes on.
Each row also records the tokens its model calls used (`usage`, per model, as LangChain's
`usage_metadata` reports them), and the summary their totals. With a `judge` model, each
row also gets the published LLM-judge verdict (`judge_score`; the summary's
`judge_accuracy`) beside the deterministic score.

Answer format: every query gets `with_answer_instruction` (the `<answer></answer>`
instruction, added only where the shipped query lacks it), for both systems and every
benchmark, so all are held to one answer contract; the scorer reads the last
`<answer>` tag (else the whole prediction).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableLambda
from langgraph.graph.state import CompiledStateGraph

from agentflow.evals.datasets import BENCHMARKS, load_benchmark, with_answer_instruction
from agentflow.evals.report import write_report
from agentflow.evals.judge import JUDGE_CACHE_FILE, JudgeCache
from agentflow.evals.jsonl import read_jsonl
from agentflow.evals.scoring import BENCHMARK_SCORER, DEFAULT_SCORER, SCORERS, score
from agentflow.evals.stats import summarize
from agentflow.evals.systems import SCORED_FIELD, build_system, check_system, eval_tools, run_config, run_system
from agentflow.factory import DEFAULT_ROLE, ROLES, ModelSpec, load_chat_model, load_models, role_specs


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


def run_name(benchmark: str, system: str, max_turns: int) -> str:
    return f"{benchmark_label(benchmark)}__{system}__turns{max_turns}"


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """pid -> row of a results file (the last row of a pid wins; a torn last line is skipped)."""
    if not path.is_file():
        return {}
    return {str(row["pid"]): row for row in read_jsonl(path) if "pid" in row}


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def _check_same_models(path: Path, models: Mapping[str, str]) -> None:
    """ValueError when the rows already in `path` were made with other models than `models`."""
    for row in read_rows(path).values():
        if "models" in row and row["models"] != dict(models):
            raise ValueError(
                f"{path} holds rows made with other models ({_describe(row['models'])}) than this run's "
                f"({_describe(models)}); resuming would mix them into one score: use another --output folder"
            )


def _describe(models: Mapping[str, str]) -> str:
    return ", ".join(f"{role}={label}" for role, label in models.items())


def _make_runner(
    graph: CompiledStateGraph, system: str, scorer_key: str, max_turns: int, models: Mapping[str, str],
    judge: Callable[[str, str, str], float] | None = None,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """item -> row: run the graph on the item, score it, never raise."""
    config = run_config(system, max_turns)

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
            "models": dict(models),
        }
        usage = UsageMetadataCallbackHandler()
        start = time.perf_counter()
        try:
            row.update(run_system(graph, system, query, {**config, "callbacks": [usage]}))
            row["score"] = float(score(scorer_key, row[SCORED_FIELD[system]], item))
            if judge is not None:  # a judge call that fails fails the item, to be judged on resume
                row["judge_score"] = judge(item["query"], row["answer"], str(item["answer"]))
        except Exception as exc:  # a failed item is data: recorded, scored 0, retried on resume
            row["score"] = 0.0
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=8)[-4000:]
        row["latency_s"] = round(time.perf_counter() - start, 3)
        row["usage"] = {name: dict(counts) for name, counts in usage.usage_metadata.items()}
        return row

    return run_item


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
    specs: Mapping[str, ModelSpec] | None = None,
    llm: BaseChatModel | None = None,
    llms: Mapping[str, BaseChatModel] | None = None,
    judge: BaseChatModel | None = None,
    judge_spec: ModelSpec | None = None,
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
    made from `specs` (role -> `ModelSpec`, as `agentflow.factory.role_specs` gives them;
    default: the embedded model everywhere), each distinct spec once. Given with `llms`,
    `specs` names them in the rows. ReAct and base_generator use the default model.
    `judge` (named in the rows by `judge_spec`, else its model name) also grades every
    answer with `judge_score`; a `judge_spec` alone is loaded. `sweep_max_turns` runs
    every turn budget over one compiled graph and returns
    `{"sweep": [summary per budget], "accuracy_by_max_turns": {...}}`.
    Raises ValueError for an unknown benchmark/system/scorer/tool, a malformed file, or an
    output folder made with other models, before any model is loaded.
    """
    check_system(system)
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

    if llms is None and llm is not None:
        llms = {role: llm for role in (DEFAULT_ROLE, *ROLES)}
    if llms is None and specs is None:
        specs = role_specs(ModelSpec(dtype=dtype, seed=seed, max_new_tokens=max_new_tokens))
    if specs is not None:
        models = {role: spec.label for role, spec in specs.items()}
    else:
        models = {role: getattr(m, "model_name", type(m).__name__) for role, m in llms.items()}
    if judge_spec is not None:
        models["judge"] = judge_spec.label
    elif judge is not None:
        models["judge"] = getattr(judge, "model_name", type(judge).__name__)
    out = Path(output)
    for budget in budgets:
        _check_same_models(out / f"{run_name(benchmark, system, budget)}.jsonl", models)
    if llms is None:
        llms = load_models(specs)
    if judge is None and judge_spec is not None:
        judge = load_chat_model(judge_spec)
    grade = JudgeCache(out / JUDGE_CACHE_FILE, judge, models["judge"]) if judge is not None else None
    tool_list = tool_spec.build(llms[DEFAULT_ROLE])
    graph = build_system(system, llms, tool_list, max(budgets))

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "benchmark": benchmark, "system": system, "limit": limit, "concurrency": concurrency,
        "tools": [t.name for t in tool_list], "scorer": scorer_key,
        "models": models,
        "max_new_tokens": max_new_tokens, "dtype": dtype, "seed": seed, "split": split,
        "answer_instruction": "with_answer_instruction applied to every query",
    }
    summaries = [
        _run_budget(graph, items, benchmark, system, scorer_key, budget, out, concurrency, config, progress, models,
                    grade)
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


def _run_budget(graph, items, benchmark, system, scorer_key, max_turns, out: Path, concurrency, config, progress,
                models: Mapping[str, str], judge: Callable[[str, str, str], float] | None):
    """One turn budget: run the items not yet done, compact the rows file, write the summary."""
    name = run_name(benchmark, system, max_turns)
    results_path = out / f"{name}.jsonl"
    done = read_rows(results_path)
    todo = [item for item in items if item["pid"] not in done or done[item["pid"]].get("error") is not None]
    skipped = len(items) - len(todo)
    runner = RunnableLambda(_make_runner(graph, system, scorer_key, max_turns, models, judge), name=f"eval-{system}")
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
