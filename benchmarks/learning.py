"""Does Flow-GRPO make the planner better? ToolMix with the embedded SmolLM2-135M, CPU only.

    python benchmarks/learning.py                       # the full run (examples/learning_toolmix.yaml)
    python benchmarks/learning.py --train-minutes 20    # a shorter budget for both trainings
    python benchmarks/learning.py --quick --tiny        # seconds, random tiny model (the test)

1. evaluate the untrained planner on the held-out ToolMix test split (greedy, fixed seed);
2. train the planner with Flow-GRPO for at most `max_train_minutes` of wall clock;
3. evaluate the trained planner the same way, with the same frozen executor, verifier and
   generator (they never change: they decode with their own frozen copy of the model);
4. the paper's ablation on the same budget: reset the planner to its initial weights,
   roll out the untrained graph, keep the planner turns of successful runs and fine-tune
   on them offline (TRL SFTTrainer), then evaluate once more.

Prints one table (accuracy, accuracy and tool-choice ratios per question type, tool-call
error rate, mean turns for untrained / SFT / Flow-GRPO), writes PNG plots (reward and
tool-call error rate over training, tool usage before/after) and
`<output>/learning.json`, and prints that JSON as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agentflow.evals.stats import tool_error_rate  # noqa: E402
from agentflow.trainer import FlowGRPOConfig, build_trainer, read_metrics  # noqa: E402
from agentflow.trainer.sft import collect_successful_turns, sft_train, write_sft_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "learning_toolmix.yaml"
SYSTEMS = ("untrained", "sft", "flowgrpo")

# --quick: every stage runs, at sizes that take seconds (the suite's test of this script)
QUICK = dict(group_size=2, queries_per_step=2, max_steps=2, max_turns=1, max_new_tokens=6,
             module_max_new_tokens=4, sft_queries=2, micro_batch_size=4, save_every=100)


# --------------------------------------------------------------------------- evaluation
def evaluate(trainer, items: list[dict]) -> list[dict[str, Any]]:
    """One greedy run of the graph per item; a row per item with what the planner did."""
    return [
        {"pid": run.item.get("pid"), "type": run.item.get("type", "all"), "reward": run.reward,
         "turns": run.n_turns, "tool_errors": run.tool_errors, "tools": dict(run.tools),
         "failed": run.failed, "answer": run.answer}
        for run in trainer.greedy_runs(items)
    ]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, per-type accuracy and tool-choice ratios, tool-call error rate, mean turns."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_type[row["type"]].append(row)

    def tool_ratios(subset: list[dict]) -> dict[str, float]:
        calls: Counter = Counter()
        for row in subset:
            calls.update(row["tools"])
        total = sum(calls.values())
        return {tool: n / total for tool, n in sorted(calls.items())} if total else {}

    turns = sum(r["turns"] for r in rows)
    calls = sum(sum(r["tools"].values()) for r in rows)
    return {
        "accuracy": sum(r["reward"] >= 1.0 for r in rows) / max(len(rows), 1),
        "n": len(rows),
        "accuracy_by_type": {t: sum(r["reward"] >= 1.0 for r in sub) / len(sub) for t, sub in sorted(by_type.items())},
        "tool_ratio_by_type": {t: tool_ratios(sub) for t, sub in sorted(by_type.items())},
        "tool_ratio": tool_ratios(rows),
        "tool_error_rate": tool_error_rate(sum(r["tool_errors"] for r in rows), calls),
        "mean_turns": turns / max(len(rows), 1),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """One markdown table, a column per system."""
    names = [s for s in SYSTEMS if s in results]
    types = sorted({t for r in results.values() for t in r["accuracy_by_type"]})
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("accuracy", [f"{results[s]['accuracy']:.1%}" for s in names])
    for t in types:
        row(f"accuracy: {t}", [f"{results[s]['accuracy_by_type'].get(t, 0):.1%}" for s in names])
    for t in types:
        row(f"tool choice: {t}", [_ratios(results[s]["tool_ratio_by_type"].get(t, {})) for s in names])
    row("tool-call error rate", [f"{results[s]['tool_error_rate']:.1%}" for s in names])
    row("mean turns", [f"{results[s]['mean_turns']:.2f}" for s in names])
    return "\n".join(lines)


def _ratios(ratios: dict[str, float]) -> str:
    return ", ".join(f"{tool} {share:.0%}" for tool, share in sorted(ratios.items(), key=lambda kv: -kv[1])) or "-"


# --------------------------------------------------------------------------- plots
def plot(run_dir: Path, results: dict[str, dict[str, Any]], output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(run_dir)
    steps = [m["step"] for m in metrics]
    paths = []
    for key, label, name in [("reward_mean", "mean reward of the step's runs", "learning_reward.png"),
                             ("tool_error_rate", "tool-call error rate", "learning_tool_errors.png")]:
        values = [m[key] for m in metrics]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values, marker=".", alpha=0.5, label="per step")
        window = len(values) // 8
        if window > 1:  # a running mean once there are enough steps for one to mean something
            smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, label=f"mean of last {window}")
        ax.set_xlabel("Flow-GRPO step")
        ax.set_ylabel(label)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output / name, dpi=110)
        plt.close(fig)
        paths.append(output / name)

    names = [s for s in SYSTEMS if s in results]
    tools = sorted({t for s in names for t in results[s]["tool_ratio"]})
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(names), 1)
    for i, s in enumerate(names):
        ax.bar([x + i * width for x in range(len(tools))], [results[s]["tool_ratio"].get(t, 0) for t in tools],
               width=width, label=s)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(tools))], tools)
    ax.set_ylabel("share of tool calls (test split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "learning_tool_usage.png", dpi=110)
    plt.close(fig)
    paths.append(output / "learning_tool_usage.png")
    return paths


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="a FlowGRPOConfig YAML")
    p.add_argument("--train-minutes", type=float, default=None, help="override max_train_minutes (both trainings)")
    p.add_argument("--n-test", type=int, default=None, help="held-out items (default: the config's eval_limit)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results"), help="where learning.json and PNGs go")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"), help="where the training runs' checkpoints go")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every stage in seconds")
    p.add_argument("--tiny", action="store_true", help="a random tiny model instead of SmolLM2-135M")
    p.add_argument("--skip-sft", action="store_true", help="leave out the SFT ablation")
    args = p.parse_args(argv)

    data = FlowGRPOConfig.from_yaml(args.config).to_dict()
    data.update(output_dir=args.runs_dir, run_name=f"learning-{time.strftime('%Y%m%d-%H%M%S')}",
                eval_dataset=data.get("eval_dataset") or data["dataset"], eval_every=0)
    if args.quick:
        data.update(QUICK, max_train_minutes=None, eval_limit=min(args.n_test or 4, 4))
    if args.tiny:
        data["model"] = "tiny"
    if args.train_minutes is not None:
        data["max_train_minutes"] = args.train_minutes
    if args.n_test is not None:
        data["eval_limit"] = args.n_test
    config = FlowGRPOConfig.from_dict(data)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    trainer = build_trainer(config)
    test_items = trainer.eval_items
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    print(f"config: {json.dumps(config.to_dict())}", flush=True)
    print(f"held-out items: {len(test_items)} ({dict(Counter(i.get('type') for i in test_items))})", flush=True)

    results: dict[str, dict[str, Any]] = {}
    t = time.monotonic()
    results["untrained"] = summarize(evaluate(trainer, test_items))
    print(f"untrained: accuracy {results['untrained']['accuracy']:.1%} ({time.monotonic() - t:.0f}s)", flush=True)

    t = time.monotonic()
    run_dir = trainer.train()
    train_minutes = (time.monotonic() - t) / 60
    print(f"Flow-GRPO: {trainer.step_done} steps in {train_minutes:.1f} min -> {run_dir}", flush=True)
    t = time.monotonic()
    results["flowgrpo"] = summarize(evaluate(trainer, test_items))
    print(f"flowgrpo: accuracy {results['flowgrpo']['accuracy']:.1%} ({time.monotonic() - t:.0f}s)", flush=True)

    sft_minutes = sft_stats = None
    if not args.skip_sft:
        # The ablation starts from the same initial planner (an in-place load: the engine
        # sees the weight change and drops its prefix cache) and gets the same budget.
        trainer.model.load_state_dict(initial)
        t = time.monotonic()
        # half the budget collects successful turns, the other half is for fine-tuning on
        # them; the measured total is reported next to Flow-GRPO's
        deadline = t + 30 * config.max_train_minutes if config.max_train_minutes else None
        order = torch.randperm(len(trainer.train_items), generator=torch.Generator().manual_seed(config.seed))
        items = [trainer.train_items[int(i)] for i in order[: config.sft_queries]]
        turns, sft_stats = collect_successful_turns(config, trainer.graph, trainer.reward_fn, items, deadline=deadline)
        sft_dir = run_dir / "sft"
        sft_dir.mkdir(exist_ok=True)
        write_sft_data(sft_dir, turns, trainer.policy.tokenizer)
        if turns:
            model, sft_stats["train_loss"] = sft_train(trainer.model, trainer.policy.tokenizer, turns, config, sft_dir)
            trainer.policy.engine.model = model  # the same module, or its peft wrapper with LoRA
        sft_minutes = (time.monotonic() - t) / 60
        print(f"SFT: {sft_stats} in {sft_minutes:.1f} min", flush=True)
        results["sft"] = summarize(evaluate(trainer, test_items))
        print(f"sft: accuracy {results['sft']['accuracy']:.1%}", flush=True)

    print()
    print(table(results))
    plots = plot(run_dir, results, output)
    out = {
        "untrained_acc": results["untrained"]["accuracy"],
        "sft_acc": results["sft"]["accuracy"] if "sft" in results else None,
        "flowgrpo_acc": results["flowgrpo"]["accuracy"],
        "n_test": len(test_items),
        "train_minutes": round(train_minutes, 2),
        "sft_minutes": round(sft_minutes, 2) if sft_minutes is not None else None,
        "flowgrpo_steps": trainer.step_done,
        "sft_stats": sft_stats,
        "results": results,
        "plots": [str(p.relative_to(output)) for p in plots],
        "total_minutes": round((time.monotonic() - started) / 60, 2),
        "config": config.to_dict(),
    }
    (output / "learning.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
