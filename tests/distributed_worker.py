"""The per-process side of tests/test_trainer_distributed.py, run under `accelerate launch` with
2 CPU processes (gloo). Not a test module: each mode writes what the tests compare.

    updates TMP   the update scenarios (UPDATE_SCENARIOS): 2 optimizer steps on fixed samples
                  split between the ranks; writes each scenario's full weights and stats,
                  then starts a sharded run, saves step 1 and is SIGKILLed by the test in the
                  middle of writing step 2 (after the shards, during planner/).
    resume TMP    an uninterrupted 2-step sharded run, and the killed run resumed to step 2.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import first_letter_reward, full_weights, synthetic_samples, tiny_config  # noqa: E402

import agentflow.trainer.checkpoint as checkpoint  # noqa: E402
from agentflow.trainer import build_trainer  # noqa: E402
from agentflow.trainer.distributed import local_numel  # noqa: E402

# name -> (config overrides, which samples each rank trains on)
#   split: runs 0-1 (few tokens) on rank 0, runs 2-5 (many tokens) on rank 1
#   empty: rank 0 has no sample at all, rank 1 all 12 (3 micro-batches against 0)
UPDATE_SCENARIOS: dict[str, tuple[dict, str]] = {
    "ddp-token_mean-split": (dict(sharding="none", loss_aggregation="token_mean"), "split"),
    "ddp-sample_mean-empty": (dict(sharding="none", loss_aggregation="sample_mean"), "empty"),
    "fsdp-run_mean-split": (dict(sharding="fsdp", loss_aggregation="run_mean", beta=0.01), "split"),
    "fsdp-token_mean-empty": (dict(sharding="fsdp", loss_aggregation="token_mean"), "empty"),
}
UPDATE_CONFIG = dict(micro_batch_size=4, max_steps=2)  # 12 samples: 3 micro-batches in one process
SHARDED_RUN = dict(sharding="fsdp", max_steps=2, zero_variance_groups="keep", beta=0.01)


def rank_samples(split: str, rank: int) -> list:
    samples = synthetic_samples()
    if split == "empty":
        return samples if rank == 1 else []
    return [s for s in samples if (s.run_id[0] * 4 + s.run_id[1] >= 2) == (rank == 1)]


def two_updates(trainer, samples: list) -> list[dict]:
    """Two optimizer steps (update() is one step with mini_batches=1) on the same samples."""
    return [trainer.update(copy.deepcopy(samples)) for _ in range(2)]


def updates(tmp: Path) -> None:
    import os

    # torchrun starts the workers in their own sessions: the test kills them by these ids
    (tmp / f"pid-{os.environ['RANK']}").write_text(str(os.getpid()))
    for name, (overrides, split) in UPDATE_SCENARIOS.items():
        trainer = build_trainer(tiny_config(tmp, run_name=name, **UPDATE_CONFIG, **overrides), reward_fn=first_letter_reward)
        stats = two_updates(trainer, rank_samples(split, trainer.rank))
        result = {"weights": full_weights(trainer), "stats": stats, "plan": trainer.plan,
                  "local_params": local_numel(trainer.model),
                  "total_params": sum(p.numel() for p in trainer.policy.engine.model.parameters())}
        torch.save(result, tmp / f"{name}-{trainer.rank}.pt")
    killed = {**SHARDED_RUN, "max_steps": 1}
    trainer = build_trainer(tiny_config(tmp, run_name="killed", **killed), reward_fn=first_letter_reward)
    trainer.train()  # step 1, saved
    marker = tmp / "killed-marker"
    real = checkpoint.save_planner

    def slow(model, target, tokenizer=None):  # only the main process writes planner/, after the shards
        real(model, target, tokenizer)
        marker.write_text("writing step 2")
        time.sleep(600)

    checkpoint.save_planner = slow
    trainer.step_done = 2
    trainer.save()


def resume(tmp: Path) -> None:
    straight = build_trainer(tiny_config(tmp, run_name="straight", **SHARDED_RUN), reward_fn=first_letter_reward)
    straight.train()
    resumed = build_trainer(tiny_config(tmp, **SHARDED_RUN, resume_from=str(tmp / "runs" / "killed")),
                            reward_fn=first_letter_reward)
    step_done = resumed.step_done
    resumed.train()
    for name, trainer in (("straight", straight), ("resumed", resumed)):
        torch.save({"weights": full_weights(trainer), "step_done_at_start": step_done},
                   tmp / f"{name}-{trainer.rank}.pt")


if __name__ == "__main__":
    {"updates": updates, "resume": resume}[sys.argv[1]](Path(sys.argv[2]))
