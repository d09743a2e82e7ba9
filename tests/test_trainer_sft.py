"""The offline SFT ablation: successful planner turns -> TRL SFTTrainer, completion-only loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trainer_helpers import tiny_config

import agentflow.trainer.sft as sft
from agentflow.evals import load_benchmark
from agentflow.models import tiny_model
from agentflow.trainer.checkpoint import load_planner
from agentflow.trainer import sft_from_config
from tests.conftest import reference_logprobs


def test_sft_trains_on_successful_planner_turns(tmp_path, monkeypatch):
    # every run succeeds, except those of one query: its turns must not be in the data
    excluded = load_benchmark("toolmix", split="train", limit=1)[0]["pid"]
    monkeypatch.setattr(sft, "make_reward", lambda name: lambda state, item: float(item["pid"] != excluded))
    config = tiny_config(tmp_path, sft_queries=3, group_size=2, dataset_limit=3, learning_rate=1e-3)
    run_dir = sft_from_config(config)
    stats = json.loads((run_dir / "sft_stats.json").read_text())
    assert stats["runs"] == 6 and stats["successful_runs"] == 4 and stats["turns"] >= 1
    rows = [json.loads(line) for line in (run_dir / "sft_data.jsonl").read_text().splitlines()]
    assert len(rows) == stats["turns"]
    assert all(r["pid"] != excluded and r["completion_ids"] for r in rows)
    assert math.isfinite(stats["train_loss"])
    tuned, initial = tiny_model(seed=0), tiny_model(seed=0)  # the weights training started from
    load_planner(tuned, run_dir / "planner")
    assert not all(torch.equal(a, b) for a, b in zip(tuned.parameters(), initial.parameters()))  # SFT moved them


def test_sft_without_successes_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "make_reward", lambda name: lambda state, item: 0.0)
    with pytest.raises(RuntimeError, match="no successful run"):
        sft_from_config(tiny_config(tmp_path, sft_queries=1, group_size=2))


def test_the_engine_decodes_what_sft_trained(tmp_path):
    """After `sft_train` (the HF Trainer's fused AdamW) the planner's engine decodes the tuned
    weights, as `benchmarks/learning.py` evaluates the SFT ablation through it: greedy
    log-probs equal the tuned model's own forward, which runs in fp32 again (not under the
    Trainer's bf16 autocast). The engine once went on decoding the weights SFT started
    from, so the ablation scored the untrained planner."""
    from agentflow.models import SamplingParams
    from agentflow.trainer import FlowGRPOConfig, build_trainer

    config = FlowGRPOConfig.from_dict(tiny_config(tmp_path, lora=True, learning_rate=5e-2, micro_batch_size=2))
    trainer = build_trainer(config)
    engine = trainer.policy.engine
    prompt = list(range(100, 140))
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(prompt, greedy)
    turns = [{"prompt_ids": prompt, "completion_ids": [7, 8, 9, 10, 11, 12]}] * 4
    model, _ = sft.sft_train(trainer.model, trainer.policy.tokenizer, turns, config, tmp_path / "sft")
    assert model is trainer.model  # the policy already has its adapter: trained in place
    after = engine.generate(prompt, greedy)
    assert after.logprobs == pytest.approx(reference_logprobs(model, prompt, after.completion_ids), abs=1e-4)
    assert after.logprobs != pytest.approx(before.logprobs, abs=1e-4) or after.completion_ids != before.completion_ids

