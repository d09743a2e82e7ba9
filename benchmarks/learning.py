"""Does Flow-GRPO make the planner better? ToolMix with the embedded SmolLM2-135M, CPU only.

    python benchmarks/learning.py --seeds 0,1,2         # the full result (examples/learning_toolmix.yaml)
    python benchmarks/learning.py --seeds 0             # one seed; a later --seeds 0,1,2 keeps it
    python benchmarks/learning.py --seeds 0 --redo-sft 0  # seed 0's SFT stage again, its other results kept
    python benchmarks/learning.py --train-minutes 20    # cap Flow-GRPO at 20 min (SFT gets what it took)
    python benchmarks/learning.py --quick --tiny        # seconds, random tiny model (the test)

Per seed (the config's `seed` replaced: sampling, LoRA init and query order change):

1. evaluate the untrained planner on the held-out ToolMix test split (greedy, fixed seed);
2. train the planner with Flow-GRPO for `max_steps` steps (at most `max_train_minutes` of
   wall clock);
3. evaluate the trained planner the same way, with the same frozen executor, verifier and
   generator (they never change: they decode with their own frozen copy of the model);
4. the paper's ablation on the wall clock Flow-GRPO took: reset the planner to its initial weights,
   roll out the untrained graph, keep the planner turns of successful runs and fine-tune
   on them offline (TRL SFTTrainer), then evaluate once more.

Seeds run one at a time, each in its own process, and `<output>/learning.json` is
rewritten after each one, so a stop between seeds loses nothing: a rerun skips the seeds
already in the file (`--fresh` starts over). Within a seed, the entry after the Flow-GRPO
stage is kept in `<output>/learning.seed<N>.partial.json` until the seed is written, so a
stop in the SFT stage costs only that stage. Each seed's entry records the commit it was measured on, and
`sft_commit` where its SFT stage ran on another (a resumed seed, or `--redo-sft` after a fix
to that stage: it reruns the stage from the entry, as a resume does).

Prints one table per seed and one over the seeds (mean ± sd of accuracy overall and per
question type, the first tool chosen per question type, tool-call error rate, mean turns
for untrained / SFT / Flow-GRPO) and the result's goals, met or not; writes PNG plots
(reward and tool-call error rate over training per seed, the first-tool choice per
question type before and after — the paper's Fig. 5 — and tool usage) and
`learning.json`, and prints that JSON as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agentflow.evals.datasets import load_benchmark  # noqa: E402
from agentflow.evals.stats import tool_error_rate  # noqa: E402
from agentflow.trainer import FlowGRPOConfig, build_trainer, read_metrics  # noqa: E402
from agentflow.trainer.checkpoint import fresh_run_name  # noqa: E402
from agentflow.trainer.sft import collect_successful_turns, sft_train, write_sft_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "learning_toolmix.yaml"
SYSTEMS = ("untrained", "sft", "flowgrpo")
# what a seed's SFT stage writes into its entry (and --redo-sft replaces)
SFT_FIELDS = ("sft", "sft_minutes", "sft_stats", "sft_commit", "total_minutes")
# The result's goals: Flow-GRPO's gain over the untrained planner on every seed, its gain on
# look-ups and two-step questions (mean of the seeds: arithmetic alone can carry the overall
# gain), the share of questions whose first planner turn picks the right tool after training
# (mean), and Flow-GRPO above offline SFT on every seed.
GAIN_EVERY_SEED = 0.15
GAIN_BY_TYPE = {"lookup": 0.10, "two_step": 0.10}
RIGHT_FIRST_TOOL = {"lookup": 0.80, "arithmetic": 0.80}

# --quick: every stage runs, at sizes that take seconds (the suite's test of this script)
QUICK = dict(group_size=2, queries_per_step=2, max_steps=2, max_turns=1, max_new_tokens=6,
             module_max_new_tokens=4, sft_queries=2, micro_batch_size=4, save_every=100)


# --------------------------------------------------------------------------- evaluation
def evaluate(trainer, items: list[dict]) -> list[dict[str, Any]]:
    """One greedy run of the graph per item; a row per item with what the planner did."""
    return [
        {"pid": run.item.get("pid"), "type": run.item.get("type", "all"), "reward": run.reward,
         "turns": run.n_turns, "tool_errors": run.tool_errors, "tools": dict(run.tools),
         "failed": run.failed, "answer": run.answer, "first_tool": first_tool(run.memory)}
        for run in trainer.greedy_runs(items)
    ]


def first_tool(memory: list[dict[str, Any]]) -> str:
    """The tool the planner's first turn chose ("none": it named no tool it has)."""
    return (memory[0].get("tool_name") or "none") if memory else "none"


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

    def first_tools(subset: list[dict]) -> dict[str, float]:
        counts = Counter(row.get("first_tool", "none") for row in subset)
        return {tool: n / len(subset) for tool, n in sorted(counts.items())}

    turns = sum(r["turns"] for r in rows)
    calls = sum(sum(r["tools"].values()) for r in rows)
    return {
        "accuracy": sum(r["reward"] >= 1.0 for r in rows) / max(len(rows), 1),
        "n": len(rows),
        "accuracy_by_type": {t: sum(r["reward"] >= 1.0 for r in sub) / len(sub) for t, sub in sorted(by_type.items())},
        "tool_ratio_by_type": {t: tool_ratios(sub) for t, sub in sorted(by_type.items())},
        "tool_ratio": tool_ratios(rows),
        "first_tool_by_type": {t: first_tools(sub) for t, sub in sorted(by_type.items())},
        "tool_error_rate": tool_error_rate(sum(r["tool_errors"] for r in rows), calls),
        "mean_turns": turns / max(len(rows), 1),
    }


def aggregate(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean over seeds of each system's figures, and the sample sd (0 for one seed) of the
    ones the result is judged on: accuracy overall, per type, and the first-tool shares."""

    def mean_sd(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def mean_of_maps(maps: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
        keys = sorted({k for m in maps for k in m})
        pairs = {k: mean_sd([m.get(k, 0.0) for m in maps]) for k in keys}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}

    out: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        runs = [entry[system] for entry in entries if system in entry]
        if not runs:
            continue
        types = sorted({t for r in runs for t in r["accuracy_by_type"]})
        first = {t: mean_of_maps([r["first_tool_by_type"].get(t, {}) for r in runs]) for t in types}
        ratio_by_type = {t: mean_of_maps([r["tool_ratio_by_type"].get(t, {}) for r in runs])[0] for t in types}
        accuracy, accuracy_sd = mean_sd([r["accuracy"] for r in runs])
        by_type, by_type_sd = mean_of_maps([r["accuracy_by_type"] for r in runs])
        error_rate, error_rate_sd = mean_sd([r["tool_error_rate"] for r in runs])
        out[system] = {
            "seeds": len(runs),
            "accuracy": accuracy,
            "accuracy_sd": accuracy_sd,
            "n": runs[0]["n"],
            "accuracy_by_type": by_type,
            "accuracy_by_type_sd": by_type_sd,
            "tool_ratio_by_type": ratio_by_type,
            "tool_ratio": mean_of_maps([r["tool_ratio"] for r in runs])[0],
            "first_tool_by_type": {t: m for t, (m, _) in first.items()},
            "first_tool_by_type_sd": {t: sd for t, (_, sd) in first.items()},
            "tool_error_rate": error_rate,
            "tool_error_rate_sd": error_rate_sd,
            "mean_turns": statistics.fmean(r["mean_turns"] for r in runs),
        }
    return out


def right_first_tools(items: list[dict[str, Any]]) -> dict[str, str]:
    """The right first tool per question type, where every item of the type names the same
    one (ToolMix items carry it as `tool`)."""
    tools: dict[str, set] = defaultdict(set)
    for item in items:
        tools[item.get("type", "all")].add(item.get("tool"))
    return {t: next(iter(names)) for t, names in sorted(tools.items()) if len(names) == 1 and None not in names}


def goals(entries: list[dict[str, Any]], right: dict[str, str]) -> list[dict[str, Any]]:
    """Each goal of the result with what was measured and whether it is met (None: not
    measured, e.g. no SFT stage or no such question type); `right` is the right first tool
    per question type of the held-out items."""
    out = []

    def add(goal: str, unit: str, measured: dict[str, float], met: bool | None) -> None:
        out.append({"goal": goal, "unit": unit, "measured": {k: round(v, 3) for k, v in measured.items()}, "met": met})

    def reached(value: float, target: float) -> bool:
        # a 1e-9 slack: accuracies are k/n, and 0.45 - 0.30 is 0.1499999... in floating point
        return value >= target - 1e-9

    def on_the_mean(goal: str, unit: str, values: list[float], target: float) -> None:
        mean = statistics.fmean(values) if values else None
        add(goal, unit, {} if mean is None else {"mean": mean}, None if mean is None else reached(mean, target))

    gains = {str(e["seed"]): e["flowgrpo"]["accuracy"] - e["untrained"]["accuracy"] for e in entries}
    add(f"Flow-GRPO >= +{GAIN_EVERY_SEED * 100:.0f} points over untrained on every seed", "points", gains,
        all(reached(g, GAIN_EVERY_SEED) for g in gains.values()))
    for kind, target in GAIN_BY_TYPE.items():
        on_the_mean(f"{kind} >= +{target * 100:.0f} points over untrained, mean of seeds", "points",
                    [e["flowgrpo"]["accuracy_by_type"][kind] - e["untrained"]["accuracy_by_type"][kind]
                     for e in entries if kind in e["untrained"]["accuracy_by_type"]], target)
    for kind, target in RIGHT_FIRST_TOOL.items():
        on_the_mean(f"right first tool ({right.get(kind, '?')}) for >= {target:.0%} of {kind} after training, "
                    "mean of seeds", "share",
                    [e["flowgrpo"]["first_tool_by_type"][kind].get(right[kind], 0.0)
                     for e in entries if kind in right and kind in e["flowgrpo"]["first_tool_by_type"]], target)
    margins = {str(e["seed"]): e["flowgrpo"]["accuracy"] - e["sft"]["accuracy"] for e in entries if "sft" in e}
    add("Flow-GRPO > SFT on every seed", "points", margins,
        all(m > 0 for m in margins.values()) if len(margins) == len(entries) else None)
    return out


def goal_lines(checked: list[dict[str, Any]]) -> str:
    """One line per goal: met or not, and the figures (gains in signed points, shares in %)."""
    mark = {True: "met", False: "NOT met", None: "not measured"}
    lines = []
    for g in checked:
        figures = ", ".join(f"{'seed ' + k if k.isdigit() else k} "
                            + (f"{v:.1%}" if g["unit"] == "share" else f"{v * 100:+.1f} points")
                            for k, v in g["measured"].items())
        lines.append(f"- {g['goal']}: {mark[g['met']]} ({figures or '-'})")
    return "\n".join(lines)


def table(results: dict[str, dict[str, Any]]) -> str:
    """One markdown table, a column per system; `± sd` over seeds where `results` is an
    aggregate of several."""
    names = [s for s in SYSTEMS if s in results]
    types = sorted({t for r in results.values() for t in r["accuracy_by_type"]})
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def pct(value: float, sd: float | None) -> str:
        return f"{value:.1%} ± {sd:.1%}" if sd is not None else f"{value:.1%}"

    def spread(s: str, key: str, sub: str | None = None) -> float | None:
        if results[s].get("seeds", 1) < 2:
            return None
        sd = results[s][f"{key}_sd"]
        return sd if sub is None else sd.get(sub, 0.0)

    row("accuracy", [pct(results[s]["accuracy"], spread(s, "accuracy")) for s in names])
    for t in types:
        row(f"accuracy: {t}", [pct(results[s]["accuracy_by_type"].get(t, 0), spread(s, "accuracy_by_type", t))
                               for s in names])
    for t in types:
        row(f"first tool: {t}", [_ratios(results[s]["first_tool_by_type"].get(t, {})) for s in names])
    for t in types:
        row(f"tool calls: {t}", [_ratios(results[s]["tool_ratio_by_type"].get(t, {})) for s in names])
    row("tool-call error rate", [pct(results[s]["tool_error_rate"], spread(s, "tool_error_rate")) for s in names])
    row("mean turns", [f"{results[s]['mean_turns']:.2f}" for s in names])
    return "\n".join(lines)


def _ratios(ratios: dict[str, float]) -> str:
    return ", ".join(f"{tool} {share:.0%}" for tool, share in sorted(ratios.items(), key=lambda kv: -kv[1])) or "-"


# --------------------------------------------------------------------------- plots
def plot(run_dirs: dict[int, Path], results: dict[str, dict[str, Any]], output: Path) -> list[Path]:
    """Training curves (one line per seed) and tool choice before/after (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label, name in [("reward_mean", "mean reward of the step's runs", "learning_reward.png"),
                             ("tool_error_rate", "tool-call error rate", "learning_tool_errors.png")]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for seed, run_dir in sorted(run_dirs.items()):
            metrics = [m for m in read_metrics(run_dir) if key in m]
            if not metrics:  # a seed measured where its run folder no longer is
                continue
            steps, values = [m["step"] for m in metrics], [m[key] for m in metrics]
            window = max(len(values) // 8, 1)  # a running mean: one step is 16 runs, too noisy alone
            smooth = [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
            ax.plot(steps, smooth, label=f"seed {seed}" + (f" (mean of last {window})" if window > 1 else ""))
        ax.set_xlabel("Flow-GRPO step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(output / name, dpi=110)
        plt.close(fig)
        paths.append(output / name)

    # The paper's Fig. 5: which tool the planner picks first, per question type, before and
    # after training (bars: mean over seeds; whiskers: sd).
    names = [s for s in SYSTEMS if s in results]
    types = sorted({t for s in names for t in results[s]["first_tool_by_type"]})
    tools = sorted({tool for s in names for t in types for tool in results[s]["first_tool_by_type"][t]})
    fig, axes = plt.subplots(1, max(len(types), 1), figsize=(4 * max(len(types), 1), 3.5), sharey=True, squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, t in zip(axes[0], types):
        for i, s in enumerate(names):
            shares = results[s]["first_tool_by_type"].get(t, {})
            sds = results[s].get("first_tool_by_type_sd", {}).get(t, {})
            ax.bar([x + i * width for x in range(len(tools))], [shares.get(tool, 0) for tool in tools], width=width,
                   yerr=[sds.get(tool, 0) for tool in tools], capsize=2, label=s)
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(tools))], tools, rotation=20, fontsize=8)
        ax.set_title(t)
    axes[0][0].set_ylabel("share of runs: first tool chosen")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "learning_tool_choice.png", dpi=110)
    plt.close(fig)
    paths.append(output / "learning_tool_choice.png")
    return paths


# --------------------------------------------------------------------------- one seed
def commit() -> str:
    """The commit measured, with "-dirty" when the checkout has uncommitted changes outside
    benchmarks/results (where this script's own learning.json and plots change after every
    seed: counting them marked every seed after the first as dirty)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_seed(data: dict[str, Any], seed: int, skip_sft: bool, partial: Path, settings: dict[str, Any],
             resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Untrained, Flow-GRPO and offline-SFT results for one seed, on the same held-out items.

    The entry as it stands after the Flow-GRPO stage is written to `partial`, with the
    `settings` it was measured with; given that entry back (`resume`), the seed goes on with
    the SFT stage, which starts from the untrained planner anyway, so a crash there costs
    the SFT stage only."""
    config = FlowGRPOConfig.from_dict({**data, "seed": seed, "run_name": fresh_run_name(data["output_dir"], f"learning-seed{seed}")})
    trainer = build_trainer(config)
    test_items = trainer.eval_items
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    print(f"seed {seed}: held-out items: {len(test_items)} ({dict(Counter(i.get('type') for i in test_items))})", flush=True)

    started = time.monotonic()
    if resume is not None:
        entry, train_seconds = dict(resume), resume["train_minutes"] * 60
        entry["sft_commit"] = commit()
        run_dir = Path(entry["run_dir"])
        print(f"seed {seed}: resumed after its Flow-GRPO stage (untrained {entry['untrained']['accuracy']:.1%}, "
              f"flowgrpo {entry['flowgrpo']['accuracy']:.1%}, {run_dir})", flush=True)
    else:
        entry = {"seed": seed, "commit": commit()}
        t = time.monotonic()
        entry["untrained"] = summarize(evaluate(trainer, test_items))
        print(f"seed {seed} untrained: accuracy {entry['untrained']['accuracy']:.1%} ({time.monotonic() - t:.0f}s)", flush=True)

        t = time.monotonic()
        run_dir = trainer.train()
        train_seconds = time.monotonic() - t
        entry["train_minutes"] = round(train_seconds / 60, 2)
        entry["flowgrpo_steps"] = trainer.step_done
        print(f"seed {seed} Flow-GRPO: {trainer.step_done} steps in {entry['train_minutes']:.1f} min -> {run_dir}", flush=True)
        t = time.monotonic()
        entry["flowgrpo"] = summarize(evaluate(trainer, test_items))
        print(f"seed {seed} flowgrpo: accuracy {entry['flowgrpo']['accuracy']:.1%} ({time.monotonic() - t:.0f}s)", flush=True)
        entry["run_dir"] = str(run_dir)
        entry["flowgrpo_stage_minutes"] = round((time.monotonic() - started) / 60, 2)
        partial.write_text(json.dumps({"settings": settings, "entry": entry}, indent=1) + "\n")

    if not skip_sft:
        # The ablation starts from the same initial planner (an in-place load: the engine
        # sees the weight change and drops its prefix cache) and gets the wall clock
        # Flow-GRPO took: half of it collects successful turns, the other half is for
        # fine-tuning on them; the measured total is reported next to Flow-GRPO's.
        trainer.model.load_state_dict(initial)
        t = time.monotonic()
        deadline = t + train_seconds / 2
        order = torch.randperm(len(trainer.train_items), generator=torch.Generator().manual_seed(seed))
        items = [trainer.train_items[int(i)] for i in order[: config.sft_queries]]
        turns, sft_stats = collect_successful_turns(config, trainer.graph, trainer.reward_fn, items, deadline=deadline)
        sft_dir = run_dir / "sft"
        sft_dir.mkdir(exist_ok=True)
        write_sft_data(sft_dir, turns, trainer.policy.tokenizer)
        if turns:
            model, sft_stats["train_loss"] = sft_train(trainer.model, trainer.policy.tokenizer, turns, config, sft_dir)
            trainer.policy.engine.model = model  # the same module, or its peft wrapper with LoRA
        entry["sft_minutes"] = round((time.monotonic() - t) / 60, 2)
        entry["sft_stats"] = sft_stats
        print(f"seed {seed} SFT: {sft_stats} in {entry['sft_minutes']:.1f} min", flush=True)
        entry["sft"] = summarize(evaluate(trainer, test_items))
        print(f"seed {seed} sft: accuracy {entry['sft']['accuracy']:.1%}", flush=True)
    earlier = entry["flowgrpo_stage_minutes"] if resume is not None else 0.0  # before the stop
    entry["total_minutes"] = round(earlier + (time.monotonic() - started) / 60, 2)
    print(table({s: entry[s] for s in SYSTEMS if s in entry}), flush=True)
    return entry


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="a FlowGRPOConfig YAML")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, run one at a time (default: the config's seed)")
    p.add_argument("--fresh", action="store_true", help="discard the seeds already in learning.json")
    p.add_argument("--train-minutes", type=float, default=None, help="override max_train_minutes (the Flow-GRPO cap; SFT gets what Flow-GRPO took)")
    p.add_argument("--n-test", type=int, default=None, help="held-out items (default: the config's eval_limit)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results"), help="where learning.json and PNGs go")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"), help="where the training runs' checkpoints go")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every stage in seconds")
    p.add_argument("--tiny", action="store_true", help="a random tiny model instead of SmolLM2-135M")
    p.add_argument("--skip-sft", action="store_true", help="leave out the SFT ablation")
    p.add_argument("--redo-sft", default="", metavar="SEEDS",
                   help="comma-separated seeds of learning.json whose SFT stage runs again (the rest of each kept)")
    args = p.parse_args(argv)

    data = FlowGRPOConfig.from_yaml(args.config).to_dict()
    data.update(output_dir=args.runs_dir, eval_dataset=data.get("eval_dataset") or data["dataset"], eval_every=0)
    if args.quick:
        data.update(QUICK, max_train_minutes=None, eval_limit=min(args.n_test or 4, 4))
    if args.tiny:
        data["model"] = "tiny"
    if args.train_minutes is not None:
        data["max_train_minutes"] = args.train_minutes
    if args.n_test is not None:
        data["eval_limit"] = args.n_test
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [data["seed"]]
    redo = {int(s) for s in args.redo_sft.split(",") if s}
    if not redo <= set(seeds) or (redo and args.skip_sft):
        p.error("--redo-sft takes seeds among --seeds, without --skip-sft")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "learning.json"
    started = time.monotonic()

    # Resume: seeds measured earlier with the same settings are kept, not rerun. The
    # settings are the config without the seed and run name (they differ per seed).
    settings = {k: v for k, v in FlowGRPOConfig.from_dict(data).to_dict().items() if k not in ("seed", "run_name")}
    done: list[dict[str, Any]] = []
    if path.exists() and not args.fresh:
        previous = json.loads(path.read_text())
        if previous.get("seeds") and previous.get("config") != settings:
            raise SystemExit(f"{path} holds seeds measured with other settings; rerun with --fresh to replace them, "
                             "or --output elsewhere")
        done = previous.get("seeds", [])
    print(f"config: {json.dumps(settings)}", flush=True)

    todo = [seed for seed in seeds if seed in redo or all(e["seed"] != seed for e in done)]
    # Several seeds to measure: each in its own process. One seed peaks near 17 GB on the
    # 135M (rollouts, the update's full-vocabulary logits, SFT), and what one seed's process
    # held was not all returned before the next began: a second seed in the same process
    # was killed for memory at 23.7 GB on a 24 GB machine.
    isolate = len(todo) > 1
    if isolate and args.fresh:
        path.unlink(missing_ok=True)
        for seed in todo:
            (output / f"learning.seed{seed}.partial.json").unlink(missing_ok=True)

    out = None
    for seed in seeds:
        kept = next((e for e in done if e["seed"] == seed), None)
        if seed not in todo:
            print(f"seed {seed}: already in {path} (commit {kept['commit']}), kept", flush=True)
            continue
        if isolate:
            rc = subprocess.run([sys.executable, "-u", __file__, *seed_argv(args, seed, redo)]).returncode
            if rc != 0:
                raise SystemExit(f"seed {seed}: its process ended with exit code {rc}; the seeds measured before it "
                                 f"are in {path} and a rerun goes on from there")
            continue
        partial = output / f"learning.seed{seed}.partial.json"
        resume = None
        if kept is not None:  # --redo-sft: its SFT stage again, from its entry
            resume = {k: v for k, v in kept.items() if k not in SFT_FIELDS}
            print(f"seed {seed}: its SFT stage again (measured at commit {kept.get('sft_commit', kept['commit'])})",
                  flush=True)
        elif partial.exists() and not args.fresh:
            # a seed that stopped after its Flow-GRPO stage, with these settings, goes on from there
            saved = json.loads(partial.read_text())
            if saved["settings"] == settings and saved["entry"]["seed"] == seed:
                resume = saved["entry"]
        entry = run_seed(data, seed, args.skip_sft, partial, settings, resume)
        done = sorted([*(e for e in done if e["seed"] != seed), entry], key=lambda e: e["seed"])
        out = write_result(path, done, settings)
        partial.unlink(missing_ok=True)
        print(f"seed {seed}: written to {path} ({round((time.monotonic() - started) / 60, 1)} min so far)", flush=True)

    if isolate:  # the seed processes wrote the file
        done = json.loads(path.read_text())["seeds"]
    if out is None:  # measured before or by the seed processes: the summary of the file as it is
        out = write_result(path, done, settings)
    print()
    print(f"over seeds {[e['seed'] for e in done]} (mean ± sd):")
    print(table(out["results"]))
    print(f"goals over seeds {[e['seed'] for e in done]}:")
    print(goal_lines(out["goals"]))
    print(json.dumps(out))
    return out


def seed_argv(args: argparse.Namespace, seed: int, redo: set[int]) -> list[str]:
    """The command line that measures `seed` alone with these arguments."""
    argv = ["--config", args.config, "--output", args.output, "--runs-dir", args.runs_dir, "--seeds", str(seed)]
    if args.train_minutes is not None:
        argv += ["--train-minutes", str(args.train_minutes)]
    if args.n_test is not None:
        argv += ["--n-test", str(args.n_test)]
    argv += [flag for flag, on in (("--quick", args.quick), ("--tiny", args.tiny), ("--skip-sft", args.skip_sft)) if on]
    return argv + (["--redo-sft", str(seed)] if seed in redo else [])


def write_result(path: Path, entries: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """learning.json over the seeds measured so far, and its plots; rewritten after each seed."""
    held_out = load_benchmark(settings["eval_dataset"], settings["eval_split"], settings["eval_limit"])
    results = aggregate(entries)
    plots = plot({e["seed"]: Path(e["run_dir"]) for e in entries}, results, path.parent)

    def mean_of(key: str) -> float | None:
        values = [e[key] for e in entries if e.get(key) is not None]
        return round(statistics.fmean(values), 2) if values else None

    out = {
        # the first fields are the mean over seeds, under the names one seed used to have
        "untrained_acc": results["untrained"]["accuracy"],
        "sft_acc": results["sft"]["accuracy"] if "sft" in results else None,
        "flowgrpo_acc": results["flowgrpo"]["accuracy"],
        "n_test": results["untrained"]["n"],
        "train_minutes": mean_of("train_minutes"),
        "sft_minutes": mean_of("sft_minutes"),
        "flowgrpo_steps": mean_of("flowgrpo_steps"),
        "results": results,
        "plots": [str(p.relative_to(path.parent)) for p in plots],
        "commits": sorted({e["commit"] for e in entries}),
        "sft_stats": [e.get("sft_stats") for e in entries],
        "total_minutes": round(sum(e["total_minutes"] for e in entries), 2),
        "goals": goals(entries, right_first_tools(list(held_out))),
        "config": settings,
        "seeds": entries,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
