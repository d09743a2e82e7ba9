"""The offline SFT ablation: fine-tune the planner on its own successful turns.

Roll out the graph (same models, tools, reward as Flow-GRPO), keep the planner turns of
runs with reward 1, and train on them with TRL's `SFTTrainer`, loss on the planner's
completion only. The dataset is pre-tokenised (`input_ids` = the exact prompt ids plus
the exact sampled completion ids, `completion_mask` marking the completion), which TRL
1.16 turns into labels with -100 on the prompt when `completion_only_loss=True`; the
text is never re-tokenised, so SFT and Flow-GRPO train on the very same tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentflow.models import bf16_is_fast, mark_weights_updated
from agentflow.trainer.build import JudgeReward, build_graph_and_models, config_reward, load_datasets, make_reward
from agentflow.trainer.checkpoint import fresh_run_name, save_planner
from agentflow.trainer.config import FlowGRPOConfig
from agentflow.trainer.rollout import collect_rollouts


def collect_successful_turns(
    config: FlowGRPOConfig, graph: Any, reward_fn: Any, items: list[dict], deadline: float | None = None
) -> tuple[list[dict], dict]:
    """Planner turns of runs with reward >= 1 (duplicates dropped), and collection stats.

    `deadline` (a `time.monotonic()` value): no new batch of queries starts after it, so
    the ablation can be given the same wall-clock budget as a Flow-GRPO run.
    """
    turns: dict[tuple, dict] = {}
    runs = successes = 0
    for start in range(0, len(items), config.queries_per_step):
        if deadline is not None and time.monotonic() >= deadline:
            break
        chunk = items[start : start + config.queries_per_step]
        groups = collect_rollouts(graph, chunk, config.group_size, reward_fn, node=config.planner_node,
                                  max_concurrency=config.max_concurrency, max_turns=config.max_turns,
                                  max_seconds=config.run_timeout_s)
        for group in groups:
            for run in group:
                runs += 1
                if run.reward < 1.0:
                    continue
                successes += 1
                for turn in run.turns:
                    key = (tuple(turn.prompt_ids), tuple(turn.completion_ids))
                    turns.setdefault(key, {"prompt_ids": turn.prompt_ids, "completion_ids": turn.completion_ids,
                                           "pid": run.item.get("pid")})
    return list(turns.values()), {"runs": runs, "successful_runs": successes, "turns": len(turns)}


def sft_train(model: Any, tokenizer: Any, turns: list[dict], config: FlowGRPOConfig, output_dir: Path) -> tuple[Any, float]:
    """Fine-tune `model` on planner turns (loss on the completion only); returns (trained model, loss).

    Full fine-tuning updates `model` in place; with `config.lora` a model that has no
    adapter yet gets one (TRL wraps it) and the returned model is the peft model.
    """
    from trl import SFTConfig, SFTTrainer
    from datasets import Dataset

    dataset = Dataset.from_list([
        {"input_ids": t["prompt_ids"] + t["completion_ids"],
         "completion_mask": [0] * len(t["prompt_ids"]) + [1] * len(t["completion_ids"])}
        for t in turns
    ])
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.sft_epochs,
        learning_rate=config.learning_rate,
        # One sequence per forward, `micro_batch_size` of them per optimizer step (the
        # Trainer averages the loss over all their completion tokens, as one batch would):
        # TRL computes logits over the whole vocabulary at every position, prompt included,
        # so a batch of 8 ~600-token turns of a 49k-vocabulary model held ~20 GB here.
        per_device_train_batch_size=1,
        gradient_accumulation_steps=config.micro_batch_size,
        completion_only_loss=True,
        max_length=None,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=config.bf16_autocast and bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu"),
    )
    wants_adapter = config.lora and not hasattr(model, "peft_config")
    peft_config = config.lora_config() if wants_adapter else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    result = trainer.train()
    # With bf16 the Trainer's accelerator patched the model's forward to run under autocast;
    # the model goes back without that patch, so later forwards compute in its own dtype.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.eval()
    # The Trainer's fused AdamW writes without bumping the parameters' version counters:
    # without this, an engine over this model goes on decoding the weights SFT started from.
    mark_weights_updated(model)
    return model, result.training_loss


def sft_from_config(path_or_config: str | Path | dict[str, Any] | FlowGRPOConfig) -> Path:
    """Collect successful planner turns, SFT the planner on them; returns the run directory.

    Uses the Flow-GRPO config: `sft_queries` queries x `group_size` runs are collected,
    then `sft_epochs` epochs at `learning_rate`, `micro_batch_size` per device, LoRA if
    `lora`. Writes `sft_data.jsonl` (ids and decoded text, for inspection), `sft_stats.json`
    and the tuned weights in `planner/`.
    """
    config = FlowGRPOConfig.load(path_or_config)
    run_dir = Path(config.output_dir) / (config.run_name or fresh_run_name(config.output_dir, "sft"))
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train, _ = load_datasets(config)
    graph, policy, _ = build_graph_and_models(config)
    order = np.random.default_rng(config.seed).permutation(len(train))[: config.sft_queries]
    items = [dict(train[int(i)]) for i in order]
    # reward: judge needs the whole config (judge_model) and caches its verdicts in the run dir
    reward = make_reward(config.reward) if config.reward != "judge" else config_reward(config)
    if isinstance(reward, JudgeReward):
        reward.use_cache(run_dir)
    turns, stats = collect_successful_turns(config, graph, reward, items)
    write_sft_data(run_dir, turns, policy.tokenizer)
    if not turns:
        (run_dir / "sft_stats.json").write_text(json.dumps(stats, indent=2))
        raise RuntimeError(f"no successful run among {stats['runs']}: nothing to fine-tune on (see {run_dir})")
    model, stats["train_loss"] = sft_train(policy.engine.model, policy.tokenizer, turns, config, run_dir / "sft")
    save_planner(model, run_dir / "planner", policy.tokenizer)
    (run_dir / "sft_stats.json").write_text(json.dumps(stats, indent=2))
    return run_dir


def write_sft_data(run_dir: Path, turns: list[dict], tokenizer: Any) -> None:
    """The SFT data with decoded text beside the ids, for inspection."""
    with (run_dir / "sft_data.jsonl").open("w", encoding="utf-8") as f:
        for t in turns:
            text = {"prompt": tokenizer.decode(t["prompt_ids"]), "completion": tokenizer.decode(t["completion_ids"])}
            f.write(json.dumps({**t, **text}) + "\n")
