"""Flow-GRPO under `accelerate launch` with 2 CPU processes (gloo), docs/design.md §3
"Distributed update":

- one DDP step: each rank rolls out its shard of queries, both ranks end with identical
  weights, rank 0 logs every rank's runs;
- DDP and FSDP2: two optimizer steps over a global batch split between the ranks (evenly
  by run, or all on one rank and none on the other) give the weights, loss and gradient
  norm of one process over the whole batch; under FSDP2 each rank holds half the planner;
- a sharded run SIGKILLed while writing a checkpoint keeps the previous one, and resumed
  under 2 processes it ends where an uninterrupted run ends.

The 2-process sides live in tests/distributed_worker.py; the 1-process references run here."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import first_letter_reward, full_weights, synthetic_samples, tiny_config

from agentflow.models import tiny_model
from agentflow.trainer import build_trainer, latest_checkpoint, read_metrics
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


DDP_CPU = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "ddp_cpu.yaml"


def _launch_command(*args: str) -> list[str]:
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        if shutil.which("accelerate") is None:
            pytest.skip("accelerate launcher not installed")
        launcher = Path(shutil.which("accelerate"))
    # The shipped launch config, so that it is what the tests exercise: 2 torchrun workers
    # that fall back to the CPU and gloo without a GPU (the file says why it names MULTI_GPU).
    return [str(launcher), "launch", "--config_file", str(DDP_CPU), "--main_process_port", str(_free_port()), *args]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_process_step_keeps_ranks_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))))
    subprocess.run(_launch_command(str(script)), check=True, env=_ENV, timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"weights-{r}.pt") for r in (0, 1))
    initial = list(tiny_model(seed=0).parameters())
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    assert not all(torch.equal(a, b.detach()) for a, b in zip(rank0, initial))  # an update happened
    (metrics,) = read_metrics(tmp_path / "runs" / "run")
    assert metrics["processes"] == 2 and metrics["runs"] == 8  # both ranks' runs counted
    rollouts = read_rollouts(tmp_path / "runs" / "run")  # gathered to rank 0, written once
    assert sorted((r["query_index"], r["sample"]) for r in rollouts) == [(q, g) for q in (0, 1) for g in range(4)]


# ---------------------------------------------------------------------------------------
# DDP and FSDP2 against one process; uneven work; SIGKILL and resume under sharding
# ---------------------------------------------------------------------------------------

WORKER = Path(__file__).parent / "distributed_worker.py"
# Tolerance on the weights after two AdamW steps (lr 1e-3): ||dW_2proc - dW_1proc|| / ||dW_1proc||,
# dW the change from the initial weights. Element-wise equality is out of reach: AdamW divides
# each gradient element by its own magnitude, so float noise in near-zero elements (from the
# order of sums: micro-batch grouping, the gradient reduction) moves them by up to lr. Two
# 1-process runs that only group micro-batches differently (4 vs 12 samples) measured 0.010
# (token_mean) and 0.050 (run_mean); normalising per process instead of globally measured
# 0.81 and 0.53. The loss and gradient norm, which AdamW's scale invariance would hide in
# the weights, are compared to rel 1e-4 at step 1 (identical starting weights).
UPDATE_TOL = 0.15


def _relative_update_gap(got: dict, want: dict, initial: dict) -> float:
    keys = [k for k in want if k != "lm_head.weight"]  # tied to the embeddings: counted once
    gap = sum(float(((got[k] - want[k]) ** 2).sum()) for k in keys)
    change = sum(float(((want[k] - initial[k]) ** 2).sum()) for k in keys)
    return (gap / change) ** 0.5


@pytest.fixture(scope="module")
def updates_run(tmp_path_factory) -> Path:
    """One 2-process launch of every update scenario, ending in a sharded run whose processes
    are SIGKILLed while the main one writes the step-2 checkpoint (after the shards)."""
    tmp = tmp_path_factory.mktemp("updates")
    marker = tmp / "killed-marker"
    proc = subprocess.Popen(_launch_command(str(WORKER), "updates", str(tmp)), env=_ENV, start_new_session=True)
    try:
        deadline = time.time() + 400
        while not marker.exists():
            # a deadlock on unequal micro-batch counts ends here, as a timeout
            assert proc.poll() is None, f"the 2-process worker exited ({proc.returncode}) before the checkpoint write"
            assert time.time() < deadline, "the 2-process worker hung (deadlock?)"
            time.sleep(0.2)
    finally:
        # the workers first (torchrun gives them sessions of their own), then the launcher
        for pid_file in tmp.glob("pid-*"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return tmp


def _one_process(tmp: Path, name: str) -> dict:
    """The same scenario in this (single) process over the whole global batch."""
    from distributed_worker import UPDATE_CONFIG, UPDATE_SCENARIOS, two_updates

    overrides, _ = UPDATE_SCENARIOS[name]
    trainer = build_trainer(tiny_config(tmp, run_name=f"one-{name}", **UPDATE_CONFIG, **{**overrides, "sharding": "none"}),
                            reward_fn=first_letter_reward)
    assert trainer.world == 1 and trainer.plan == "single"
    stats = two_updates(trainer, synthetic_samples())
    return {"weights": full_weights(trainer), "stats": stats}


@pytest.mark.parametrize("name", ["ddp-token_mean-split", "ddp-sample_mean-empty", "fsdp-run_mean-split",
                                  "fsdp-token_mean-empty"])
def test_two_processes_update_as_one_process_over_the_global_batch(updates_run, tmp_path, name):
    """Weights after 2 optimizer steps within UPDATE_TOL of one process's; the loss and the
    (pre-clipping) gradient norm, which AdamW's scale invariance would hide in the weights,
    equal too. `empty`: rank 0 had no sample and ran 3 zero-weight micro-batches."""
    ranks = [torch.load(updates_run / f"{name}-{r}.pt", weights_only=False) for r in (0, 1)]
    one = _one_process(tmp_path, name)
    assert ranks[0]["plan"] == ("fsdp2" if name.startswith("fsdp") else "ddp")
    initial = tiny_model(seed=0).state_dict()
    moved = [k for k in initial if not torch.equal(initial[k], one["weights"][k])]
    assert len(moved) > len(initial) // 2  # the steps really updated the planner
    for rank in ranks:
        assert rank["weights"].keys() == one["weights"].keys()
        assert _relative_update_gap(rank["weights"], one["weights"], initial) < UPDATE_TOL
        # global metrics, the same on every rank; step 1 starts from identical weights (rel 1e-4),
        # step 2 from weights that already carry AdamW's amplified noise (rel 1e-2; the clipped
        # fraction, a count, can then move by a token)
        for step, (got, want, rel) in enumerate(zip(rank["stats"], one["stats"], (1e-4, 1e-2)), 1):
            assert got["optimizer_steps"] == want["optimizer_steps"] == 1
            assert got["trained_samples"] == want["trained_samples"] == 12
            for key in ("loss", "grad_norm", "kl", "ratio", *(("clipped",) if step == 1 else ())):
                assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-7), (name, step, key, got[key], want[key])


def test_fsdp2_holds_half_the_planner_per_rank(updates_run):
    for name in ("fsdp-run_mean-split", "fsdp-token_mean-empty"):
        for r in (0, 1):
            result = torch.load(updates_run / f"{name}-{r}.pt", weights_only=False)
            assert result["local_params"] == pytest.approx(result["total_params"] / 2, rel=0.02), (name, r)
    ddp = torch.load(updates_run / "ddp-token_mean-split-0.pt", weights_only=False)
    assert ddp["local_params"] == ddp["total_params"]


def test_sigkill_during_sharded_checkpoint_keeps_previous_one(updates_run):
    checkpoints = updates_run / "runs" / "killed" / "checkpoints"
    half = checkpoints / ".tmp-step-000002"
    assert (half / "sharded").is_dir() and not (half / "trainer_state.json").exists()  # killed mid-write
    ckpt = latest_checkpoint(updates_run / "runs" / "killed")
    assert ckpt is not None and ckpt.name == "step-000001"
    assert (ckpt / "sharded" / ".metadata").is_file() and not (ckpt / "optimizer.pt").exists()
    assert (ckpt / "planner" / "model.safetensors").is_file()  # full weights, loadable without shards


def test_sharded_resume_under_two_processes_equals_uninterrupted(updates_run):
    subprocess.run(_launch_command(str(WORKER), "resume", str(updates_run)), check=True, env=_ENV, timeout=400)
    run_dir = updates_run / "runs" / "killed"
    assert latest_checkpoint(run_dir).name == "step-000002"
    assert not (run_dir / "checkpoints" / ".tmp-step-000002").exists()  # the killed write cleaned up
    for r in (0, 1):
        straight, resumed = (torch.load(updates_run / f"{n}-{r}.pt", weights_only=False) for n in ("straight", "resumed"))
        assert resumed["step_done_at_start"] == 1
        initial = tiny_model(seed=0).state_dict()
        assert any(not torch.equal(initial[k], v) for k, v in straight["weights"].items())
        for key, value in straight["weights"].items():
            torch.testing.assert_close(resumed["weights"][key], value, rtol=0, atol=1e-6, msg=key)
    split, whole = read_metrics(run_dir), read_metrics(updates_run / "runs" / "straight")
    assert [m["step"] for m in split] == [1, 2] and [m["sharding"] for m in split] == ["fsdp2"] * 2
    assert [m["reward_mean"] for m in split] == [m["reward_mean"] for m in whole]  # same rollouts
    assert all(m["weight_gather_s"] > 0 for m in whole)

    # `agentflow export` reads a checkpoint written under FSDP2 like any other: the exported
    # folder holds the trained full weights
    from transformers import AutoModelForCausalLM

    from agentflow.trainer.export import export_planner

    out = export_planner(latest_checkpoint(run_dir), updates_run / "exported")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    resumed = torch.load(updates_run / "resumed-0.pt", weights_only=False)["weights"]
    for key, value in resumed.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-6, msg=key)


def test_update_plan_follows_the_launch_then_sharding():
    """Which plan runs (docs/design.md §3 table), from stand-ins for accelerate's launch state
    (the FSDP-plugin rows need GPUs to run for real; this checks only the decision)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from agentflow.trainer.distributed import choose_plan

    def launch(kind: DistributedType, processes: int = 2, fsdp2: bool = False) -> SimpleNamespace:
        return SimpleNamespace(distributed_type=kind, num_processes=processes, is_fsdp2=fsdp2)

    assert choose_plan("fsdp", launch(DistributedType.NO, processes=1)) == "single"
    assert choose_plan("none", launch(DistributedType.MULTI_CPU)) == "ddp"
    assert choose_plan("fsdp", launch(DistributedType.MULTI_CPU)) == "fsdp2"
    assert choose_plan("fsdp", launch(DistributedType.MULTI_GPU)) == "fsdp2"
    for sharding in ("none", "fsdp"):  # the plugin wins over the training config
        assert choose_plan(sharding, launch(DistributedType.FSDP, fsdp2=True)) == "accelerate-fsdp2"
    with pytest.raises(ValueError, match="FSDP2 only"):
        choose_plan("none", launch(DistributedType.FSDP, fsdp2=False))
    with pytest.raises(ValueError, match="DeepSpeed"):
        choose_plan("none", launch(DistributedType.DEEPSPEED))
