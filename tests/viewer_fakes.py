"""Realistic eval folders and training runs written by hand, for the report viewer.

The viewer is tested on what the harness and the trainer write, without a model: rows
with the harness's fields (AgentFlow memory records, ReAct thought/action records, a
failed item with its traceback), `<run>.summary.json` from the harness's own
`summarize`, and a training run's `metrics.jsonl`/`rollouts.jsonl`. Seeded, so a test
knows how many items are right, wrong or have tool errors by reading the rows back.
Also used by benchmarks/viewer_load.py (5000 items) and scripts/viewer_screenshot.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

INSTRUCTION = (" When ready, output the final answer enclosed in <answer> and </answer> tags."
               " Do not generate any content after the </answer> tag.")
MODEL = "smollm2-135m-instruct"

# Multi-hop questions of the bamboogle kind: (question, gold, search query, passage, wrong guess).
QA = [
    ("Who was president of the United States in the year that Citibank was founded?", "james madison",
     "Citibank founded year", "Citibank was founded in 1812 as the City Bank of New York.", "Thomas Jefferson"),
    ("What rocket was the first spacecraft that ever approached Uranus launched on?", "Titan IIIE",
     "Voyager 2 launch vehicle", "Voyager 2 was launched on August 20, 1977, aboard a Titan IIIE rocket.", "Atlas V"),
    ("Who founded the city where the founder of geometry was born?", "Alexander the Great",
     "Euclid birthplace", "Euclid is thought to have lived in Alexandria, founded by Alexander the Great.", "Ptolemy I"),
    ("What is the capital of the country where the Taj Mahal is?", "New Delhi",
     "Taj Mahal country", "The Taj Mahal is an ivory-white marble mausoleum in Agra, India.", "Mumbai"),
    ("In what year did the man who shot the Chinese Emperor's killer die?", "1911",
     "assassin of the emperor", "No passage matched the query.", "1908"),
    ("Who was the first person to climb the highest mountain in Africa?", "Hans Meyer",
     "Kilimanjaro first ascent", "Kilimanjaro was first climbed in 1889 by Hans Meyer and Ludwig Purtscheller.", "Edmund Hillary"),
]


def _arith(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(2, 60)
    return f"What is {a} * {b} + {c}?", str(a * b + c), f"{a} * {b} + {c}"


def item(benchmark: str, index: int) -> dict[str, str]:
    """The benchmark item behind row `index` (the same for every system, so rows pair up)."""
    rng = random.Random(f"{benchmark}-{index}")
    if benchmark == "bamboogle":
        question, gold, *_ = QA[index % len(QA)]
    else:
        question, gold, _ = _arith(rng)
    return {"pid": str(index), "query": question + INSTRUCTION, "gold": gold}


def _turns(benchmark: str, index: int, system: str, fail_tools: bool) -> list[dict[str, Any]]:
    qrng = random.Random(f"{benchmark}-{index}")
    if benchmark == "bamboogle":
        _, _, search, passage, _ = QA[index % len(QA)]
        calls = [("wikipedia", json.dumps({"query": search}), passage, "Look up the fact the question hinges on.")]
    else:
        _, value, expression = _arith(qrng)
        calls = [("calculator", json.dumps({"expression": expression}), value, f"Compute {expression}.")]
    if fail_tools:
        calls.insert(0, ("python", json.dumps({"code": "print(x * 2)"}), "",
                         "Check the intermediate value with Python."))
    memory = []
    for turn, (tool, command, result, goal) in enumerate(calls, start=1):
        error = "NameError: name 'x' is not defined" if tool == "python" else None
        sub_goal = goal if system == "agentflow" else (
            f"Thought: {goal}\nAction: {tool}\nAction Input: {command}")
        memory.append({"turn": turn, "sub_goal": sub_goal, "tool_name": tool, "command": command,
                       "result": "" if error else result, "error": error})
    return memory


def eval_row(benchmark: str, system: str, index: int, seed: int = 0) -> dict[str, Any]:
    """One results row as the harness writes it (AgentFlow or ReAct), right or wrong by a seeded draw."""
    rng = random.Random(f"{seed}-{benchmark}-{system}-{index}")
    base = item(benchmark, index)
    right = rng.random() < (0.65 if system == "agentflow" else 0.45)
    fail_tools = rng.random() < 0.25
    memory = _turns(benchmark, index, system, fail_tools)
    wrong = QA[index % len(QA)][4] if benchmark == "bamboogle" else str(int(base["gold"]) + rng.randint(1, 9))
    answer = base["gold"] if right else wrong
    if system == "agentflow":
        prediction = f"Using the tool results, the answer is {answer}.\n<answer>{answer}</answer>"
    else:
        prediction = f"Thought: I know the final answer.\nFinal Answer: <answer>{answer}</answer>"
    row: dict[str, Any] = {
        **base,
        "prediction": prediction,
        "answer": answer,
        "score": 1.0 if right else 0.0,
        "turns": len(memory) + (1 if system == "react" else 0),
        "memory": memory,
        "tool_calls": [r["tool_name"] for r in memory],
        "tool_errors": sum(r["error"] is not None for r in memory),
        "latency_s": round(rng.uniform(0.8, 9.0), 3),
        "error": None,
    }
    if system == "agentflow":
        row["verdict"] = "STOP"
    if index % 17 == 16:  # now and then a run that raised: recorded with its error, scored 0
        row.update(prediction="", answer="", score=0.0, memory=[], tool_calls=[], tool_errors=0, turns=0,
                   error="TimeoutError: the run exceeded 300 s",
                   traceback="Traceback (most recent call last):\n  ...\nTimeoutError: the run exceeded 300 s")
    return row


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_eval_run(folder: Path, benchmark: str, system: str, n: int, *, seed: int = 0, max_turns: int = 3,
                   rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`<benchmark>__<system>__turns<T>.jsonl` and its summary (the harness's `summarize`); returns the rows."""
    from agentflow.evals import summarize

    rows = rows if rows is not None else [eval_row(benchmark, system, i, seed) for i in range(n)]
    name = f"{benchmark}__{system}__turns{max_turns}"
    write_rows(folder / f"{name}.jsonl", rows)
    config = {"benchmark": benchmark, "system": system, "models": {"default": MODEL, "planner": MODEL},
              "tools": ["calculator", "python", "wikipedia"], "scorer": benchmark}
    summary = summarize(rows, benchmark=benchmark, system=system, max_turns=max_turns, config=config)
    (folder / f"{name}.summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return rows


def write_eval_folder(folder: Path, n: int = 12, *, benchmarks=("bamboogle", "toolmix"),
                      systems=("agentflow", "react"), seed: int = 0, plots: bool = False) -> dict[str, list]:
    """An eval folder of every benchmark x system; `plots` adds results.md and the PNGs (the harness's)."""
    runs = {f"{b}/{s}": write_eval_run(folder, b, s, n, seed=seed) for b in benchmarks for s in systems}
    if plots:
        from agentflow.evals import write_report

        write_report(folder)
    return runs


def write_training_run(folder: Path, steps: int = 5, groups: int = 2, group_size: int = 4, *,
                       rollouts: bool = True, seed: int = 0) -> dict[str, list]:
    """A training run: `metrics.jsonl` with rising reward and, if `rollouts`, one line per graph run."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    metrics, runs = [], []
    for step in range(1, steps + 1):
        step_runs = []
        for q in range(groups):
            base = item("toolmix", step * groups + q)
            for g in range(group_size):
                reward = 1.0 if rng.random() < 0.2 + 0.6 * step / steps else 0.0
                memory = _turns("toolmix", step * groups + q, "agentflow", fail_tools=rng.random() < 0.2)
                turns = [{"turn": r["turn"], "sub_goal": r["sub_goal"], "tool": r["tool_name"], "command": r["command"],
                          "result": r["result"], "error": r["error"],
                          "verdict": "STOP" if i == len(memory) - 1 else "CONTINUE"} for i, r in enumerate(memory)]
                answer = base["gold"] if reward else "42"
                step_runs.append({"step": step, "query_index": q, "sample": g, "query": base["query"], "gold": base["gold"],
                                  "reward": reward, "answer": answer, "response": f"<answer>{answer}</answer>",
                                  "turns": turns})
        rewards = [r["reward"] for r in step_runs]
        tools = [t["tool"] for r in step_runs for t in r["turns"]]
        metrics.append({
            "step": step, "epoch": 0, "reward_mean": sum(rewards) / len(rewards),
            "accuracy": sum(r >= 1 for r in rewards) / len(rewards),
            "tool_error_rate": sum(t["error"] is not None for r in step_runs for t in r["turns"]) / max(len(tools), 1),
            **{f"tool_usage/{name}": tools.count(name) / len(tools) for name in sorted(set(tools))},
            "kl": 0.001 * step, "loss": None, "rollout_dtype": "float32",
        })
        runs += step_runs
    write_rows(folder / "metrics.jsonl", metrics)
    if rollouts:
        write_rows(folder / "rollouts.jsonl", runs)
    (folder / "config.yaml").write_text(f"model: {MODEL}\ngroup_size: {group_size}\nsteps: {steps}\n", encoding="utf-8")
    return {"metrics": metrics, "rollouts": runs if rollouts else []}
