"""Generating through vLLM instead of the local `GenerationEngine` (GPU machines).

The seam: `LocalChatModel(engine=...)` takes any `GenerationBackend` (submit / generate /
reseed / tokenizer / tokens). `GenerationEngine` is the CPU one; `VLLMBackend` sends the
same token-in/token-out requests to vLLM and maps the answer back to a `Generation`
with the exact prompt ids, completion ids and per-token log-probs, so the Flow-GRPO
trainer cannot tell the two apart.

Two ways to reach vLLM (neither is installed or tested on the CPU machine; `vllm` is
imported lazily, only by the in-process mode):

* server: `vllm serve <checkpoint> --logprobs-mode processed_logprobs` and
  `VLLMBackend(tokenizer, base_url="http://host:8000/v1", model="<name>")`. Requests go
  through the `openai` client (its timeouts, and its retries of connection errors, 408,
  429 and 5xx replies) to `/completions` with the prompt as token ids, `logprobs=0` (the
  sampled token's log-prob) and vLLM's own fields (`return_token_ids`, ...) in
  `extra_body`; vLLM batches concurrent requests itself, so `submit` just posts from a
  thread pool.
* in-process: `VLLMBackend(tokenizer, llm=vllm.LLM(...))`.

Log-prob meaning: the engine reports log softmax(logits / T) over the full vocabulary.
vLLM's default log-probs are those of the raw logits (T ignored); with
`--logprobs-mode processed_logprobs` they are after temperature (and after top-p/top-k
truncation, so keep top_p = 1 when training on them, or let the trainer recompute them).

Weight sync: the trainer calls `push_weights(named_tensors)` after an update. In-process
it loads the tensors into vLLM's model (`LLM.apply_model`, vLLM >= 0.9); a server needs
its own channel (e.g. NCCL weight broadcast, or reloading a saved checkpoint), which the
trainer passes as `weight_sync=callable`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from openai import OpenAI

from agentflow.models.engine import Generation, SamplingParams


class VLLMBackend:
    """A `GenerationBackend` over a vLLM OpenAI-compatible server or an in-process `vllm.LLM`."""

    def __init__(
        self,
        tokenizer,
        base_url: str | None = None,
        model: str | None = None,
        llm: Any = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
        max_workers: int = 64,
        seed: int = 0,
        weight_sync: Callable[[Iterable[tuple[str, Any]]], None] | None = None,
    ) -> None:
        if (base_url is None) == (llm is None):
            raise ValueError("give exactly one of base_url (a vLLM server) or llm (an in-process vllm.LLM)")
        self.tokenizer = tokenizer
        self.model_name = model
        self.llm = llm
        self.tokens = 0
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

    # -- GenerationBackend ------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Future:
        with self._lock:
            seed = params.seed if params.seed is not None else self._seeds.randrange(2**31)
        call = self._generate_server if self.llm is None else self._generate_local
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

    def push_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Hand updated weights to vLLM (the trainer calls this after each optimiser step)."""
        if self._weight_sync is not None:
            self._weight_sync(named_tensors)
        elif self.llm is not None:
            weights = list(named_tensors)
            self.llm.apply_model(lambda model: model.load_weights(weights))
        else:
            raise RuntimeError("a vLLM server needs a weight_sync callable to receive weights")

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

    def _generate_local(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Generation:
        import vllm  # lazily: only GPU machines have it

        sampling = vllm.SamplingParams(
            max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            seed=seed, stop=list(params.stop) or None, logprobs=0,
        )
        result = self.llm.generate([{"prompt_token_ids": prompt_ids}], sampling_params=sampling, use_tqdm=False)[0]
        completion = result.outputs[0]
        ids = list(completion.token_ids)
        values = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids)]
        self.tokens += len(ids)
        reason = "length" if completion.finish_reason == "length" else "stop"
        return Generation(list(prompt_ids), ids, values, reason)
