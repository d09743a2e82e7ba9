"""What sharding costs the rollout side: all-gathering FSDP2 shards into the engine's full copy.

    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml benchmarks/weight_gather.py
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml benchmarks/weight_gather.py --tiny

Under `sharding: fsdp` the trainer calls `distributed.copy_full_weights` after every
optimizer step (docs/design.md §3): every process all-gathers the full fp32 state dict
and copies it into the rollout engine's unsharded planner. This times exactly that call
on the planner sharded as the trainer shards it, after one warm-up, and prints the median
of `--repeats` together with the bytes each process receives. The trainer logs the same
time per step as `weight_gather_s`. The last line is JSON (from the main process).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a random 2-layer model instead of SmolLM2-135M")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    from agentflow.models import load_model, tiny_model
    from agentflow.trainer.distributed import copy_full_weights, local_numel, shard_with_fsdp2

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    engine_copy = tiny_model() if args.tiny else load_model(dtype=torch.float32)[0]
    engine_copy.to(accelerator.device)
    sharded = shard_with_fsdp2(copy.deepcopy(engine_copy), accelerator)
    total = sum(t.numel() * t.element_size() for t in [*engine_copy.parameters(), *engine_copy.buffers()])  # tied: once
    times = []
    for _ in range(args.repeats + 1):  # the first is a warm-up
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        copy_full_weights(sharded, engine_copy)
        times.append(time.perf_counter() - start)
    gathered = torch.tensor([statistics.median(times[1:])], device=accelerator.device)
    slowest = accelerator.reduce(gathered, reduction="max").item()
    out = {"processes": accelerator.num_processes, "params": sum(p.numel() for p in engine_copy.parameters()),
           "params_per_process": local_numel(sharded), "state_dict_mib": round(total / 2**20, 1),
           "weight_gather_s": round(slowest, 4)}
    if accelerator.is_main_process:
        print(f"{'tiny' if args.tiny else 'SmolLM2-135M'}: {out['params'] / 1e6:.1f}M params, "
              f"{out['params_per_process'] / 1e6:.1f}M per process; full fp32 state dict {out['state_dict_mib']} MiB; "
              f"all-gather + copy into the engine's copy: median {slowest:.3f}s over {args.repeats} "
              f"(slowest process), after a warm-up")
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
