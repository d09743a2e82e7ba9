"""One Flow-GRPO step under `accelerate launch` with 2 CPU processes (gloo): each rank rolls
out its shard of queries, gradients are all-reduced, both ranks end with identical weights,
and rank 0 logs every rank's runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from agentflow.models import tiny_model
from agentflow.trainer import read_metrics
from agentflow.trainer.rollout import read_rollouts

_WORKER = """
import sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from agentflow.trainer import build_trainer
from trainer_helpers import first_letter_reward, tiny_config
trainer = build_trainer(tiny_config(Path({tmp!r}), max_steps=1, zero_variance_groups="keep"), reward_fn=first_letter_reward)
trainer.train()
torch.save([p.detach() for p in trainer.model.parameters()], Path({tmp!r}) / f"weights-{{trainer.rank}}.pt")
"""


def test_two_process_step_keeps_ranks_identical(tmp_path):
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate launcher not installed")
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))))
    # `--cpu` would start a single process; `--multi_gpu` starts torchrun workers, which
    # fall back to the CPU/gloo backend when there is no GPU (the trainer asks for cpu=True).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
        check=True, env=env, timeout=300,
    )
    rank0, rank1 = (torch.load(tmp_path / f"weights-{r}.pt") for r in (0, 1))
    initial = list(tiny_model(seed=0).parameters())
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    assert not all(torch.equal(a, b.detach()) for a, b in zip(rank0, initial))  # an update happened
    (metrics,) = read_metrics(tmp_path / "runs" / "run")
    assert metrics["processes"] == 2 and metrics["runs"] == 8  # both ranks' runs counted
    rollouts = read_rollouts(tmp_path / "runs" / "run")  # gathered to rank 0, written once
    assert sorted((r["query_index"], r["sample"]) for r in rollouts) == [(q, g) for q in (0, 1) for g in range(4)]
