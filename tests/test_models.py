"""The local model layer on a tiny random Llama: exact ids and log-probs, batching, seeds."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import weakref

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from agentflow.models import GenerationEngine, LocalChatModel, RequestTooLarge, SamplingParams, tiny_model
from agentflow.models.engine.kv_cache import KVShape, SlotCache
from agentflow.models.engine.scheduler import Layout
from tests.conftest import reference_logprobs, submit_joining_mid_flight


@pytest.fixture
def engine(tokenizer, fast_forward):
    return GenerationEngine(tiny_model(vocab_size=len(tokenizer)), tokenizer, seed=0, fast_forward=fast_forward)


def _prompts(tokenizer, n):
    texts = [f"Question {i}: " + "what is the meaning of this? " * (1 + i % 4) for i in range(n)]
    return [tokenizer.encode(t) for t in texts]


def test_batched_greedy_matches_one_at_a_time(engine, tokenizer):
    prompts = _prompts(tokenizer, 6)
    params = SamplingParams(max_new_tokens=12)
    alone = [engine.generate(p, params) for p in prompts]
    together = [f.result() for f in [engine.submit(p, params) for p in prompts]]
    for a, b in zip(alone, together):
        assert a.prompt_ids == b.prompt_ids
        assert a.completion_ids == b.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_match_a_full_forward_pass(engine, tokenizer, temperature):
    prompt = _prompts(tokenizer, 1)[0]
    out = engine.generate(prompt, SamplingParams(max_new_tokens=10, temperature=temperature, seed=3))
    expected = reference_logprobs(engine.model, prompt, out.completion_ids, temperature)
    assert out.logprobs == pytest.approx(expected, abs=1e-4)


def test_seeds_make_samples_reproducible(engine, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    sample = lambda seed: engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=1.0, seed=seed))
    assert sample(1).completion_ids == sample(1).completion_ids
    assert sample(1).completion_ids != sample(2).completion_ids
    # Unseeded requests draw from the engine's seed stream: reseeding replays it.
    engine.reseed(7)
    first = engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=1.0)).completion_ids
    engine.reseed(7)
    assert engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=1.0)).completion_ids == first


def test_limits(engine, tokenizer):
    out = engine.generate(_prompts(tokenizer, 1)[0], SamplingParams(max_new_tokens=5))
    assert len(out.completion_ids) <= 5 and out.finish_reason in {"length", "stop"}
    with pytest.raises(RequestTooLarge, match="max_context"):
        engine.submit([1] * 4000, SamplingParams(max_new_tokens=200))


def test_chat_model_reports_tokens_and_continues_a_prefix(tiny_llm):
    messages = [SystemMessage("sys"), HumanMessage("hi"), AIMessage("Sub-Goal:")]
    result = tiny_llm.generate([messages]).generations[0][0]
    info = result.generation_info
    prompt_ids, prefix = tiny_llm.encode_messages(messages)
    assert info["prompt_token_ids"] == prompt_ids and prefix == "Sub-Goal:"
    assert tiny_llm.tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\nSub-Goal:")
    assert len(info["completion_token_ids"]) == len(info["logprobs"]) > 0
    assert result.text == tiny_llm.tokenizer.decode(info["completion_token_ids"], skip_special_tokens=True)


def test_concurrent_callers_get_their_own_outputs(tiny_llm, tokenizer):
    questions = [f"question number {i} " * (i % 3 + 1) for i in range(12)]
    solo = [tiny_llm.invoke([HumanMessage(q)]).content for q in questions]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = tiny_llm.invoke([HumanMessage(questions[i])]).content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(12)] == solo


def test_engine_errors_reach_the_caller(engine):
    with pytest.raises(Exception):
        engine.generate([10**9], SamplingParams(max_new_tokens=2))  # token id outside the vocabulary
    assert engine.generate([5, 6, 7], SamplingParams(max_new_tokens=2)).completion_ids  # still serving


def test_requests_joining_mid_flight_match_one_at_a_time(engine, tokenizer):
    """Continuous batching: a request admitted while others decode gets the same ids and log-probs."""
    prompts = _prompts(tokenizer, 6)
    params = [SamplingParams(max_new_tokens=4 + 5 * i, temperature=0.7 * (i % 2), seed=i) for i in range(6)]
    alone = [engine.generate(p, s) for p, s in zip(prompts, params)]
    for a, f in zip(alone, submit_joining_mid_flight(engine, prompts, params)):
        b = f.result()
        assert a.completion_ids == b.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.parametrize("prefix_cache_tokens", [0, 4096])
def test_token_budget_and_prefix_cache_keep_outputs(tokenizer, prefix_cache_tokens, fast_forward):
    model = tiny_model(vocab_size=len(tokenizer))
    small = GenerationEngine(model, tokenizer, seed=0, max_tokens_in_flight=160,
                             prefix_cache_tokens=prefix_cache_tokens, prefix_cache_min=8, fast_forward=fast_forward)
    free = GenerationEngine(model, tokenizer, seed=0, prefix_cache_tokens=0)
    shared = tokenizer.encode("A long shared system prompt with tool cards and the question. " * 2)
    prompts = [shared + tokenizer.encode(f" variant {i}" * (i + 1)) for i in range(5)]
    params = SamplingParams(max_new_tokens=10)
    expected = [free.generate(p, params) for p in prompts]
    got = [f.result() for f in [small.submit(p, params) for p in prompts]]  # do not all fit at once: some wait
    for a, b in zip(expected, got):
        assert a.completion_ids == b.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert (small.stats["prefix_tokens_reused"] > 0) == bool(prefix_cache_tokens)
    with pytest.raises(RequestTooLarge, match="max_tokens_in_flight"):
        small.submit([1] * 150, SamplingParams(max_new_tokens=20))


def _graph_like_prompts(tokenizer):
    """What a group of graph runs sends: G copies of a first prompt, then longer turns of it."""
    system = tokenizer.encode("System: you plan with tools. Tools: calculator, python, search. " * 3)
    first = system + tokenizer.encode("Question: what is 12 * 34?\nSteps so far: none")
    later = [system + tokenizer.encode(f"Question: what is 12 * 34?\nSteps so far: step {i} used python") for i in range(3)]
    return [first] * 4 + later


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_prefix_cache_matches_uncached_engine(tokenizer, temperature, fast_forward):
    """Reused prefixes give the ids and log-probs of a full prefill, alone or batched."""
    model = tiny_model(vocab_size=len(tokenizer))
    cached = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8, fast_forward=fast_forward)
    plain = GenerationEngine(model, tokenizer, seed=0, prefix_cache_tokens=0)
    prompts = _graph_like_prompts(tokenizer)
    params = [SamplingParams(max_new_tokens=8, temperature=temperature, seed=i) for i in range(len(prompts))]
    expected = [plain.generate(p, s) for p, s in zip(prompts, params)]
    together = [f.result() for f in [cached.submit(p, s) for p, s in zip(prompts, params)]]
    again = [cached.generate(p, s) for p, s in zip(prompts, params)]  # now every prompt is stored whole
    for a, b, c in zip(expected, together, again):
        assert a.completion_ids == b.completion_ids == c.completion_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.logprobs == pytest.approx(c.logprobs, abs=1e-4)
    total = sum(len(p) for p in prompts)
    assert cached.stats["prefix_tokens_reused"] > total  # the group's copies and the second pass
    assert plain.stats["prefix_tokens_reused"] == 0


def test_prefix_cache_is_dropped_when_weights_change(tokenizer, fast_forward):
    """An optimizer step between rollouts must not leave keys/values (or packed weights) of the old weights in use."""
    model = tiny_model(vocab_size=len(tokenizer))
    engine = GenerationEngine(model, tokenizer, seed=0, prefix_cache_min=8, fast_forward=fast_forward)
    prompt = _graph_like_prompts(tokenizer)[0]
    params = SamplingParams(max_new_tokens=8)
    before = engine.generate(prompt, params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # in place, as an optimizer does
    after = engine.generate(prompt, params)
    fresh = GenerationEngine(model, tokenizer, seed=0, prefix_cache_tokens=0, fast_forward=False).generate(prompt, params)
    assert after.completion_ids == fresh.completion_ids
    assert after.logprobs == pytest.approx(fresh.logprobs, abs=1e-4)
    assert after.logprobs != pytest.approx(before.logprobs, abs=1e-4)


def test_prefix_store_stays_within_its_token_budget(tokenizer):
    engine = GenerationEngine(tiny_model(vocab_size=len(tokenizer)), tokenizer, seed=0,
                              prefix_cache_tokens=100, prefix_cache_min=8)
    for i in range(6):
        engine.generate(tokenizer.encode(f"prompt number {i} " * 8), SamplingParams(max_new_tokens=2))
        assert engine._prefixes.tokens <= 100
    assert engine._prefixes.tokens > 0


def test_slot_cache_window_follows_its_rows():
    """Attention reads from the earliest start of any live row, through placement,
    retirement and re-layout; rows keep their keys/values and masks when they move."""
    cache = SlotCache(num_layers=2, pad_id=0)
    shape = KVShape(heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))
    cache.relayout(Layout(slots=4, width=16, col=10), shape)
    for length in (5, 9, 3):
        cache.add_row(length)  # prompts end at column 10
    assert cache.rows == 3 and cache.starts == [6, 2, 8]
    assert (cache.off, cache.live) == (2, 8)
    assert cache.mask[:3].sum(-1).tolist() == [5, 9, 3]
    for layer in cache.layers:  # each row's keys/values hold its row number, say
        layer.keys[:3] = layer.values[:3] = torch.arange(3.0)[:, None, None, None]
    cache.advance(1, [], [5, 9, 3])
    assert cache.col == 11 and cache.pos[:3].tolist() == [5, 9, 3]

    cache.move_rows([(1, 2)], keep=2)  # row 1 finished: row 2 takes its slot
    assert cache.starts == [6, 8] and cache.off == 6
    assert bool((cache.layers[0].keys[1, :, 2:11] == 2).all())
    assert cache.mask[1].tolist() == cache.mask[2].tolist() and cache.pos[1] == 3

    cache.relayout(Layout(slots=2, width=40, col=30), shape)  # the live window now ends at 30
    assert cache.starts == [25, 27] and (cache.off, cache.live) == (25, 5)
    assert cache.layers[0].keys.shape == (2, 1, 40, 2)
    assert bool((cache.layers[0].keys[1, :, 25:30] == 2).all()) and bool((cache.layers[0].keys[:, :, :25] == 0).all())
    assert cache.mask[:2, 25:30].sum(-1).tolist() == [5, 3] and cache.pos[:2].tolist() == [5, 3]

    cache.move_rows([], keep=0)
    assert cache.rows == 0 and cache.live == 0


def test_relayout_frees_each_layer_before_allocating_the_next(monkeypatch):
    """A re-layout copies layer by layer, dropping each old buffer once copied: the copy
    needs one layer of extra memory, not a second cache (fp32 G=32: ~0.9 GB of keys/values)."""
    from agentflow.models.engine import kv_cache

    cache = SlotCache(num_layers=3, pad_id=0)
    shape = KVShape(heads=1, head_dim=2, dtype=torch.float32, device=torch.device("cpu"))
    cache.relayout(Layout(slots=2, width=8, col=4), shape)
    cache.add_row(3)
    cache.advance(1, [], [3])  # the prompt's 3 columns (2..4) are live now
    for layer in cache.layers:
        layer.keys[0] = layer.values[0] = 7.0
    old = [(weakref.ref(layer.keys), weakref.ref(layer.values)) for layer in cache.layers]
    allocated, alive_at_allocation = [], []
    real_zeros = torch.zeros

    def zeros(*size, **kwargs):
        if len(size) == 4:  # a layer's keys buffer
            alive_at_allocation.append(sum(k() is not None for k, _ in old))
            allocated.append(size)
        return real_zeros(*size, **kwargs)

    monkeypatch.setattr(kv_cache.torch, "zeros", zeros)
    cache.relayout(Layout(slots=4, width=12, col=8), shape)
    monkeypatch.undo()
    assert len(allocated) == 3 and alive_at_allocation == [3, 2, 1]
    assert all(k() is None and v() is None for k, v in old)
    assert bool((cache.layers[2].keys[0, :, 5:8] == 7).all()) and cache.starts == [5]


def test_close_frees_buffers_and_a_later_submit_restarts(tokenizer):
    """A closed engine holds no keys/values (graphs keep engines alive in reference cycles
    until a full collection); a later request allocates them again and gets the same answer."""
    engine = GenerationEngine(tiny_model(vocab_size=len(tokenizer)), tokenizer, seed=0, prefix_cache_min=8)
    prompt = _graph_like_prompts(tokenizer)[0]
    params = SamplingParams(max_new_tokens=6)
    first = engine.generate(prompt, params)
    assert engine._cache.slots > 0 and engine._prefixes.tokens > 0
    engine.close()
    assert engine._cache.slots == 0 and engine._prefixes.tokens == 0
    again = engine.generate(prompt, params)
    assert again.completion_ids == first.completion_ids
    assert again.logprobs == pytest.approx(first.logprobs, abs=1e-4)


_FREED_BUFFER_SCRIPT = """
import os, sys, torch
if sys.argv[1] == "engine":
    from transformers import AutoTokenizer
    from agentflow.models import GenerationEngine, tiny_model
    from agentflow.models.loading import resolve_model_path
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path())
    GenerationEngine(tiny_model(vocab_size=len(tokenizer)), tokenizer)
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
big = torch.ones(20 << 18); del big  # 20 MB: mapped; by default its free raises glibc's threshold to 20 MB
buffer = torch.ones(12 << 18)        # 12 MB: one fp32 slot layer of 16 rows x 1,000 columns
before = rss_mb(); del buffer
print(before - rss_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_an_engine_makes_freed_buffers_leave_the_process():
    """Once an engine exists, a freed multi-MB buffer goes back to the OS at once
    (`engine._fix_mmap_threshold`); glibc's default keeps it resident after a larger block
    was freed, which is how re-layouts and prefix-store evictions piled up fp32 RSS.
    Separate processes: the threshold is process-wide and set once."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}  # set, the engine leaves it
    freed = {}
    for mode in ("plain", "engine"):
        out = subprocess.run([sys.executable, "-c", _FREED_BUFFER_SCRIPT, mode], capture_output=True, text=True, check=True, env=env)
        freed[mode] = float(out.stdout.split()[-1])
    assert freed["engine"] > 11.5, freed
    assert freed["plain"] < 1, freed  # the default the engine changes (if this fails, glibc changed)
