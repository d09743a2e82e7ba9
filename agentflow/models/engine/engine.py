"""`GenerationEngine`: decodes concurrent requests together (continuous batching) on one worker thread.

Many graph runs are in flight at once (a Flow-GRPO group, an eval's concurrency), and
each node call is one chat-model request. Decoding a 135M model on CPU is bound by
per-step overhead, not arithmetic (docs/design.md §4): one forward pass for 8 or 32
active sequences costs little more than a forward pass for one. The engine therefore
owns the model, queues requests from any thread, and a single worker runs one forward
pass per decode step for every active sequence. New requests join *between decode steps*
(they are prefilled and written into free slots of the running batch), finished ones
leave at once: continuous batching, so a graph run's next node call never waits for a wave.

Why our own loop, not what transformers offers:

* `model.generate` has one RNG and one stop rule per batch, and a batch is fixed for its
  lifetime; we need, per request, the exact sampled ids with their log-probs under the
  tempered distribution, a per-request RNG (a sample must not depend on what it was
  batched with) and per-request stop/length limits, with requests joining mid-flight.
* transformers' continuous batching (`generate_batch`, paged cache) measured slower than
  plain `generate` here (docs/design.md §4: 35 vs 144 tok/s at 32 requests, bf16;
  re-measured by `benchmarks/rollout_throughput.py --compare-generate-batch`), and it
  reports no per-token log-probs of the sampled tokens nor per-request RNGs.
* its caches do not fit either (see `kv_cache`).

One step of the worker: the scheduler (`scheduler`) admits queued requests; the slot
cache (`kv_cache`) is re-laid out if the scheduler says so, and the admitted prompts are
placed in free slots, reusing stored prefixes (`prefix_cache`); the model runner
(`runner`) computes the running rows' decode step and the admitted prefills in one
forward pass (one pass reads the weights once for both: on this CPU a decode step of 5
rows costs ~100 ms, mostly reading weights; folding it into the ~45 prefills of a G=8
rollout saves that much per admission); each decoding row also carries the tokens its
`drafter` expects next, and the sampler (`sampler`) keeps those it agrees with plus one
token after them (`_sample`: the tokens are the ones one step at a time would give);
finished rows retire.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import functools
import os
import queue
import random
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from agentflow.models.engine import sampler
from agentflow.models.engine.drafter import Drafter
from agentflow.models.engine.kv_cache import SlotCache
from agentflow.models.engine.prefix_cache import PrefixStore, common_prefix
from agentflow.models.engine.runner import ModelRunner
from agentflow.models.engine.scheduler import Layout, Scheduler, Sequence
from agentflow.models.engine.types import Generation, RequestTooLarge, SamplingParams
from agentflow.models.loading import bf16_is_fast


_MMAP_THRESHOLD = 4 << 20  # bytes; glibc's M_MMAP_THRESHOLD, see _fix_mmap_threshold
_mmap_threshold_fixed = False


def _fix_mmap_threshold() -> None:
    """Have glibc serve allocations of 4 MB or more that its free heap cannot hold with
    their own mappings, returned to the OS when freed (once per process; left alone if
    MALLOC_MMAP_THRESHOLD_ is set).

    By default glibc raises that threshold to the size of each mapped block freed (up to
    32 MB), so after the first re-layout the slot buffers (one per layer: 4-25 MB in fp32)
    and the prefix store's entries (~14 MB a prompt) come from the heap, where freed
    buffers stay resident between the larger ones that replace them. Measured (fp32,
    G=8, G=8, G=32 rollouts in one process, AMX machine): peak RSS 4,067 MB by default,
    3,556 with the threshold at 4 MB, 4,241 at 16 MB; rollout walls unchanged within noise
    (docs/design.md §4, "Memory")."""
    global _mmap_threshold_fixed
    if _mmap_threshold_fixed or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _mmap_threshold_fixed = True
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, _MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _return_freed_memory() -> None:
    """Ask glibc to hand freed heap memory back to the OS (no-op elsewhere).

    Each engine's worker thread allocates its buffers in its own malloc arena; what it
    frees stays mapped there, and a later engine's thread does not reuse it. Measured
    (bf16, 4 engines of 24 rows used and closed in turn): peak RSS 1727 MB without the
    trim, 1359 MB (flat after the first engine) with it (docs/design.md §4)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.cache
def _positions_at_bandwidth(dtype: torch.dtype, device: str) -> int:
    """See `GenerationEngine._step_positions` (cached: `bf16_is_fast` reads /proc/cpuinfo)."""
    fast = torch.device(device).type == "cuda" or (dtype == torch.bfloat16 and bf16_is_fast(device))
    return 64 if fast else 16


@dataclass(eq=False, kw_only=True)
class _Request(Sequence):
    """A queued or running request: its sequence state, its caller's future, its RNG, and
    its drafter once it runs (when the engine drafts)."""

    future: Future
    generator: torch.Generator
    drafter: Drafter | None = None

    def __post_init__(self) -> None:
        # the prompt as a tensor once: prefill, prefix lookups and the prefix store share it
        self.ids = torch.tensor(self.prompt_ids, dtype=torch.long)


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
        draft_tokens: int = 4,
        draft_positions: int | None = None,
    ) -> None:
        # The lean forward over the slot buffers (fast_forward.py) where it covers the
        # model; transformers' own forward otherwise, or when asked (fast_forward=False).
        self._runner = ModelRunner(model, fast_forward)
        if self._runner.kv_shape().device.type == "cpu":
            _fix_mmap_threshold()
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.max_tokens_in_flight = max_tokens_in_flight
        # 0 disables the prefix cache; a hit shorter than prefix_cache_min is not worth a copy.
        self._prefixes = PrefixStore(prefix_cache_tokens)
        self.prefix_cache_min = max(1, prefix_cache_min)
        # Speculation: up to this many tokens drafted per row and step from the row's own
        # text (`drafter`), verified in the row's next forward; 0 decodes one token a step.
        self.draft_tokens = max(0, draft_tokens)
        self.draft_positions = draft_positions  # see _step_positions; None: by dtype
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self._seeds = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._scheduler: Scheduler[_Request] = Scheduler(
            max_batch_size,
            max_tokens_in_flight,
            prefix_min=self.prefix_cache_min,
            stored_prefix=(lambda req: self._prefixes.lookup(req.ids)[0]) if self._prefixes.enabled else None,
            shared_prefix=lambda a, b: common_prefix(a.ids, b.ids),
        )
        # Stop the worker before the interpreter tears torch down under it.
        ref = weakref.ref(self)
        atexit.register(lambda: (engine := ref()) is not None and engine.close())
        self.steps = 0  # decode forward passes, for benchmarks
        self.tokens = 0  # completion tokens produced
        self.stats = collections.Counter()  # rows per step, prefill/decode/sample/relayout seconds
        self._reset_state()

    # -- public API -------------------------------------------------------------
    @property
    def model(self) -> PreTrainedModel:
        """The module decoded with. A trainer may swap in its peft wrapper of the same
        model; the lean forward follows (it reaches every layer through its parent module)."""
        return self._runner.model

    @model.setter
    def model(self, model: PreTrainedModel) -> None:
        self._runner.model = model

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
        self._queue.put(_Request(list(prompt_ids), params, future=future, generator=torch.Generator().manual_seed(seed)))
        return future

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        return self.submit(prompt_ids, params).result()

    def close(self) -> None:
        """Let the worker finish what it holds and exit (a later submit restarts it), then
        free the slot buffers and the prefix store.

        An engine often outlives its use by a while: graphs and chat models hold it in
        reference cycles, which Python frees only at a full collection, and that is
        triggered by object counts, not by the hundreds of MB of keys/values it holds
        (docs/design.md §4, "Memory"). A later submit allocates them again."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(None)
            worker.join()
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._prefixes.clear()
                self._reset_state()
                _return_freed_memory()

    def reseed(self, seed: int) -> None:
        """Restart the stream that draws per-request seeds (for reproducible runs)."""
        with self._lock:
            self._seeds = random.Random(seed)

    # -- worker -----------------------------------------------------------------
    def _reset_state(self) -> None:
        """Forget the running batch and its buffers (at start, and after an error); the queue stays."""
        self._scheduler.running.clear()
        self._admitting: list[_Request] = []  # failed together with the running rows if the prefill raises
        if getattr(self, "_cache", None) is not None:
            self._cache.release()  # now, not at the next full garbage collection
        self._cache = SlotCache(self._runner.num_layers, self.pad_id)

    def _serve(self) -> None:
        closing = False
        waiting = self._scheduler.waiting
        while True:
            # Gather: block while idle (then give concurrent callers 5 ms to join),
            # otherwise only take what is already queued.
            if not self._scheduler.running and not waiting:
                if closing:
                    return
                item = self._queue.get()
                if item is None:
                    return
                waiting.append(item)
                deadline = time.monotonic() + 0.005
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        item = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                    if item is None:
                        closing = True
                        break
                    waiting.append(item)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    waiting.append(item)
            self._admitting = []
            try:
                with torch.inference_mode():
                    if waiting:
                        self._admit()
                    if self._scheduler.running or self._admitting:
                        self._step()
                        self._retire()
            except BaseException as exc:  # surface the error to every waiting caller
                for req in self._scheduler.running + self._admitting:
                    if not req.future.done():
                        req.future.set_exception(exc)
                self._reset_state()

    def _admit(self) -> None:
        """Take what the scheduler admits, re-laying out the buffers first if it says so."""
        admission = self._scheduler.admit(self._cache.layout, self._cache.live)
        self._admitting = admission.requests
        if admission.relayout is not None:
            self._relayout(admission.relayout)

    def _relayout(self, layout: Layout) -> None:
        """Re-lay the slot buffers out (at admission, or to make room for drafts), timed."""
        t0 = time.perf_counter()
        self._cache.relayout(layout, self._runner.kv_shape())
        self.stats["relayouts"] += 1
        self.stats["relayout_s"] += time.perf_counter() - t0

    def _place(self, admitted: list[_Request]) -> tuple[int, list, list]:
        """Put admitted requests into slots R.. (the running rows hold 0..R-1).

        Every prompt is right-aligned to end at column `col` (inclusive), where the running
        rows write their next token. A request that shares a prefix with a stored prompt
        gets those keys/values copied into its slot and computes only the rest. Three kinds
        of admitted request result:
        * one token left to compute (the G copies of a group's first prompt): the row
          joins the running rows' decode segment;
        * no reusable prefix ("misses"): one left-padded batch;
        * a longer suffix: one segment per row (rows differ in where their suffix starts).
        Returns how many rows decode (running and joining), the misses' prompts, and
        (row, prompt, reused tokens) for the suffixes: `_step` describes their segments
        after `_drafts`, which may re-lay the buffers out.
        """
        if self._runner.sync_weights():
            self._prefixes.clear()
        cache = self._cache
        joining, misses, suffixes = [], [], []  # (request, reused tokens, stored keys/values)
        for req in admitted:
            n, kv = self._prefixes.lookup(req.ids) if self._prefixes.enabled else (0, None)
            n = min(n, len(req.ids) - 1)  # at least one token is computed: its logits start decoding
            if n < self.prefix_cache_min:
                misses.append((req, 0, None))
            else:
                (joining if n == len(req.ids) - 1 else suffixes).append((req, n, kv))
        plans = joining + misses + suffixes  # their slots, in this order, after the running rows
        for req, n, kv in plans:
            cache.add_row(len(req.ids), kv, n)
            self.stats["prefill_tokens"] += len(req.ids) - n
            self.stats["prefix_tokens_reused"] += n
            if self.draft_tokens:
                req.drafter = Drafter(req.prompt_ids)
        running = len(self._scheduler.running)
        for row, (req, _, _) in enumerate(joining, start=running):
            cache.next[row] = req.prompt_ids[-1]
            cache.pos[row] = len(req.ids) - 1
        self._scheduler.running.extend(req for req, _, _ in plans)
        decoding = running + len(joining)
        first_suffix = decoding + len(misses)
        return decoding, [req.ids for req, _, _ in misses], [
            (row, req.ids, n) for row, (req, n, _) in enumerate(suffixes, start=first_suffix)]

    def _step_positions(self) -> int:
        """How many positions one forward pass computes at little more than the cost of
        one (`draft_positions`, or by the weights' dtype): a decode step reads every
        weight once and is bound by memory bandwidth until its products become bound by
        arithmetic, which for the 135M model on this CPU happens past ~16 positions in
        fp32 (185 GFLOP/s) and past ~40 in bf16 on AMX (measured, 300 columns of context:
        5 rows x 5 positions cost 1.1x of 5 x 1 in bf16, 1.5-2.0x in fp32; docs/design.md
        §4, "Speculation")."""
        if self.draft_positions is not None:
            return self.draft_positions
        shape = self._runner.kv_shape()
        return _positions_at_bandwidth(shape.dtype, str(shape.device))

    def _drafts(self, decoding: int, prefill_positions: int) -> list[list[int]]:
        """Each decoding row's drafts (`drafter`): as many as the step's positions allow
        (`_step_positions`, the prefills' included), cut to the columns the buffers have
        for them, re-laying the buffers out when they have too few (`Scheduler.draft_room`)."""
        rows = self._scheduler.running[:decoding]
        k = min(self.draft_tokens, (self._step_positions() - prefill_positions) // max(decoding, 1) - 1)
        if k <= 0:
            return [[] for _ in rows]
        # a row emits at most `remaining` tokens, one of them sampled after its last draft
        drafts = [req.drafter.propose(min(k, req.remaining - 1)) for req in rows]
        want = max(map(len, drafts), default=0)
        if not want:
            return drafts
        room, layout = self._scheduler.draft_room(self._cache.layout, self._cache.live, want)
        if layout is not None:
            self._relayout(layout)
        return [d[:room] for d in drafts]

    def _step(self) -> None:
        """One forward pass: the decoding rows' next tokens (each row's drafts after its
        token) fused with the admitted requests' prefills (the weights are read once for
        all of them), then the sampled tokens: per decoding row, the drafts the sampler
        agrees with and the token after them."""
        t0 = time.perf_counter()
        cache, admitted = self._cache, self._admitting
        if cache.col >= cache.width:  # cannot happen: admission reserves every row's remaining tokens
            raise RuntimeError("slot cache overflow")
        decoding, misses, suffixes = self._place(admitted) if admitted else (len(self._scheduler.running), [], [])
        prefill_positions = len(misses) * max(map(len, misses), default=0) + sum(len(ids) - n for _, ids, n in suffixes)
        drafts = self._drafts(decoding, prefill_positions)
        segments = [cache.decode_segment(decoding, drafts)] if decoding else []
        if misses:
            segments.append(cache.prefill_segment(decoding, misses))
        segments += [cache.suffix_segment(row, ids, n) for row, ids, n in suffixes]
        logits = self._runner.forward(cache, segments)
        # prefill_s: forwards that prefilled (with the running rows' decode step fused in);
        # decode_s: decode-only forwards, decode_steps of them
        self.stats["prefill_s" if admitted else "decode_s"] += time.perf_counter() - t0
        self.stats["prefills" if admitted else "decode_steps"] += 1
        if decoding:
            self.steps += 1
            self.stats["rows"] += decoding
        t0 = time.perf_counter()
        self._sample(decoding, drafts, logits)
        rows = self._scheduler.running
        if self._prefixes.enabled:
            for row in range(decoding, len(rows)):
                self._prefixes.insert(rows[row].ids, cache.prompt_kv(row, len(rows[row].ids)))
        self.stats["sample_s"] += time.perf_counter() - t0

    def _sample(self, decoding: int, drafts: list[list[int]], logits: torch.Tensor) -> None:
        """Sample and record every row's tokens, then move the buffers on.

        Logits come as the forward returns them: q per decoding row (its token, its drafts,
        padding), then one per prefilled row. Position j of a row is sampled only once the
        row has kept its first j drafts (the token sampled at each earlier position equals
        the next draft), with the row's next uniform: so a row emits exactly the tokens it
        would emit one forward pass at a time (exact speculative sampling: a draft d is kept
        with probability p(d)), and only the positions that decide something are sampled."""
        rows, cache = self._scheduler.running, self._cache
        q = 1 + max(map(len, drafts), default=0)
        kept = [0] * decoding
        active = list(range(len(rows)))  # rows still emitting this step
        for j in range(q):
            at = [r * q + j if r < decoding else decoding * q + r - decoding for r in active]
            # each sampled token takes the next number of its request's own stream
            uniforms = [float(torch.rand((), generator=rows[r].generator)) if rows[r].params.temperature > 0 else 0.0
                        for r in active]
            tokens, logprobs = sampler.sample([rows[r].params for r in active], logits[at], uniforms)
            going = []
            for r, token, logprob in zip(active, tokens, logprobs):
                req = rows[r]
                done = sampler.record(req, token, logprob, self.eos_ids, self.tokenizer)
                if req.drafter is not None:
                    req.drafter.extend([token])
                cache.next[r] = token
                self.tokens += 1
                if r < decoding and not done and j < len(drafts[r]) and token == drafts[r][j]:
                    kept[r] += 1
                    going.append(r)
            active = going
            if not active:
                break
        self.stats["drafted"] += sum(map(len, drafts))
        self.stats["kept"] += sum(kept)
        cache.advance(q, kept, [len(req.ids) for req in rows[decoding:]])

    def _retire(self) -> None:
        """Resolve finished requests and close the gaps they leave in the slots."""
        done, moves = self._scheduler.retire()
        for req in done:
            req.future.set_result(Generation(req.prompt_ids, req.completion_ids, req.logprobs, req.finish_reason))
        if done:
            self._cache.move_rows(moves, len(self._scheduler.running))
