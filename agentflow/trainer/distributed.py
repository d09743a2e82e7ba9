"""How the planner's update is spread over processes: one process, DDP, or FSDP2 (docs/design.md §3).

Four plans, chosen from the accelerate launch config and `FlowGRPOConfig.sharding`:

    single            one process: the model as loaded, no wrapper.
    ddp               several processes, `sharding: none`: `accelerator.prepare` wraps the
                      planner in DistributedDataParallel (accelerate's MULTI_CPU / MULTI_GPU).
    fsdp2             several processes, `sharding: fsdp`, and accelerate does not manage FSDP:
                      we call torch's `fully_shard` (FSDP2) ourselves. This is the only way
                      to shard on CPUs: accelerate treats a CPU run as MULTI_CPU and ignores
                      an FSDP plugin there; and the sharded model must not then go through
                      `accelerator.prepare`, which would wrap it in DDP and refuse its DTensor
                      parameters.
    accelerate-fsdp2  the launch config enables accelerate's FSDP plugin (GPUs) with
                      `fsdp_version: 2`: `accelerator.prepare` calls the same `fully_shard`.
                      The launch config wins over `sharding` (either value): it is the same
                      FSDP2, and the plugin carries the options (mixed precision, offload,
                      auto-wrap policy) that `sharding: fsdp` does not have.

DeepSpeed, FSDP1, Megatron-LM and XLA are refused: they need a different optimizer step
and state-dict handling than the trainer has, and none can be tested here.

Under both FSDP2 plans the rollout engine keeps its own full-weight copy of the planner
(the engine decodes with full weights); `copy_full_weights` all-gathers the shards into it
after every optimizer step.
"""

from __future__ import annotations

from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

UpdatePlan = Literal["single", "ddp", "fsdp2", "accelerate-fsdp2"]

_REFUSED = {
    DistributedType.DEEPSPEED: "DeepSpeed",
    DistributedType.MEGATRON_LM: "Megatron-LM",
    DistributedType.XLA: "XLA",
}


def choose_plan(sharding: str, accelerator: Accelerator) -> UpdatePlan:
    """The update plan for this launch (see the module docstring for which wins)."""
    kind = accelerator.distributed_type
    if kind in _REFUSED:
        raise ValueError(f"{_REFUSED[kind]} launch configs are not supported by the Flow-GRPO trainer (untested); "
                         "use examples/accelerate/fsdp2.yaml or `sharding: fsdp` to shard the planner")
    if kind == DistributedType.FSDP:
        if not accelerator.is_fsdp2:
            raise ValueError("the accelerate config enables FSDP version 1; the trainer supports FSDP2 only "
                             "(set fsdp_version: 2, as examples/accelerate/fsdp2.yaml does)")
        return "accelerate-fsdp2"
    if accelerator.num_processes == 1:
        return "single"  # one process has nothing to shard or average with
    return "fsdp2" if sharding == "fsdp" else "ddp"


def shard_with_fsdp2(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """`fully_shard` every transformer block, then the root (which takes the embeddings, the
    final norm and the tied LM head), over all processes: each holds ~1/world of the
    parameters as DTensor shards. Blocks are sharded separately so that only one block's
    full weights are materialised at a time in forward and backward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer block class (_no_split_modules): "
                         "cannot shard it block by block")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter is a DTensor shard (FSDP2, from either plan)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def local_numel(model: torch.nn.Module) -> int:
    """Parameters this process holds: its shards under FSDP2, everything otherwise."""
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())


def copy_full_weights(sharded: torch.nn.Module, target: torch.nn.Module) -> None:
    """All-gather the full weights of a sharded model into `target` (the rollout engine's
    unsharded copy), in place, so the engine's tensors, and the caches keyed on them, stay
    valid; the in-place copy bumps their version counters, which is how the engine notices
    new weights (docs/design.md §4). A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    target.load_state_dict(full, strict=True)


def scalar(value: torch.Tensor | float) -> float:
    """A Python float from a tensor that may be a (replicated) DTensor, as FSDP2's grad norm is."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)


def gather_rows(accelerator: Accelerator, values: list[float]) -> torch.Tensor:
    """Every process's `values`, one row per process (float64), from one all-gather."""
    row = torch.tensor([values], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes == 1:
        return row.cpu()
    return accelerator.gather(row).reshape(accelerator.num_processes, len(values)).cpu()


__all__ = ["UpdatePlan", "choose_plan", "copy_full_weights", "gather_rows", "is_sharded", "local_numel",
           "scalar", "shard_with_fsdp2"]
