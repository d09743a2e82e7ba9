"""A generation engine that decodes concurrent requests together (continuous batching).

Many graph runs are in flight at once (a Flow-GRPO group, an eval's concurrency), and
each node call is one chat-model request. Decoding a 135M model on CPU is bound by
per-step overhead, not arithmetic (DESIGN.md §4): one forward pass for 8 or 32 active
sequences costs little more than a forward pass for one. The engine therefore owns the
model, queues requests from any thread, and a single worker runs one forward pass per
decode step for every active sequence. New requests join *between decode steps* (they
are prefilled and written into free slots of the running batch), finished ones leave at
once: continuous batching, so a graph run's next node call never waits for a wave.

Why our own loop, not what transformers offers:

* `model.generate` has one RNG and one stop rule per batch, and a batch is fixed for its
  lifetime; we need, per request, the exact sampled ids with their log-probs under the
  tempered distribution, a per-request RNG (a sample must not depend on what it was
  batched with) and per-request stop/length limits, with requests joining mid-flight.
* transformers' continuous batching (`generate_batch`, paged cache) measured slower than
  plain `generate` here (DESIGN.md §4: 35 vs 144 tok/s at 32 requests, bf16; re-measured
  by `benchmarks/rollout_throughput.py --compare-generate-batch`), and it reports no
  per-token log-probs of the sampled tokens nor per-request RNGs.
* `StaticCache` needs one cache position shared by the batch and re-allocates per
  `generate`; `DynamicCache` concatenates every layer's keys/values on every step
  (copying the whole cache per token) and `batch_select_indices` copies it again when a
  row leaves.

So the KV cache here is a *slot cache* (`_SlotCache`): per layer one preallocated
`[slots, kv_heads, width, head_dim]` buffer. All active rows occupy slots `0..R-1` and
share one write column: a decode step writes column `col` for every row with an indexed
copy (no concatenation) and attention reads the window `[off, col]`, where `off` is the
earliest column any live row uses. A new request goes into a free slot, right-aligned so
that its prompt ends at column `col` (left padding masked out, positions given
explicitly, so its numbers are those of an unpadded run), and is prefilled *in the same
forward pass* as the running rows' decode step: one pass reads the weights once for
both (on this CPU a decode step of 5 rows costs ~100 ms, mostly reading weights; folding
it into the ~45 prefills of a G=8 rollout saves that much per admission). A finished
row's slot is refilled by moving the last row into it (one row copied, not the whole
cache). The buffers are re-laid out (one copy of the live window) only when a new prompt
is longer than the columns to the left of `col`, or the right margin cannot hold the
remaining tokens of every row, or more slots are needed.

The forward pass itself is `fast_forward.FastForward` for Llama-family models (fused,
oneDNN-packed projections; ~2x transformers' forward per decode step here) and
transformers' own forward, one call per segment through `_SlotLayer`, for the rest.

Prefix cache: node calls repeat long prompt prefixes. The G runs of a group send the
same first planner prompt; every planner, verifier and generator prompt of a query
starts with that module's system prompt (tool cards included) and the question; a
planner prompt at turn k+1 extends the one of turn k up to its memory. On this CPU a
prefill is compute-bound (~4 ms per token for the 135M model), so recomputing those
prefixes dominated rollout time. `_PrefixStore` keeps the keys/values of recent prompts
(an LRU bounded by `prefix_cache_tokens`); a new request copies the keys/values of its
longest common prefix with any stored prompt into its slot and prefills only the rest.
Causal attention makes the first n positions of a stored prompt valid for any prompt
that shares those n tokens. A request whose longest prefix is a prompt admitted in the same pass
waits one step for it (so a group's G identical first prompts are prefilled once).
Stored entries are dropped when the model changes (a version counter moves on every
in-place update, e.g. an optimizer step; a parameter is replaced; a peft adapter is
toggled), so a trainer that updates the policy between rollouts never decodes with
stale keys.
The benchmark measures what this saves (`prefix_tokens_reused`).

Memory is bounded: at most `max_batch_size` rows, and the cache buffers never hold more
than `max_tokens_in_flight` token slots (rows x width, padding included). A request that
cannot fit alone raises `RequestTooLarge` at `submit`; one that does not fit next to the
running rows waits for them to finish.
"""

from __future__ import annotations

import atexit
import collections
import inspect
import queue
import random
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from agentflow.models.fast_forward import FastForward, lora_state


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


@runtime_checkable
class GenerationBackend(Protocol):
    """What `LocalChatModel` needs from a generator: this engine, or `VLLMBackend`."""

    tokenizer: object
    tokens: int

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Future: ...

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation: ...

    def reseed(self, seed: int) -> None: ...


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    future: Future
    generator: torch.Generator
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    start: int = 0  # first buffer column this row uses

    def __post_init__(self) -> None:
        # the prompt as a tensor once: prefill, prefix lookups and the prefix store share it
        self.ids = torch.tensor(self.prompt_ids, dtype=torch.long)


class RequestTooLarge(ValueError):
    """A single request cannot fit the engine's token budget."""


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    m = min(len(a), len(b))
    same = a[:m] == b[:m]
    return m if bool(same.all()) else int(same.to(torch.uint8).argmin())


class _PrefixStore:
    """Keys/values of recent prompts, for reuse by requests that share a prefix with them.

    An entry is one prompt's ids and one `[layers, 2, kv_heads, length, head_dim]` tensor.
    Lookup is a longest-common-prefix scan over the entries (a few dozen; one vectorised
    comparison each), which is cheap next to one prefilled token.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: collections.OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = collections.OrderedDict()
        self._next_key = 0

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

    def lookup(self, ids: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """The longest prefix of `ids` some entry holds, and that entry's keys/values."""
        best, best_key = 0, None
        for key, (stored, _) in self._entries.items():
            if min(len(stored), len(ids)) <= best:
                continue
            n = _common_prefix(stored, ids)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key][1]

    def insert(self, ids: torch.Tensor, kv: torch.Tensor) -> None:
        """Store a prompt; entries that are prefixes of it are dropped (it serves them too)."""
        if len(ids) > self.max_tokens:
            return
        for key, (stored, _) in list(self._entries.items()):
            if _common_prefix(stored, ids) == min(len(stored), len(ids)):
                if len(stored) >= len(ids):  # already covered
                    self._entries.move_to_end(key)
                    return
                self.tokens -= len(stored)
                del self._entries[key]
        while self._entries and self.tokens + len(ids) > self.max_tokens:
            stored, _ = self._entries.popitem(last=False)[1]
            self.tokens -= len(stored)
        self._entries[self._next_key] = (ids, kv)
        self._next_key += 1
        self.tokens += len(ids)


# -- the slot cache -------------------------------------------------------------------
class _Window:
    """Which part of the slot buffers a forward pass reads and writes."""

    __slots__ = ("r0", "r1", "off", "col")

    def __init__(self) -> None:
        self.r0 = self.r1 = self.off = self.col = 0


@dataclass
class _Segment:
    """Rows r0..r1 compute `ids` [rows, q], writing keys/values at columns col..col+q and
    attending to columns off..col+q where `mask` [rows, col+q-off] is 1."""

    r0: int
    r1: int
    off: int
    col: int
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor


class _SlotLayer(DynamicLayer):
    """One layer's keys/values in preallocated buffers; `update` writes, never concatenates."""

    is_compileable = False

    def __init__(self, window: _Window) -> None:
        super().__init__()
        self.window = window
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        w = self.window
        end = w.col + key_states.shape[-2]
        self.keys[w.r0 : w.r1, :, w.col : end] = key_states
        self.values[w.r0 : w.r1, :, w.col : end] = value_states
        return self.keys[w.r0 : w.r1, :, w.off : end], self.values[w.r0 : w.r1, :, w.off : end]

    def get_seq_length(self) -> int:
        return self.window.col - self.window.off

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.window.col - self.window.off + query_length, 0

    def get_max_length(self) -> int:
        return -1


class _SlotCache(Cache):
    def __init__(self, num_layers: int) -> None:
        self.window = _Window()
        super().__init__(layers=[_SlotLayer(self.window) for _ in range(num_layers)])

    def allocate(self, slots: int, width: int, heads: int, head_dim: int, dtype, device) -> tuple[list, list]:
        old = [(layer.keys, layer.values) for layer in self.layers]
        for layer in self.layers:
            # zeros, not empty: masked columns are multiplied by -inf-biased scores, and
            # uninitialised memory could hold NaNs that survive the masking.
            layer.keys = torch.zeros(slots, heads, width, head_dim, dtype=dtype, device=device)
            layer.values = torch.zeros(slots, heads, width, head_dim, dtype=dtype, device=device)
        return old


class GenerationEngine:
    """Owns a causal LM and decodes queued requests with continuous batching on one worker thread."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        max_batch_size: int = 32,
        max_context: int = 4096,
        seed: int = 0,
        max_tokens_in_flight: int = 32768,
        prefix_cache_tokens: int = 16384,
        prefix_cache_min: int = 16,
        fast_forward: bool = True,
    ) -> None:
        self.model = model
        # The lean forward over the slot buffers (fast_forward.py) where it covers the
        # model; transformers' own forward otherwise, or when asked (fast_forward=False).
        self._fast = FastForward(model) if fast_forward and FastForward.unsupported(model) is None else None
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_context = max_context
        self.max_tokens_in_flight = max_tokens_in_flight
        # 0 disables the prefix cache; a hit shorter than prefix_cache_min is not worth a copy.
        self._prefixes = _PrefixStore(prefix_cache_tokens)
        self.prefix_cache_min = max(1, prefix_cache_min)
        self._weights_state: tuple | None = None
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self._seeds = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._cache_args: dict[int, str] = {}
        # Stop the worker before the interpreter tears torch down under it.
        ref = weakref.ref(self)
        atexit.register(lambda: (engine := ref()) is not None and engine.close())
        self.steps = 0  # decode forward passes, for benchmarks
        self.tokens = 0  # completion tokens produced
        self.stats = collections.Counter()  # rows per step, prefill/decode/sample/relayout seconds
        self._reset_state()

    # -- public API -------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Future:
        """Queue a request; the returned future resolves to a `Generation`."""
        need = len(prompt_ids) + params.max_new_tokens
        if need > self.max_context:
            raise RequestTooLarge(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={params.max_new_tokens} "
                f"exceeds the engine's max_context={self.max_context}"
            )
        if need > self.max_tokens_in_flight:
            raise RequestTooLarge(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={params.max_new_tokens} "
                f"exceeds the engine's max_tokens_in_flight={self.max_tokens_in_flight}"
            )
        if not prompt_ids:
            raise ValueError("empty prompt")
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

    # -- worker state -----------------------------------------------------------
    def _reset_state(self) -> None:
        self._rows: list[_Request] = []
        self._pending: collections.deque[_Request] = collections.deque()
        self._admitting: list[_Request] = []
        self._cache: _SlotCache | None = None
        self._slots = 0  # allocated rows
        self._width = 0  # allocated columns
        self._mask = self._pos = self._next = None

    def _cache_arg(self, model) -> str:
        # transformers 5.x renamed the cache argument `past_key_values` -> `cache`; a peft
        # wrapper's forward takes **kwargs and passes either through.
        key = id(model)
        if key not in self._cache_args:
            params = inspect.signature(model.forward).parameters
            self._cache_args[key] = "cache" if "cache" in params or "past_key_values" not in params else "past_key_values"
            base = getattr(model, "get_base_model", None)
            if base is not None:
                self._cache_args[key] = self._cache_arg(base())
        return self._cache_args[key]

    def _forward(self, segments: list[_Segment]) -> torch.Tensor:
        """Last-position logits of every row of every segment, in row order."""
        if self._fast is not None:
            return self._fast(self._cache.layers, segments)
        model, window, logits = self.model, self._cache.window, []
        for seg in segments:  # transformers' forward: one pass per segment, through _SlotLayer
            window.r0, window.r1, window.off, window.col = seg.r0, seg.r1, seg.off, seg.col
            out = model(
                input_ids=seg.ids,
                attention_mask=seg.mask,
                position_ids=seg.positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg(model): self._cache},
            )
            logits.append(out.logits[:, -1, :])
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    # -- worker -----------------------------------------------------------------
    def _serve(self) -> None:
        closing = False
        while True:
            # Gather: block while idle (then give concurrent callers 5 ms to join),
            # otherwise only take what is already queued.
            if not self._rows and not self._pending:
                if closing:
                    return
                item = self._queue.get()
                if item is None:
                    return
                self._pending.append(item)
                deadline = time.monotonic() + 0.005
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        item = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                    if item is None:
                        closing = True
                        break
                    self._pending.append(item)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    self._pending.append(item)
            self._admitting = []
            try:
                with torch.inference_mode():
                    if self._pending and len(self._rows) < self.max_batch_size:
                        self._admit()
                    if self._rows or self._admitting:
                        self._step()
                        self._retire()
            except BaseException as exc:  # surface the error to every waiting caller
                for req in self._rows + self._admitting:
                    if not req.future.done():
                        req.future.set_exception(exc)
                pending = self._pending
                self._reset_state()
                self._pending = pending

    # -- admission and layout ---------------------------------------------------
    def _geometry(self) -> tuple[int, int, torch.dtype, torch.device]:
        config = self.model.config
        config = getattr(config, "get_text_config", lambda: config)()
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        param = next(self.model.parameters())
        return heads, head_dim, param.dtype, param.device

    def _remaining(self, req: _Request) -> int:
        return req.params.max_new_tokens - len(req.completion_ids)

    def _admit(self) -> list[_Request]:
        """Move queued requests into free slots (prefilled), as many as the limits allow."""
        window = self._cache.window if self._cache is not None else None
        rows = len(self._rows)
        live = (window.col - window.off) if rows else 0
        right = max((self._remaining(r) for r in self._rows), default=0)
        chosen: list[_Request] = []
        left = live
        while self._pending and rows + len(chosen) < self.max_batch_size:
            req = self._pending[0]
            if chosen and self._prefix_cache_on:
                # Its best prefix is a prompt admitted in this same pass, whose keys and
                # values exist only after this step: it joins one step later and reuses them
                # (the G copies of a group's first prompt are prefilled once, not G times).
                same = max(_common_prefix(req.ids, c.ids) for c in chosen)
                if min(same, len(req.ids) - 1) >= self.prefix_cache_min and same > self._prefixes.lookup(req.ids)[0]:
                    break
            new_left = max(left, len(req.prompt_ids))
            new_right = max(right, req.params.max_new_tokens)
            if (rows + len(chosen) + 1) * (new_left + new_right) > self.max_tokens_in_flight and (rows or chosen):
                break
            chosen.append(self._pending.popleft())
            left, right = new_left, new_right
        if not chosen:
            return []
        self._admitting = chosen  # failed together with the running rows if the prefill raises
        needed = rows + len(chosen)
        fits = (
            self._cache is not None
            and self._slots >= needed
            and window.col + 1 >= left  # new prompts end at column col (inclusive)
            and self._width - window.col >= right
        )
        if not fits:
            self._relayout(needed, left, right)
        return chosen

    def _relayout(self, rows_needed: int, left: int, right: int) -> None:
        """(Re)allocate the buffers and copy the live window so that `left` columns end at `col`."""
        t0 = time.perf_counter()
        heads, head_dim, dtype, device = self._geometry()
        num_layers = self.model.config.get_text_config().num_hidden_layers
        rows = len(self._rows)
        old_window = self._cache.window if self._cache is not None else _Window()
        live = old_window.col - old_window.off if rows else 0
        # Geometric margins (half the width again, rows rounded up to a power of two that
        # also covers the queue) keep re-layouts rare; the buffers are zeroed on every
        # allocation, so they are not sized to the whole token budget up front: 32 slots
        # of the 135M model's 30 layers at 1,000 columns are 1.5 GB to clear (~0.2 s).
        width = max(left, live) + right
        width += min(max(64, width // 2), max(0, self.max_tokens_in_flight // max(rows_needed, 1) - width))
        want = 1 << (rows_needed + len(self._pending) - 1).bit_length()
        slots = min(self.max_batch_size, max(rows_needed, min(want, self.max_tokens_in_flight // width)))
        if self._cache is None or len(self._cache.layers) != num_layers:
            self._cache = _SlotCache(num_layers)
        window = self._cache.window
        old = self._cache.allocate(slots, width, heads, head_dim, dtype, device)
        col = max(left, live)
        mask = torch.zeros(slots, width, dtype=torch.long, device=device)
        pos = torch.zeros(slots, dtype=torch.long, device=device)
        nxt = torch.full((slots,), self.pad_id, dtype=torch.long, device=device)
        if rows:
            src = slice(old_window.off, old_window.col)
            dst = slice(col - live, col)
            for layer, (k, v) in zip(self._cache.layers, old):
                layer.keys[:rows, :, dst] = k[:rows, :, src]
                layer.values[:rows, :, dst] = v[:rows, :, src]
            mask[:rows, dst] = self._mask[:rows, src]
            pos[:rows], nxt[:rows] = self._pos[:rows], self._next[:rows]
            shift = (col - live) - old_window.off
            for req in self._rows:
                req.start += shift
        window.off = col - live if rows else col
        window.col = col
        self._mask, self._pos, self._next = mask, pos, nxt
        self._slots, self._width = slots, width
        self.stats["relayouts"] += 1
        self.stats["relayout_s"] += time.perf_counter() - t0

    def _weights_changed(self) -> bool:
        """True when the function the model computes may have changed since the last call:
        a parameter updated in place (optimizer step, load) or replaced, or a peft adapter
        toggled (`disable_adapter()`, `set_adapter`, merge)."""
        state = (
            tuple((id(p), p._version) for p in self.model.parameters()),
            tuple(flags for m in self.model.modules() if (flags := lora_state(m))),
        )
        changed = state != self._weights_state
        self._weights_state = state
        return changed

    def _place(self, chosen: list[_Request]) -> list[_Segment]:
        """Put admitted requests into slots R.. and describe what the next forward computes.

        Every prompt is right-aligned to end at column `col` (inclusive), where the running
        rows write their next token, so after the forward every row continues at col + 1.
        A request that shares a prefix with a stored prompt gets those keys/values copied
        into its slot and computes only the rest. Three kinds of segment result:
        * one token left to compute (the G copies of a group's first prompt): the row
          joins the running rows' decode segment;
        * no reusable prefix: one left-padded batch;
        * a longer suffix: one segment per row (rows differ in where their suffix starts).
        """
        if self._weights_changed():
            self._prefixes.clear()
            if self._fast is not None:
                self._fast.refresh()
        window = self._cache.window
        col, device = window.col, self._mask.device
        running = len(self._rows)
        joining, misses, suffixes = [], [], []  # (request, reused tokens, stored keys/values)
        for req in chosen:
            n, kv = self._prefixes.lookup(req.ids) if self._prefix_cache_on else (0, None)
            n = min(n, len(req.ids) - 1)  # at least one token is computed: its logits start decoding
            if n < self.prefix_cache_min:
                misses.append((req, 0, None))
            else:
                (joining if n == len(req.ids) - 1 else suffixes).append((req, n, kv))
        plans = joining + misses + suffixes  # their slots, in this order, from row `running` on
        for row, (req, n, kv) in enumerate(plans, start=running):
            req.start = start = col + 1 - len(req.ids)
            if n:
                for layer, (k, v) in zip(self._cache.layers, kv):
                    layer.keys[row, :, start : start + n] = k[:, :n]
                    layer.values[row, :, start : start + n] = v[:, :n]
            self._mask[row] = 0
            self._mask[row, start : col + 1] = 1
            self.stats["prefill_tokens"] += len(req.ids) - n
            self.stats["prefix_tokens_reused"] += n
        segments = []
        r0 = running + len(joining)
        if r0:
            for row, (req, _, _) in enumerate(joining, start=running):
                self._next[row] = req.prompt_ids[-1]
                self._pos[row] = len(req.ids) - 1
            segments.append(self._decode_segment(r0, min(r.start for r in self._rows + [p[0] for p in joining])))
        if misses:
            longest = max(len(r.ids) for r, _, _ in misses)
            ids = torch.full((len(misses), longest), self.pad_id, dtype=torch.long)
            for i, (req, _, _) in enumerate(misses):
                ids[i, longest - len(req.ids) :] = req.ids
            off = col + 1 - longest
            mask = self._mask[r0 : r0 + len(misses), off : col + 1]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            segments.append(_Segment(r0, r0 + len(misses), off, off, ids.to(device), mask, positions))
            r0 += len(misses)
        for row, (req, n, _) in enumerate(suffixes, start=r0):
            positions = torch.arange(n, len(req.ids), device=device)[None]
            segments.append(_Segment(row, row + 1, req.start, req.start + n, req.ids[n:][None].to(device),
                                     self._mask[row : row + 1, req.start : col + 1], positions))
        self._rows.extend(p[0] for p in plans)
        return segments

    def _step(self) -> None:
        """One forward pass: the running rows' decode step fused with the admitted requests'
        prefills (the weights are read once for both), then one sampled token per row."""
        t0 = time.perf_counter()
        window = self._cache.window
        running, admitted = len(self._rows), self._admitting
        col = window.col
        if col >= self._width:  # cannot happen: admission reserves every row's remaining tokens
            raise RuntimeError("slot cache overflow")
        segments = self._place(admitted) if admitted else [self._decode_segment(running, window.off)]
        logits = self._forward(segments)
        rows = len(self._rows)
        window.r0, window.r1, window.col = 0, rows, col + 1
        window.off = min(r.start for r in self._rows)
        self._pos[:running] += 1
        for row in range(running, rows):
            self._pos[row] = len(self._rows[row].ids)
            self._store(row, self._rows[row])
        # prefill_s: forwards that prefilled (with the running rows' decode step fused in);
        # decode_s: decode-only forwards, decode_steps of them
        self.stats["prefill_s" if admitted else "decode_s"] += time.perf_counter() - t0
        self.stats["prefills" if admitted else "decode_steps"] += 1
        if running:
            self.steps += 1
            self.stats["rows"] += running
        self._next[:rows] = self._sample(self._rows, logits)

    def _decode_segment(self, rows: int, off: int) -> _Segment:
        """Rows 0..rows-1 each compute their next token (`_next`) at the write column."""
        col = self._cache.window.col
        self._mask[:rows, col] = 1
        return _Segment(0, rows, off, col, self._next[:rows, None], self._mask[:rows, off : col + 1], self._pos[:rows, None])

    @property
    def _prefix_cache_on(self) -> bool:
        return self._prefixes.max_tokens > 0

    def _store(self, row: int, req: _Request) -> None:
        if not self._prefix_cache_on:
            return
        cols = slice(req.start, req.start + len(req.prompt_ids))
        kv = torch.stack([torch.stack([layer.keys[row, :, cols], layer.values[row, :, cols]]) for layer in self._cache.layers])
        self._prefixes.insert(req.ids, kv)

    def _retire(self) -> None:
        """Resolve finished rows and fill their slots by moving the last rows into them."""
        finished = [i for i, r in enumerate(self._rows) if r.finish_reason is not None]
        if not finished:
            return
        for i in finished:
            r = self._rows[i]
            r.future.set_result(Generation(r.prompt_ids, r.completion_ids, r.logprobs, r.finish_reason))
        keep = len(self._rows) - len(finished)
        holes = [i for i in finished if i < keep]
        movers = [i for i in range(keep, len(self._rows)) if self._rows[i].finish_reason is None]
        if holes:
            window = self._cache.window
            cols = slice(window.off, window.col)
            dst = torch.tensor(holes)
            src = torch.tensor(movers)
            for layer in self._cache.layers:
                layer.keys[dst, :, cols] = layer.keys[src, :, cols]
                layer.values[dst, :, cols] = layer.values[src, :, cols]
            self._mask[dst] = self._mask[src]
            self._pos[dst] = self._pos[src]
            self._next[dst] = self._next[src]
            for h, m in zip(holes, movers):
                self._rows[h] = self._rows[m]
        del self._rows[keep:]
        window = self._cache.window
        window.r0, window.r1 = 0, keep
        if keep:
            window.off = min(r.start for r in self._rows)

    def _sample(self, active: list[_Request], logits: torch.Tensor) -> torch.Tensor:
        """Draw one token per row, vectorised, with each request's own RNG; record id and log-prob.

        Sampling is inverse-CDF: each sampled row draws one uniform number from its own
        generator and takes the first token whose cumulative probability exceeds it, so
        a request's tokens depend only on its seed and its logits, never on its batch.
        """
        t0 = time.perf_counter()
        n = len(active)
        temps = [r.params.temperature for r in active]
        logits = logits.float()
        if any(t != 1.0 and t > 0 for t in temps):
            scale = torch.tensor([t if t > 0 else 1.0 for t in temps], dtype=torch.float32, device=logits.device)
            logits = logits / scale[:, None]
        logp = torch.log_softmax(logits, -1)
        chosen = logp.argmax(-1)
        sampled = [i for i, t in enumerate(temps) if t > 0]
        if sampled:
            u = torch.tensor([float(torch.rand((), generator=active[i].generator)) for i in sampled], device=logits.device)
            idx = torch.tensor(sampled, device=logits.device) if len(sampled) < n else None
            probs = (logp if idx is None else logp[idx]).exp()
            top_p = [active[i].params.top_p for i in sampled]
            if any(p < 1.0 for p in top_p):
                sorted_p, order = probs.sort(-1, descending=True)
                tp = torch.tensor(top_p, device=logits.device)
                cut = (sorted_p.cumsum(-1) - sorted_p > tp[:, None]) & (tp[:, None] < 1.0)
                sorted_p = sorted_p.masked_fill(cut, 0.0)
                cdf = sorted_p.cumsum(-1)
                pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)
                tokens = order.gather(-1, pick)[:, 0]
            else:
                cdf = probs.cumsum(-1)
                tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)[:, 0]
            if idx is None:
                chosen = tokens
            else:
                chosen[idx] = tokens
        token_lp = logp.gather(-1, chosen[:, None])[:, 0].tolist()
        for req, token, lp in zip(active, chosen.tolist(), token_lp):
            p = req.params
            req.completion_ids.append(token)
            req.logprobs.append(lp)
            if token in self.eos_ids:
                req.finish_reason = "stop"
            elif p.stop and self._hit_stop(req):
                req.finish_reason = "stop"
            elif len(req.completion_ids) >= p.max_new_tokens:
                req.finish_reason = "length"
        self.tokens += n
        self.stats["sample_s"] += time.perf_counter() - t0
        return chosen

    def _hit_stop(self, req: _Request) -> bool:
        tail = self.tokenizer.decode(req.completion_ids[-16:], skip_special_tokens=True)
        return any(s in tail for s in req.params.stop)
