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


def synthetic_samples(seed: int = 0, runs: int = 6, turns: int = 2) -> list:
    """Planner turns with fixed random tokens, sampling log-probs and per-run advantages, so
    that an update can be replayed exactly by 1 or 2 processes (rollouts differ by rank).
    Lengths vary per run, so runs 0-1 and runs 2-5 hold different numbers of tokens: a
    per-process normalisation would weigh them differently from the global one."""
    import random

    from agentflow.trainer.flow_grpo import Sample

    rng = random.Random(seed)
    samples = []
    for run in range(runs):
        advantage = rng.choice([-1, 1]) * rng.uniform(0.5, 1.5)
        for _ in range(turns):
            n = rng.randint(1, 3) if run < 2 else rng.randint(4, 7)
            samples.append(Sample(
                prompt_ids=[rng.randrange(49152) for _ in range(rng.randint(3, 9))],
                completion_ids=[rng.randrange(49152) for _ in range(n)],
                old_logprobs=[rng.uniform(-11.5, -10.0) for _ in range(n)],
                temperature=0.7, advantage=advantage, run_id=(run // 4, run % 4),
            ))
    return samples


def full_weights(trainer) -> dict:
    """The planner's full weights: the rollout engine's copy (gathered after every optimizer
    step when the update is sharded), else the trained module itself."""
    model = trainer.policy.engine.model if trainer.sharded else trainer.model
    return {name: t.detach().clone() for name, t in model.state_dict().items()}
