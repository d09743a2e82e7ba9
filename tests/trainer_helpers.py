"""Shared settings for the trainer tests: the random tiny model, tiny sizes, no tool calls."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = dict(
    model="tiny",
    dataset="toolmix",
    dataset_limit=8,
    group_size=4,
    queries_per_step=2,
    max_steps=2,
    max_turns=1,
    max_new_tokens=4,
    module_max_new_tokens=2,
    learning_rate=1e-3,
    beta=0.0,
    micro_batch_size=8,
    max_concurrency=1,  # sequential runs: the engines' seed streams are drawn in a fixed order
    save_every=1,
    tensorboard=False,
)

REWARDED_LETTERS = "abcdefghijklm"


def first_letter_reward(state: Any, item: Any) -> float:
    """1 iff the planner's first sub-goal starts with a letter a-m: a property of the
    planner's first completion tokens, which even a random tiny model hits ~1/4 of the time."""
    memory = state.get("memory") or []
    return float(bool(memory) and memory[0]["sub_goal"][:1].lower() in REWARDED_LETTERS)


def tiny_config(tmp_path, **overrides: Any) -> dict[str, Any]:
    return {**TINY, "output_dir": str(tmp_path / "runs"), "run_name": "run", **overrides}
