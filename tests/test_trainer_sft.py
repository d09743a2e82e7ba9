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
