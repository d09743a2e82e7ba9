"""Flow-GRPO learns the right way round, on the tiny model.

A random tiny model cannot be taught a vocabulary-wide property in a few steps, so the
test measures what an update must do: after Flow-GRPO updates on a real rollout batch
(reward 1 iff the planner's sub-goal starts with a letter a-m), the exact completions
of positively-advantaged runs gain log-probability and those of negatively-advantaged
runs lose it. A flipped gradient sign (or advantage sign) fails both assertions.
"""

from __future__ import annotations

import copy

import torch
from trainer_helpers import first_letter_reward, tiny_config

from agentflow.models import tiny_model
from agentflow.trainer import build_trainer, collect_rollouts
from agentflow.trainer.flow_grpo import _pad, build_samples, completion_logprobs


def _sequence_logprobs(trainer, samples) -> torch.Tensor:
    batch = _pad(samples, torch.device("cpu"))
    with torch.no_grad():
        logp, _ = completion_logprobs(trainer.model, batch)
    return (logp * batch["token_mask"]).sum(-1)


def test_update_moves_logprobs_with_advantage_sign(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, group_size=8, learning_rate=2e-3), reward_fn=first_letter_reward)
    groups = collect_rollouts(trainer.graph, trainer.train_items[:2], 8, first_letter_reward, max_concurrency=1, max_turns=1)
    samples, stats = build_samples(groups, trainer.config)
    assert stats["zero_variance_groups"] == 0 and samples
    advantages = torch.tensor([s.advantage for s in samples])
    # the sampling log-probs are what the trainer's forward computes (same tokens, same temperature)
    old = torch.tensor([sum(s.old_logprobs) for s in samples])
    before = _sequence_logprobs(trainer, samples)
    assert torch.allclose(before, old, atol=1e-3)
    metrics = trainer.update(copy.copy(samples))  # one on-policy optimizer step
    assert metrics["optimizer_steps"] == 1 and metrics["skipped_updates"] == 0
    change = _sequence_logprobs(trainer, samples) - before
    assert change[advantages > 0].mean() > 0.2, change
    assert change[advantages < 0].mean() < -0.2, change


def test_training_is_deterministic_with_seed(tmp_path):
    weights = []
    for name in ("a", "b"):
        trainer = build_trainer(tiny_config(tmp_path, run_name=name, max_steps=1), reward_fn=first_letter_reward)
        trainer.train()
        weights.append([p.detach().clone() for p in trainer.model.parameters()])
    assert all(torch.equal(x, y) for x, y in zip(*weights))
    initial = tiny_model(seed=0).parameters()  # an update happened, so equal weights are not just the start
    assert not all(torch.equal(x, y) for x, y in zip(weights[0], initial))
