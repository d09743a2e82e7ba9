"""A generation engine that decodes concurrent requests together.

Many graph runs are in flight at once (a Flow-GRPO group, an eval's concurrency), and
each node call is one chat-model request. Decoding a 135M model on CPU is bound by
per-step overhead, not arithmetic (DESIGN.md §4), so one forward pass for all active
sequences costs about as much as a forward pass for one. The engine therefore owns the
model, queues requests from any thread, and a single worker decodes them in batches.

Why our own loop rather than `model.generate`: we need, per request, the exact sampled
token ids and their log-probs under the sampling distribution, a per-request RNG (so a
request's sample does not depend on what it was batched with), and per-request stop
conditions; `generate` gives one RNG and one stop rule per batch. transformers' own
continuous batching (`generate_batch`) measured slower than plain `generate` on this
CPU (DESIGN.md §4). The loop below is the textbook one: left-padded prefill, then one
decode step per token with a KV cache, finished rows dropped from the batch.
"""

from __future__ import annotations

import atexit
import inspect
import queue
import random
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """One finished request: exact ids and the log-prob of every sampled token.

    `logprobs[i]` is log softmax(logits / T)[completion_ids[i]] (T = 1 when greedy),
    i.e. the log-probability under the full tempered distribution the trainer
    recomputes; top-p only restricts which tokens may be drawn.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (eos or stop string) or "length"


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: Future
    generator: torch.Generator
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


class RequestTooLarge(ValueError):
    """A single request cannot fit the engine's token budget."""


class GenerationEngine:
    """Owns a causal LM and decodes queued requests in batches on one worker thread."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        max_batch_size: int = 32,
        max_context: int = 4096,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_context = max_context
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self._seeds = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        # transformers 5.x renamed the cache argument `past_key_values` -> `cache`.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # Stop the worker before the interpreter tears torch down under it.
        ref = weakref.ref(self)
        atexit.register(lambda: (engine := ref()) is not None and engine.close())
        self.steps = 0  # decode forward passes, for benchmarks
        self.tokens = 0  # completion tokens produced

    # -- public API -------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Future:
        """Queue a request; the returned future resolves to a `Generation`."""
        if len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise RequestTooLarge(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={params.max_new_tokens} "
                f"exceeds the engine's max_context={self.max_context}"
            )
        with self._lock:
            seed = params.seed if params.seed is not None else self._seeds.randrange(2**62)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="agentflow-engine", daemon=True)
                self._worker.start()
        future: Future = Future()
        self._queue.put(_Request(list(prompt_ids), params, future, torch.Generator().manual_seed(seed)))
        return future

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        return self.submit(prompt_ids, params).result()

    def close(self) -> None:
        """Let the worker finish what it holds and exit (a later submit restarts it)."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(None)
            worker.join()

    def reseed(self, seed: int) -> None:
        """Restart the stream that draws per-request seeds (for reproducible runs)."""
        with self._lock:
            self._seeds = random.Random(seed)

    # -- worker -----------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch_size:
                try:
                    request = self._queue.get(timeout=0.005)
                except queue.Empty:
                    break
                if request is None:  # close(): serve what we hold, then exit
                    self._queue.put(None)
                    break
                batch.append(request)
            try:
                with torch.inference_mode():
                    self._decode(batch)
            except BaseException as exc:  # surface the error to every waiting caller
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)

    def _decode(self, batch: list[_Request]) -> None:
        device = self.model.device
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, req in enumerate(batch):
            ids[row, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            mask[row, width - len(req.prompt_ids) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
        ).logits[:, -1, :]
        active = list(batch)
        last_pos = positions[:, -1]
        while active:
            next_tokens = self._sample(active, logits)
            keep = [i for i, req in enumerate(active) if req.finish_reason is None]
            for req in active:
                if req.finish_reason is not None:
                    req.future.set_result(
                        Generation(req.prompt_ids, req.completion_ids, req.logprobs, req.finish_reason)
                    )
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, last_pos, next_tokens = mask[index], last_pos[index], next_tokens[index]
                active = [active[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            last_pos = last_pos + 1
            logits = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            ).logits[:, -1, :]
            self.steps += 1

    def _sample(self, active: list[_Request], logits: torch.Tensor) -> torch.Tensor:
        """Draw one token per row with its request's own RNG; record id and log-prob."""
        logits = logits.float()
        chosen = torch.empty(len(active), dtype=torch.long)
        for row, req in enumerate(active):
            p = req.params
            if p.temperature <= 0:
                logp = torch.log_softmax(logits[row], -1)
                token = int(torch.argmax(logp))
            else:
                logp = torch.log_softmax(logits[row] / p.temperature, -1)
                probs = logp.exp()
                if p.top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    cut = sorted_p.cumsum(-1) - sorted_p > p.top_p
                    sorted_p[cut] = 0.0
                    probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
                token = int(torch.multinomial(probs.cpu(), 1, generator=req.generator))
            chosen[row] = token
            req.completion_ids.append(token)
            req.logprobs.append(float(logp[token]))
            self.tokens += 1
            if token in self.eos_ids:
                req.finish_reason = "stop"
            elif p.stop and self._hit_stop(req):
                req.finish_reason = "stop"
            elif len(req.completion_ids) >= p.max_new_tokens:
                req.finish_reason = "length"
        return chosen.to(logits.device)

    def _hit_stop(self, req: _Request) -> bool:
        tail = self.tokenizer.decode(req.completion_ids[-16:], skip_special_tokens=True)
        return any(s in tail for s in req.params.stop)
