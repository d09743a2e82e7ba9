"""Where does the ToolMix agent fail? One failure table per question type.

    python benchmarks/failures.py                          # untrained planner, 100 held-out items
    python benchmarks/failures.py --n-test 40              # the first 40 held-out items
    python benchmarks/failures.py --checkpoint RUN_DIR     # a trained planner (its latest checkpoint)
    python benchmarks/failures.py --eval-dir DIR           # classify rows written earlier (no model)
    python benchmarks/failures.py --rollouts RUN_DIR --last-steps 5   # a training run's sampled runs
    python benchmarks/failures.py --quick --tiny           # seconds, random tiny model (the test)

The system is built exactly as benchmarks/learning.py builds it (examples/learning_toolmix.yaml:
SmolLM2-135M in all four modules, calculator and local_search, 2 turns) and run greedily
on the held-out ToolMix items. Each run is written as an eval row (docs/design.md §8,
plus the item's `type` and needed `tools`) to `<output>/toolmix__<system>__turns<N>.jsonl`,
so `agentflow view <output>` shows the trajectories; then every failed run (score 0) is
classified by `agentflow.evals.failures` (the rules are documented there) and the script
prints, per question type, the count and share of each failure class and the planner's
first-tool choice, and writes `<output>/failures.json`. `--rollouts` classifies a training
run's `rollouts.jsonl` instead (sampled runs, docs/design.md §8) into `RUN_DIR/failures.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentflow.evals.failures import failure_report, format_report, needed_tools  # noqa: E402
from agentflow.evals.toolmix import make_toolmix  # noqa: E402
from agentflow.evals.viewer import parse_run_name, read_jsonl  # noqa: E402
from agentflow.trainer import FlowGRPOConfig, build_trainer  # noqa: E402
from agentflow.trainer.rollout import RunResult, read_rollouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "learning_toolmix.yaml"
QUICK = dict(max_new_tokens=6, module_max_new_tokens=4)


def eval_row(run: RunResult) -> dict[str, Any]:
    """A graph run as an `agentflow eval` row (docs/design.md §8), plus the item's type and
    needed tools, which the classifier reads."""
    item = run.item
    return {
        "pid": item.get("pid"),
        "type": item.get("type"),
        "tools_needed": needed_tools(item),
        "query": item["query"],
        "gold": item["answer"],
        "prediction": run.response,
        "answer": run.answer,
        "score": run.reward,
        "turns": run.n_turns,
        "verdict": run.verdict,
        "memory": run.memory,
        "tool_calls": [record.get("tool_name") or "" for record in run.memory],
        "tool_errors": run.tool_errors,
        "error": run.error,
    }


def evaluate(config: FlowGRPOConfig, output: Path, system: str) -> Path:
    """Run the system greedily on the held-out items; write one eval row per item."""
    with tempfile.TemporaryDirectory() as runs_dir:  # the trainer wants a run dir; nothing is trained
        trainer = build_trainer(FlowGRPOConfig.from_dict({**config.to_dict(), "output_dir": runs_dir}))
        items = trainer.eval_items
        print(f"evaluating {system} on {len(items)} held-out items ...", flush=True)
        start = time.monotonic()
        runs = trainer.greedy_runs(items)
        print(f"done in {time.monotonic() - start:.0f}s", flush=True)
    path = output / f"toolmix__{system}__turns{config.max_turns}.jsonl"
    path.write_text("".join(json.dumps(eval_row(run), ensure_ascii=False, default=str) + "\n" for run in runs),
                    encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="a FlowGRPOConfig YAML (as benchmarks/learning.py)")
    p.add_argument("--n-test", type=int, default=None, help="held-out items (default: the config's eval_limit)")
    p.add_argument("--checkpoint", default=None,
                   help="a training run dir: evaluate its latest checkpoint's planner, built as that run's config says")
    p.add_argument("--eval-dir", default=None, help="classify the rows of toolmix__*.jsonl files here instead of running")
    p.add_argument("--rollouts", default=None, help="classify this training run's rollouts.jsonl instead of running")
    p.add_argument("--last-steps", type=int, default=None, help="with --rollouts: only the last N logged steps")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "failures"), help="rows and failures.json")
    p.add_argument("--quick", action="store_true", help="short generations: seconds with --tiny")
    p.add_argument("--tiny", action="store_true", help="a random tiny model instead of SmolLM2-135M")
    args = p.parse_args(argv)

    config = FlowGRPOConfig.from_yaml(args.config).to_dict()
    if args.checkpoint:
        # the trained planner needs the model, tools and LoRA layout it was trained with;
        # the held-out items stay those of --config
        trained = FlowGRPOConfig.from_yaml(Path(args.checkpoint) / "config.yaml").to_dict()
        config = {**trained, **{k: config[k] for k in ("eval_dataset", "eval_split", "eval_limit")},
                  "resume_from": args.checkpoint}
    config.update(eval_dataset=config.get("eval_dataset") or config["dataset"], eval_every=0, run_name="failures")
    if args.n_test is not None:
        config["eval_limit"] = args.n_test
    if args.quick:
        config.update(QUICK, eval_limit=min(args.n_test or 6, 6))
    if args.tiny:
        config["model"] = "tiny"
    max_turns = int(config["max_turns"])

    sources: list[tuple[str, list[dict[str, Any]], int]] = []  # (name, rows, turn budget)
    if args.rollouts:
        output = Path(args.rollouts)
        rows = read_rollouts(output)
        if not rows:
            raise SystemExit(f"{output}: no rollouts.jsonl rows")
        if args.last_steps:
            last = max(row["step"] for row in rows)
            rows = [row for row in rows if row["step"] > last - args.last_steps]
        steps = sorted({row["step"] for row in rows})
        run_turns = FlowGRPOConfig.from_yaml(output / "config.yaml").max_turns
        sources.append((f"rollouts steps {steps[0]}-{steps[-1]}", rows, run_turns))
    else:
        if args.eval_dir:
            output = Path(args.eval_dir)
            files = sorted(output.glob("toolmix__*.jsonl"))
            if not files:
                raise SystemExit(f"{output}: no toolmix__*.jsonl eval rows")
        else:
            output = Path(args.output)
            output.mkdir(parents=True, exist_ok=True)
            system = "trained" if args.checkpoint else "untrained"
            files = [evaluate(FlowGRPOConfig.from_dict(config), output, system)]
        sources += [(path.stem, read_jsonl(path), parse_run_name(path.stem)[2] or max_turns) for path in files]

    suite = make_toolmix()
    items = {item["pid"]: item for item in suite.train + suite.test}
    reports: dict[str, Any] = {}
    for name, rows, turns in sources:
        # `agentflow eval` rows carry no type and rollout rows no needed tools: take them from the item
        rows = [{"type": items[row["pid"]]["type"], "tools_needed": items[row["pid"]]["tools"], **row} for row in rows]
        report = failure_report(rows, max_turns=turns)
        reports[name] = report
        print(f"\n## {name} ({len(rows)} runs)\n")
        print(format_report(report))
    (output / "failures.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return reports


if __name__ == "__main__":
    main()
