"""Atomic training checkpoints: planner weights, optimizer, RNG states, step, config.

A checkpoint is written into a hidden temporary directory beside its final place and
renamed with `os.replace` only when complete, so a crash or SIGKILL in the middle of a
write leaves the previous checkpoint as the latest complete one; temporary directories
are ignored by `latest_checkpoint` and cleaned up by the next save.

Layout of `<run_dir>/checkpoints/step-000010/`:
    planner/            full model (model.safetensors + config.json) or LoRA adapter (peft format)
    optimizer.pt        optimizer state (unsharded runs)
    sharded/            FSDP2 runs: model and optimizer shards, torch.distributed.checkpoint (DCP)
    rng-<rank>.pt       python / numpy / torch RNG states of each process
    trainer_state.json  step, config

Sharded runs (FSDP2, docs/design.md §3) write their model and optimizer state with DCP:
every process writes its own shards in parallel, nobody gathers the optimizer state (2x
the parameters with AdamW), and DCP can reload onto another number of processes. We call
DCP ourselves rather than `accelerator.save_state` because accelerate does not manage the
sharding on CPUs (`distributed.py`); under accelerate's FSDP2 plugin the model is the same
FSDP2 module and takes the same path. `planner/` is still written in full (from the rollout
engine's gathered copy), so a sharded checkpoint loads for evaluation without a process group.
The shards go into the same temporary directory, so atomicity is unchanged.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentflow.trainer.distributed import is_sharded

CHECKPOINTS = "checkpoints"
SHARDED = "sharded"
_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"


def fresh_run_name(output_dir: str | Path, prefix: str) -> str:
    """`<prefix>-<time to the second>`, with a counter when that folder exists already.

    A run folder named by the time alone is shared by two runs started within one second
    (a script that trains twice, a resumed benchmark seed, the test suite): Flow-GRPO then
    refuses it, SFT would write into it."""
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while (Path(output_dir) / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{_PREFIX}{step:06d}"


def latest_checkpoint(path: str | Path) -> Path | None:
    """`path` itself if it is a checkpoint, else the newest complete checkpoint of the run dir."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    root = path / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_planner(model: torch.nn.Module, target: Path, tokenizer: Any = None) -> None:
    """The trained weights: a peft adapter directory with LoRA, else a loadable HF model dir."""
    if is_peft(model):
        model.save_pretrained(target)
        return
    from safetensors.torch import save_model

    target.mkdir(parents=True, exist_ok=True)
    save_model(model, str(target / "model.safetensors"), metadata={"format": "pt"})  # handles tied weights
    model.config.save_pretrained(target)
    if tokenizer is not None:
        tokenizer.save_pretrained(target)


def load_planner(model: torch.nn.Module, source: Path) -> None:
    """Load weights written by `save_planner` into `model` in place."""
    if is_peft(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_peft_weights(str(source), device="cpu"))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter at {source} has keys the model lacks: {result.unexpected_keys[:5]}")
        return
    from safetensors.torch import load_model

    load_model(model, str(source / "model.safetensors"))


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    planner: torch.nn.Module | None = None,
    tokenizer: Any = None,
    keep: int = 2,
    rank: int = 0,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write checkpoint `step` atomically; every process calls this (each saves its RNG).

    The temporary directory's name is a function of the step, so all processes agree on
    it without communicating; `barrier` orders the main process's rename after them.
    `planner` is the full-weight module written to planner/ (default: `model`); a sharded
    `model` must come with one, since its own parameters are shards.
    """
    sharded = is_sharded(model)
    planner = planner if planner is not None else model
    if is_sharded(planner):
        raise ValueError("planner/ needs full weights: pass the unsharded copy as `planner`")
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}"
    if is_main:
        for stale in final.parent.glob(f"{_TMP_PREFIX}*") if final.parent.exists() else ():
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed save
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    if sharded:  # a collective: every process writes its shards
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / SHARDED)
    barrier()
    if is_main:
        save_planner(planner, tmp / "planner", tokenizer)
        if not sharded:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        # written last: its presence is what marks a checkpoint directory complete
        state = {"step": step, "sharded": sharded, "config": config}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (a resumed run interrupted at once)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(final.parent, keep)
    barrier()
    return final


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, rank: int = 0
) -> dict[str, Any]:
    """Restore weights, optimizer and this process's RNG; returns trainer_state.json.

    A sharded `model` (FSDP2) restores model and optimizer from the DCP shards (every
    process calls this: it is a collective); an unsharded one from planner/ and
    optimizer.pt. An unsharded model can take the weights of a sharded checkpoint
    (planner/ is full) but not its optimizer state.
    """
    state = json.loads((path / "trainer_state.json").read_text())
    if is_sharded(model):
        if not (path / SHARDED).is_dir():
            raise ValueError(f"{path} is not a sharded checkpoint: resume it with sharding: none")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if optimizer is None:
            raise ValueError("loading a sharded model needs its optimizer too (the shards hold both)")
        model_state, optimizer_state = get_state_dict(model, optimizer)
        shards = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(shards, checkpoint_id=path / SHARDED)  # in place, into the tensors of `shards`
        set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    else:
        load_planner(model, path / "planner")
        if optimizer is not None:
            if not (path / "optimizer.pt").is_file():
                raise ValueError(f"{path} is a sharded checkpoint: its optimizer state resumes with sharding: fsdp")
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename, so a power loss cannot publish empty files."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
