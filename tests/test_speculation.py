"""Prompt-lookup speculation: drafts, the room they take, and outputs that do not depend on them.

The engine tests run on a tiny random Llama, whose greedy (and nearly greedy) outputs
repeat themselves, so drafts are made and kept; each test asserts that they were, so it
cannot pass with speculation silently off.
"""

from __future__ import annotations

import pytest

from agentflow.models import GenerationEngine, SamplingParams, tiny_model
from agentflow.models.engine.drafter import Drafter
from agentflow.models.engine.scheduler import Layout, Scheduler, Sequence
from tests.conftest import reference_logprobs, submit_joining_mid_flight


# -- drafts -----------------------------------------------------------------------
def test_a_draft_continues_the_latest_earlier_occurrence_of_the_longest_suffix():
    d = Drafter([1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 7, 2, 3])
    # suffix (7, 2, 3) never occurred before; (2, 3) did, last followed by 4 5 7 2 3
    assert d.propose(3) == [4, 5, 7]
    assert d.propose(0) == []
    d.extend([4])  # suffix (2, 3, 4) occurred once: followed by 5 7 2 3 4
    assert d.propose(8) == [5, 7, 2, 3, 4]


def test_no_draft_without_an_earlier_occurrence():
    assert Drafter([1, 2, 3]).propose(4) == []
    assert Drafter([]).propose(4) == []
    assert Drafter([5, 5]).propose(4) == [5]  # a repeat drafts itself


def test_a_one_token_match_drafts_one_token():
    d = Drafter([4, 1, 2, 3, 5, 6, 1])  # only (1,) occurred before
    assert d.propose(4) == [2]
    d.extend([2])  # (1, 2) did too
    assert d.propose(4) == [3, 5, 6, 1]


def test_two_level_inverse_cdf_draws_what_one_running_sum_draws():
    """Block sums then one block's running sum pick the token a full `cumsum` picks, for a
    vocabulary that is no multiple of the block, never a token without mass."""
    import torch

    from agentflow.models.engine.sampler import _inverse_cdf

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 1000, generator=g) * 3, -1)
    probs[:, 990:] = 0.0  # the last tokens (and the padded block's tail) have no mass
    u = torch.rand(64, generator=g) * 0.98
    cdf = probs.cumsum(-1)
    expected = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    assert torch.equal(_inverse_cdf(probs, u), expected)
    top = _inverse_cdf(probs, torch.ones(64))  # u at the very end: the last token with mass
    assert bool((probs.gather(-1, top[:, None]) > 0).all())
    probs[:, 700:] = 0.0  # whole blocks without mass at the end
    top = _inverse_cdf(probs, torch.ones(64))
    assert bool((probs.gather(-1, top[:, None]) > 0).all()) and bool((top < 700).all())


# -- room in the buffers -----------------------------------------------------------
def _running(*remaining: int) -> Scheduler:
    s = Scheduler(8, 10_000)
    s.running.extend(Sequence([1, 2, 3], SamplingParams(max_new_tokens=r)) for r in remaining)
    return s


def test_drafts_spend_the_columns_beyond_every_rows_remaining_tokens():
    s = _running(10, 20)
    assert s.draft_room(Layout(4, 100, 70), 60, 4) == (4, None)  # 30 columns left, 20 needed
    room, layout = s.draft_room(Layout(4, 100, 78), 60, 4)  # 22 left: 2 spare, 4 wanted
    assert room == 4 and layout is not None
    assert layout.col >= 60 and layout.width - layout.col >= 20 + 4 and layout.slots >= 2


def test_drafts_stay_within_the_token_budget():
    s = Scheduler(8, 2 * (60 + 20 + 2))  # two rows: room for 2 draft columns at most
    s.running.extend(Sequence([1], SamplingParams(max_new_tokens=20)) for _ in range(2))
    room, layout = s.draft_room(Layout(2, 81, 60), 60, 4)  # 1 spare column
    assert room == 2 and layout is not None and layout.slots * layout.width <= 2 * 82
    s = Scheduler(8, 2 * (60 + 20))  # no room at all beyond the reservation
    s.running.extend(Sequence([1], SamplingParams(max_new_tokens=20)) for _ in range(2))
    assert s.draft_room(Layout(2, 80, 60), 60, 4) == (0, None)


# -- the engine --------------------------------------------------------------------
def _engines(tokenizer, fast_forward, **kw):
    model = tiny_model(vocab_size=len(tokenizer))
    on = GenerationEngine(model, tokenizer, seed=0, fast_forward=fast_forward, draft_tokens=4, draft_positions=64, **kw)
    off = GenerationEngine(model, tokenizer, seed=0, fast_forward=fast_forward, draft_tokens=0, **kw)
    return on, off


def _prompts(tokenizer, n):
    return [tokenizer.encode(f"Item {i}: the cat sat on the mat. " * (1 + i % 3)) for i in range(n)]


@pytest.mark.parametrize("temperature", [0.0, 0.01])
def test_speculation_changes_no_token_and_no_logprob(tokenizer, fast_forward, temperature):
    """Batched, with requests joining mid-flight and different lengths: the same ids and
    log-probs with drafts as without, in fewer forward passes. (Sampled at a low
    temperature: at higher ones this model's flat distributions leave nothing to draft, and
    a token drawn from their tail can flip with the last bits of the logits, which differ
    between a forward of one position a row and of five.)"""
    on, off = _engines(tokenizer, fast_forward)
    prompts = _prompts(tokenizer, 6)
    params = [SamplingParams(max_new_tokens=6 + 7 * i, temperature=temperature, seed=i) for i in range(6)]
    expected = [off.generate(p, s) for p, s in zip(prompts, params)]
    for a, f in zip(expected, submit_joining_mid_flight(on, prompts, params)):
        b = f.result()
        assert b.completion_ids == a.completion_ids and b.finish_reason == a.finish_reason
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    assert on.stats["kept"] > 0
    assert on.steps < off.steps
    out = on.generate(prompts[0], params[-1])
    assert out.logprobs == pytest.approx(reference_logprobs(on.model, prompts[0], out.completion_ids, temperature), abs=1e-4)


def test_stop_rules_end_a_row_inside_its_kept_drafts(tokenizer):
    """A stop string, a `stop_when` predicate or max_new_tokens met by a kept draft ends the
    request there, as one token at a time would."""
    on, off = _engines(tokenizer, True)
    prompt = _prompts(tokenizer, 1)[0]
    free = off.generate(prompt, SamplingParams(max_new_tokens=40))
    text = tokenizer.decode(free.completion_ids)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cases = [SamplingParams(max_new_tokens=40, stop=(stop,)),
             SamplingParams(max_new_tokens=40, stop_when=lambda t: len(t) >= len(text) // 3),
             SamplingParams(max_new_tokens=13)]
    for params in cases:
        a, b = off.generate(prompt, params), on.generate(prompt, params)
        assert b.completion_ids == a.completion_ids and b.finish_reason == a.finish_reason
        assert len(a.completion_ids) < 40
    assert on.stats["kept"] > 0


def test_no_drafts_past_the_step_position_budget(tokenizer):
    """With room for one position a row, no step drafts."""
    engine = GenerationEngine(tiny_model(vocab_size=len(tokenizer)), tokenizer, seed=0, draft_positions=4)
    [f.result() for f in [engine.submit(p, SamplingParams(max_new_tokens=30)) for p in _prompts(tokenizer, 4)]]
    assert engine.stats["drafted"] == 0 and engine.steps >= 29  # one token a row and step


def test_rejected_drafts_leave_holes_and_change_nothing(tokenizer, fast_forward, monkeypatch):
    """Drafts that are always wrong: every step writes its draft columns and keeps none of
    them, so masked holes pile up and the buffers are re-laid out for room; the outputs
    are those of an engine that never drafts."""
    vocab = len(tokenizer)
    monkeypatch.setattr(Drafter, "propose", lambda self, k: [(self.ids[-1] + 1 + i) % vocab for i in range(k)])
    on, off = _engines(tokenizer, fast_forward)
    prompts = _prompts(tokenizer, 4)
    params = [SamplingParams(max_new_tokens=50, temperature=0.7 * (i % 2), seed=i) for i in range(4)]
    expected = [off.generate(p, s) for p, s in zip(prompts, params)]
    got = [f.result() for f in [on.submit(p, s) for p, s in zip(prompts, params)]]
    for a, b in zip(expected, got):
        assert b.completion_ids == a.completion_ids
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    assert on.stats["kept"] == 0 and on.stats["drafted"] > 100
    assert on.stats["relayouts"] > 1
