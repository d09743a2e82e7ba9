"""Rollouts through vLLM: making the backend and pushing the policy's weights into it.

With `rollout_backend: engine` (the default) the policy's engine decodes with the very
module the optimizer updates, so there is nothing to sync (docs/design.md §3, "Weight
sync"). With `vllm_colocate` or `vllm_server` the planner's requests go to vLLM
(`agentflow.models.vllm_backend.VLLMBackend`), which holds its own copy of the weights:

* after every optimizer step the trainer calls `WeightPusher.push`, which hands vLLM the
  updated tensors: full fine-tuning pushes every parameter under its Hugging Face name;
  a LoRA policy in-process pushes its adapter (saved, then loaded by vLLM as a new
  `LoRARequest`; the base weights never move), and to a server the merged weights
  (W + B A, computed without touching the training model), since TRL's weight channel
  carries full tensors only;
* vLLM samples with other kernels and usually another dtype than the training forward,
  so its log-probs are not the trainer's: the trainer recomputes the old log-probs with
  its own model and applies truncated importance sampling (`FlowGRPOTrainer.update`,
  docs/design.md §3, "Rollouts through vLLM").

vLLM and TRL's client are imported only inside `make_vllm_backend`; the rest of this
module runs anywhere, which is what the CPU tests exercise with a stand-in for vLLM.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agentflow.models import resolve_model_path
from agentflow.models.vllm_backend import VLLMBackend

if TYPE_CHECKING:
    from accelerate import Accelerator

    from agentflow.trainer.config import FlowGRPOConfig


def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's full weights under the names of its Hugging Face checkpoint.

    A peft model yields its base weights with the adapter merged in (W + delta, where
    peft's `get_delta_weight` applies the scaling), computed into new tensors so the
    training model is untouched: merging in place and unmerging would not restore fp32
    weights bit for bit. LoRA parameters themselves are not yielded (vLLM has no such
    layers). Tied weights come once, as `named_parameters` gives them.
    """
    if not hasattr(model, "peft_config"):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter)
                        key = f"{name}.weight"
                        deltas[key] = deltas[key] + delta if key in deltas else delta
        for name, param in base.named_parameters():
            if ".lora_" in name:
                continue
            clean = name.replace(".base_layer", "")
            tensor = param.detach()
            yield clean, (tensor + deltas[clean].to(tensor.dtype)) if clean in deltas else tensor


def make_vllm_backend(config: FlowGRPOConfig, tokenizer: Any, accelerator: Accelerator) -> VLLMBackend:
    """The real vLLM backend a config asks for (GPU machines with vLLM installed).

    Colocate: one `vllm.LLM` per training process, on that process's GPU, set up as TRL's
    colocate mode does (`external_launcher`, so the engine lives in this process and its
    model can load our tensors; `processed_logprobs`, so log-probs are after temperature).
    Server: TRL's `VLLMClient` on every process (all generate through the server); only
    the main process opens the NCCL weight channel, as only it pushes.
    """
    seed = config.seed + accelerator.process_index
    if config.rollout_backend == "vllm_colocate":
        from trl.trainer.utils import ensure_master_addr_port
        from vllm import LLM

        os.environ["RANK"] = str(accelerator.process_index)
        os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
        os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
        ensure_master_addr_port()
        lora = {"enable_lora": True, "max_lora_rank": config.lora_rank} if config.lora else {}
        llm = LLM(
            model=resolve_model_path(config.model), dtype=config.vllm_dtype, seed=seed,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization, max_model_len=config.vllm_max_model_len,
            distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
            max_num_batched_tokens=4096, enable_prefix_caching=True, **lora,
        )
        return VLLMBackend(tokenizer, llm=llm, seed=seed)
    if config.rollout_backend == "vllm_server":
        from trl.generation.vllm_client import VLLMClient

        client = VLLMClient(base_url=config.vllm_server_url, connection_timeout=config.vllm_server_timeout_s)
        if accelerator.is_main_process:
            client.init_communicator(device=accelerator.device)
        accelerator.wait_for_everyone()
        return VLLMBackend(tokenizer, client=client, seed=seed)
    raise ValueError(f"rollout_backend={config.rollout_backend!r} decodes with the local engine, not vLLM")


class WeightPusher:
    """Keeps vLLM's copy of the policy equal to the trained weights.

    `push()` is called once when the trainer starts (a resumed run's weights are not the
    checkpoint vLLM loaded) and after every optimizer step. Every process calls it:
    in-process each one loads its own LLM; with a server only the main process sends
    (the server has one copy) and the others wait at `barrier` so no process starts the
    next rollout on old weights.
    """

    def __init__(
        self, backend: VLLMBackend, model: torch.nn.Module, adapter_dir: Path, *,
        is_main: bool = True, barrier: Callable[[], None] = lambda: None, keep_adapters: int = 2,
    ) -> None:
        self.backend = backend
        self.model = model
        self.adapter_dir = Path(adapter_dir)
        self.is_main = is_main
        self.barrier = barrier
        self.keep_adapters = keep_adapters
        self.version = 0
        self.seconds = 0.0

    def push(self) -> None:
        start = time.perf_counter()
        self.version += 1
        if self.backend.mode == "colocate" and hasattr(self.model, "peft_config"):
            target = self.adapter_dir / f"v{self.version:06d}"
            self.model.save_pretrained(target)  # adapter_config.json + adapter_model.safetensors, a few MB
            self.backend.push_adapter(target, self.version)
            for old in sorted(self.adapter_dir.glob("v*"))[: -self.keep_adapters]:
                shutil.rmtree(old, ignore_errors=True)
        elif self.backend.mode == "server":
            if self.is_main:
                self.backend.push_weights(hf_weights(self.model))
            self.barrier()
        else:
            self.backend.push_weights(hf_weights(self.model))
        self.seconds += time.perf_counter() - start


__all__ = ["WeightPusher", "hf_weights", "make_vllm_backend"]
