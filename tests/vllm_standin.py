"""A STAND-IN FOR vLLM, not vLLM: vLLM cannot run on this CPU-only machine (it needs
CUDA, and its wheel is not installed here). The real thing runs in `scripts/gpu_check.sh`.

The stand-ins speak exactly the parts of the APIs that `VLLMBackend` uses, so the
backend's and the trainer's real code runs against them:

* `StandInLLM` for `vllm.LLM` (colocate): `generate(prompts, sampling_params=..., use_tqdm=...,
  lora_request=...)` returning objects shaped like vLLM's `RequestOutput`,
  `llm_engine.model_executor.driver_worker.model_runner.model.load_weights(...)` and
  `reset_prefix_cache()`; `STANDIN_API` for the `vllm` module (`SamplingParams`, `LoRARequest`).
* `StandInClient` for TRL's `VLLMClient` (server): `generate(token-id prompts, ...)` returning
  TRL's dict, `update_named_params(metadata, iterator)` and `reset_prefix_cache()`.

Like vLLM, each holds its OWN copy of the weights, loaded from the same starting point as
the trainer's, in bf16 (so its log-probs really differ from the fp32 trainer's, as vLLM's
do), and samples with the project's `GenerationEngine` over that copy. Weights reach the
copy only through the load calls above: by name, refusing names the model lacks, as
vLLM's `load_weights` would.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from agentflow.models import GenerationEngine, SamplingParams


@dataclass
class StandInSamplingParams:
    """The fields of `vllm.SamplingParams` that `VLLMBackend` sets."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    include_stop_str_in_output: bool = False
    logprobs: int | None = None


@dataclass
class StandInLoRARequest:
    """`vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)`."""

    lora_name: str
    lora_int_id: int
    lora_path: str


STANDIN_API = SimpleNamespace(SamplingParams=StandInSamplingParams, LoRARequest=StandInLoRARequest)


class _StandInWeights:
    """A bf16 copy of a causal LM that samples with the local engine and loads weights by name."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, dtype: torch.dtype = torch.bfloat16) -> None:
        self.base = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
        self.dtype = dtype
        self.engine = GenerationEngine(self.base, tokenizer, seed=0)
        self.loads: list[dict[str, torch.Tensor]] = []  # every finished push: name -> a clone of what arrived
        self._current: dict[str, torch.Tensor] = {}
        self.prefix_resets = 0

    def load_weights(self, weights: Any) -> set[str]:
        params = dict(self.base.named_parameters())
        names = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"the model has no parameter {name!r}")  # vLLM fails on unknown names too
            with torch.no_grad():
                params[name].copy_(tensor)
            self._current[name] = tensor.detach().clone()
            names.add(name)
        return names

    def end_push(self) -> None:
        """The backend resets the prefix cache after every push: the tensors since the last one are one push."""
        if self._current:
            self.loads.append(self._current)
            self._current = {}
        self.prefix_resets += 1

    def sample(self, prompt_ids: list[int], params: SamplingParams):
        return self.engine.generate(prompt_ids, params)


class StandInLLM:
    """Stand-in for an in-process `vllm.LLM` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.weights = _StandInWeights(model, tokenizer)
        runner = SimpleNamespace(model=self.weights)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))
        self.lora_requests: list[StandInLoRARequest] = []  # each new adapter, as generate saw it first
        self._adapter_id: int | None = None
        self.requests = 0

    def reset_prefix_cache(self) -> None:
        self.weights.end_push()

    def generate(self, prompts: list[dict], sampling_params: StandInSamplingParams, use_tqdm: bool = True,
                 lora_request: StandInLoRARequest | None = None) -> list[SimpleNamespace]:
        assert sampling_params.logprobs == 0, "the backend asks for the sampled token's log-prob"
        self._use_adapter(lora_request)
        outputs = []
        for prompt in prompts:
            self.requests += 1
            out = self.weights.sample(prompt["prompt_token_ids"], SamplingParams(
                max_new_tokens=sampling_params.max_tokens, temperature=sampling_params.temperature,
                top_p=sampling_params.top_p, seed=sampling_params.seed, stop=tuple(sampling_params.stop or ())))
            completion = SimpleNamespace(
                token_ids=out.completion_ids, finish_reason=out.finish_reason,
                logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(out.completion_ids, out.logprobs)],
            )
            outputs.append(SimpleNamespace(outputs=[completion]))
        return outputs

    def _use_adapter(self, request: StandInLoRARequest | None) -> None:
        """Load a new adapter id from its folder onto the base copy, as vLLM's LoRA manager does."""
        if request is None or request.lora_int_id == self._adapter_id:
            return
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(self.weights.base), Path(request.lora_path))
        self.weights.engine.model = model.to(self.weights.dtype).eval()
        self._adapter_id = request.lora_int_id
        self.lora_requests.append(request)


class StandInClient:
    """Stand-in for TRL's `VLLMClient` to a `trl vllm-serve` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.weights = _StandInWeights(model, tokenizer)
        self.metadata: list[list[tuple[str, str, list[int]]]] = []
        self.requests = 0

    def generate(self, prompts: list[list[int]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int = 16, logprobs: int | None = 0, generation_kwargs: dict | None = None, **_: Any) -> dict:
        assert n == 1 and logprobs == 0 and all(isinstance(t, int) for p in prompts for t in p), "token ids in"
        extra = generation_kwargs or {}
        completion_ids, values, token_ids = [], [], []
        for prompt in prompts:
            self.requests += 1
            out = self.weights.sample(prompt, SamplingParams(max_new_tokens=max_tokens, temperature=temperature,
                                                             top_p=top_p, seed=extra.get("seed"),
                                                             stop=tuple(extra.get("stop") or ())))
            completion_ids.append(out.completion_ids)
            values.append([[lp] for lp in out.logprobs])
            token_ids.append([[t] for t in out.completion_ids])
        return {"prompt_ids": prompts, "completion_ids": completion_ids, "logprobs": values, "logprob_token_ids": token_ids}

    def update_named_params(self, metadata: list[tuple[str, str, list[int]]], named_params: Any) -> None:
        """As the NCCL broadcast needs: the tensors arrive in the announced order, dtypes and shapes."""
        received = list(named_params)
        assert [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in received] == list(metadata)
        self.metadata.append(list(metadata))
        self.weights.load_weights(received)

    def reset_prefix_cache(self) -> None:
        self.weights.end_push()
