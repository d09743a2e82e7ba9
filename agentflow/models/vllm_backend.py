"""Generating through vLLM instead of the local `GenerationEngine` (GPU machines).

The seam: `LocalChatModel(engine=...)` takes any `GenerationBackend` (submit / generate /
reseed / tokenizer / tokens). `GenerationEngine` is the CPU one; `VLLMBackend` sends the
same token-in/token-out requests to vLLM and maps the answer back to a `Generation`
with the exact prompt ids, completion ids and per-token log-probs, so the Flow-GRPO
trainer cannot tell the two apart (docs/design.md §3, "Rollouts through vLLM").

Three ways to reach vLLM; exactly one object is given, and it is injected so that tests
on a machine without vLLM can hand in a stand-in that speaks the same API:

* `llm=vllm.LLM(...)`, in-process (the trainer's `rollout_backend: vllm_colocate`).
  Requests go to `llm.generate` with token-id prompts; `api` is the module that provides
  `SamplingParams` and `LoRARequest` (the `vllm` module itself, imported lazily when not
  given). Weights are loaded into the engine's model with its own `load_weights`, the
  way TRL's colocate mode does; a LoRA policy instead pushes its adapter as a new
  `LoRARequest` (vLLM loads it from the folder the trainer wrote; the base stays).
* `client=trl.generation.vllm_client.VLLMClient(...)`, an external `vllm serve` (the
  trainer's `rollout_backend: vllm_server`). We use TRL's client rather than vLLM's own
  API because it already is the token-in/token-out contract: `generate` takes token-id
  prompts and returns the completion ids and the sampled tokens' log-probs, and its
  weight channel (`update_named_params`, an NCCL broadcast into the server's
  weight-transfer engine) is the one `trl vllm-serve` sets up. Its constructor needs
  `vllm` importable and the weight channel needs CUDA.
* `base_url=...`, any OpenAI-compatible vLLM server through the `openai` client, for
  generation only: requests to `/completions` with the prompt as token ids, `logprobs=0`
  and vLLM's own fields (`return_token_ids`, ...) in `extra_body`. It has no weight
  channel; a caller that needs one passes `weight_sync=callable`.

Log-prob meaning: the engine reports log softmax(logits / T) over the full vocabulary.
vLLM's default log-probs are those of the raw logits (T ignored); with
`logprobs_mode="processed_logprobs"` (`--logprobs-mode processed_logprobs` for a server,
which `trl vllm-serve` sets) they are after temperature (and after top-p/top-k
truncation, so keep top_p = 1 when training on them). The trainer does not take them on
trust anyway: it recomputes the old log-probs with its own model and corrects for the
difference (docs/design.md §3).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from openai import OpenAI

from agentflow.models.engine import Generation, SamplingParams

NamedTensors = Iterable[tuple[str, Any]]  # (Hugging Face parameter name, tensor)


class VLLMBackend:
    """A `GenerationBackend` over an in-process `vllm.LLM`, TRL's `VLLMClient` to a
    `vllm serve`, or a vLLM OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        base_url: str | None = None,
        model: str | None = None,
        llm: Any = None,
        client: Any = None,
        api: Any = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
        max_workers: int = 64,
        seed: int = 0,
        weight_sync: Callable[[NamedTensors], None] | None = None,
    ) -> None:
        if sum(x is not None for x in (base_url, llm, client)) != 1:
            raise ValueError("give exactly one of base_url (an OpenAI-compatible vLLM server), llm (an in-process "
                             "vllm.LLM) or client (TRL's VLLMClient to a vllm serve)")
        self.tokenizer = tokenizer
        self.model_name = model
        self.llm = llm
        self.vllm_client = client
        self._api = api
        self.tokens = 0
        self.weight_pushes = 0  # how many times new weights (or a new adapter) reached vLLM
        self.lora_request: Any = None  # the adapter requests decode with (in-process LoRA), None: the base weights
        # A server without auth takes any key; never fall back to OPENAI_API_KEY, which
        # would send the user's OpenAI key to this server.
        self.client = (
            OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=max_retries)
            if base_url is not None else None
        )
        self._weight_sync = weight_sync
        self._seeds = random.Random(seed)
        self._lock = threading.Lock()
        # vLLM batches concurrent requests itself; in-process `LLM.generate` is not
        # thread-safe, so it gets one worker.
        self._pool = ThreadPoolExecutor(max_workers=max_workers if llm is None else 1, thread_name_prefix="vllm")

    @property
    def mode(self) -> str:
        """"colocate" (in-process LLM), "server" (TRL client) or "openai" (generation-only endpoint)."""
        return "colocate" if self.llm is not None else "server" if self.vllm_client is not None else "openai"

    @property
    def vllm(self) -> Any:
        """The module with `SamplingParams` and `LoRARequest`: the one injected, else `vllm`
        itself (imported here, lazily: only GPU machines have it)."""
        if self._api is None:
            import vllm

            self._api = vllm
        return self._api

    # -- GenerationBackend ------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Future:
        with self._lock:
            seed = params.seed if params.seed is not None else self._seeds.randrange(2**31)
        call = {"colocate": self._generate_local, "server": self._generate_trl, "openai": self._generate_server}[self.mode]
        return self._pool.submit(call, list(prompt_ids), params, seed)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        return self.submit(prompt_ids, params).result()

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._seeds = random.Random(seed)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.client is not None:
            self.client.close()

    # -- weight sync --------------------------------------------------------------
    def push_weights(self, named_tensors: NamedTensors) -> None:
        """Hand updated full weights to vLLM (the trainer calls this after each optimizer step).

        Names are the Hugging Face checkpoint's (`model.layers.0.self_attn.q_proj.weight`):
        vLLM's `load_weights` maps them onto its fused layers. Pending requests must have
        finished: the trainer never pushes during a rollout (docs/design.md §3).
        """
        if self._weight_sync is not None:
            self._weight_sync(named_tensors)
        elif self.mode == "colocate":
            # As TRL's colocate mode: the engine runs in this process (external_launcher),
            # so its model is reachable and loads the tensors straight from our memory.
            model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
            for name, tensor in named_tensors:  # one at a time: no second full copy in flight
                model.load_weights([(name, tensor)])
            self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights
        elif self.mode == "server":
            # TRL's server protocol announces every tensor (name, dtype, shape) before the
            # broadcast, so the tensors are listed first; they are references, not copies.
            tensors = list(named_tensors)
            metadata = [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in tensors]
            self.vllm_client.update_named_params(metadata, iter(tensors))
            self.vllm_client.reset_prefix_cache()
        else:
            raise RuntimeError("an OpenAI-compatible endpoint has no weight channel: pass weight_sync, or use "
                               "client=VLLMClient (vllm serve through trl vllm-serve)")
        self.weight_pushes += 1

    def push_adapter(self, path: str | Path, version: int) -> None:
        """Decode from now on with the LoRA adapter saved (peft format) at `path`.

        In-process only: vLLM loads the adapter from the folder, and caches adapters by
        their integer id, so every new version gets a new id (`version` >= 1, increasing).
        The LLM must have been made with `enable_lora=True` and a `max_lora_rank` of at
        least the adapter's rank.
        """
        if self.mode != "colocate":
            raise RuntimeError("push_adapter needs the in-process vllm.LLM; a server gets merged weights (push_weights)")
        self.lora_request = self.vllm.LoRARequest(f"policy-v{version}", int(version), str(path))
        self.llm.reset_prefix_cache()
        self.weight_pushes += 1

    # -- request / response mapping ---------------------------------------------
    def request_payload(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> dict:
        """Keyword arguments of `completions.create`: the OpenAI fields, and vLLM's own in `extra_body`."""
        payload: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompt_ids,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed,
            "logprobs": 0,
            "extra_body": {"return_tokens_as_token_ids": True, "return_token_ids": True, "skip_special_tokens": False},
        }
        if params.stop:
            payload["stop"] = list(params.stop)
            payload["extra_body"]["include_stop_str_in_output"] = True
        return payload

    @staticmethod
    def parse_choice(prompt_ids: list[int], choice: dict) -> Generation:
        logprobs = choice.get("logprobs") or {}
        ids = choice.get("token_ids")
        if ids is None:  # older servers: tokens come back as "token_id:<id>" strings
            ids = [int(str(t).rsplit(":", 1)[1]) for t in logprobs.get("tokens", [])]
        values = [float(v) for v in logprobs.get("token_logprobs", [])]
        if len(values) != len(ids):
            raise ValueError(f"vLLM returned {len(ids)} tokens but {len(values)} log-probs")
        reason = choice.get("finish_reason") or "length"
        return Generation(list(prompt_ids), list(ids), values, "length" if reason == "length" else "stop")

    def _generate_server(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Generation:
        response = self.client.completions.create(**self.request_payload(prompt_ids, params, seed))
        # model_dump keeps the fields the OpenAI schema lacks (vLLM's `token_ids`)
        out = self.parse_choice(prompt_ids, response.choices[0].model_dump())
        self.tokens += len(out.completion_ids)
        return out

    def _generate_trl(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Generation:
        """One request through TRL's `VLLMClient.generate` (token ids in, ids and log-probs out)."""
        extra: dict[str, Any] = {"seed": seed, "skip_special_tokens": False}
        if params.stop:
            extra.update(stop=list(params.stop), include_stop_str_in_output=True)
        out = self.vllm_client.generate(
            [list(prompt_ids)], n=1, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, logprobs=0, generation_kwargs=extra,
        )
        ids = [int(t) for t in out["completion_ids"][0]]
        # Per position the client lists (log-prob, token id) pairs by rank; take the sampled token's.
        values = [float(lps[tids.index(t)]) for t, lps, tids in zip(ids, out["logprobs"][0], out["logprob_token_ids"][0])]
        if len(values) != len(ids):
            raise ValueError(f"vLLM returned {len(ids)} tokens but {len(values)} log-probs")
        self.tokens += len(ids)
        # The client does not report the finish reason; a completion cut at the limit is "length".
        reason = "length" if len(ids) >= params.max_new_tokens else "stop"
        return Generation(list(prompt_ids), ids, values, reason)

    def _generate_local(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Generation:
        sampling = self.vllm.SamplingParams(
            max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            seed=seed, stop=list(params.stop) or None, include_stop_str_in_output=bool(params.stop), logprobs=0,
        )
        result = self.llm.generate(
            [{"prompt_token_ids": prompt_ids}], sampling_params=sampling, use_tqdm=False, lora_request=self.lora_request,
        )[0]
        completion = result.outputs[0]
        ids = list(completion.token_ids)
        values = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids)]
        if len(values) != len(ids):
            raise ValueError(f"vLLM returned {len(ids)} tokens but {len(values)} log-probs")
        self.tokens += len(ids)
        reason = "length" if completion.finish_reason == "length" else "stop"
        return Generation(list(prompt_ids), ids, values, reason)
