"""The engine's scheduling policy alone: no model, no forward pass, requests as token lists."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.models.engine import scheduler as scheduler_module
from agentflow.models.engine import types as types_module
from agentflow.models.engine.scheduler import Layout, Scheduler, Sequence
from agentflow.models.engine.types import SamplingParams

EMPTY = Layout(slots=0, width=0, col=0)  # before the first allocation


def seq(prompt_len: int, max_new: int = 10, generated: int = 0, first: int = 0) -> Sequence:
    """A request whose prompt is tokens first, first+1, ...; `generated` tokens already produced."""
    return Sequence(list(range(first, first + prompt_len)), SamplingParams(max_new_tokens=max_new),
                    completion_ids=[7] * generated)


def shared(a: Sequence, b: Sequence) -> int:
    return len(os.path.commonprefix([a.prompt_ids, b.prompt_ids]))


def scheduler(max_batch_size=32, budget=32768, *, waiting=(), running=(), **kw) -> Scheduler:
    s = Scheduler(max_batch_size, budget, **kw)
    s.waiting.extend(waiting)
    s.running.extend(running)
    return s


def test_the_policy_is_pure_python():
    """Nothing in the scheduler (or the types it uses) reaches for torch or a model."""
    for module in (scheduler_module, types_module):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.split(".")[0] in {"torch", "transformers", "numpy"}]
        assert all(not name.startswith("agentflow") or name == "agentflow.models.engine.types" for name in imported)


# -- admission --------------------------------------------------------------------
def test_admits_the_queue_in_order():
    queue = [seq(5), seq(8), seq(3)]
    s = scheduler(waiting=queue)
    assert s.admit(EMPTY, 0).requests == queue
    assert not s.waiting
    assert s.running == []  # the caller appends them in slot order once placed


def test_batch_size_cap_counts_running_rows():
    queue = [seq(5) for _ in range(4)]
    s = scheduler(max_batch_size=3, waiting=queue, running=[seq(4)])
    assert s.admit(Layout(4, 100, 50), 4).requests == queue[:2]
    assert list(s.waiting) == queue[2:]


def test_full_batch_admits_nothing():
    s = scheduler(max_batch_size=2, waiting=[seq(5)], running=[seq(4), seq(4)])
    admission = s.admit(Layout(2, 100, 50), 4)
    assert admission.requests == [] and admission.relayout is None
    assert len(s.waiting) == 1


def test_token_budget_counts_rows_times_left_plus_right():
    # each needs 10 prompt + 10 new columns: three fit in 60 token slots, the fourth waits
    queue = [seq(10, 10) for _ in range(4)]
    s = scheduler(budget=60, waiting=queue)
    assert s.admit(EMPTY, 0).requests == queue[:3]
    assert list(s.waiting) == queue[3:]


def test_token_budget_is_taken_by_the_widest_row():
    # rows share columns: one long prompt makes every row as wide as it
    queue = [seq(40, 10), seq(5, 5)]
    assert scheduler(budget=99, waiting=list(queue)).admit(EMPTY, 0).requests == queue[:1]
    assert scheduler(budget=100, waiting=list(queue)).admit(EMPTY, 0).requests == queue


def test_token_budget_counts_the_live_window_and_remaining_tokens_of_running_rows():
    # the running row spans 50 columns up to col and may still generate 30 - 10 = 20 tokens
    running = [seq(45, max_new=30, generated=10)]
    need = 2 * (50 + 20)
    for budget, admitted in [(need - 1, False), (need, True)]:
        s = scheduler(budget=budget, waiting=[seq(10, 5)], running=running)
        assert bool(s.admit(Layout(2, 200, 60), 50).requests) == admitted


def test_a_waiting_request_blocks_the_ones_behind_it():
    """First come, first served: a small request does not overtake one that does not fit."""
    queue = [seq(10, 10), seq(100, 10), seq(1, 1)]
    s = scheduler(budget=150, waiting=queue)
    assert s.admit(EMPTY, 0).requests == queue[:1]
    assert list(s.waiting) == queue[1:]


def test_the_first_request_into_an_empty_batch_is_always_admitted():
    # submit refuses a request that cannot fit alone; the scheduler must never stall on one
    s = scheduler(budget=10, waiting=[seq(10, 10), seq(1, 1)])
    admission = s.admit(EMPTY, 0)
    assert len(admission.requests) == 1 and admission.relayout is not None


# -- relayout decisions -------------------------------------------------------------
def test_first_admission_allocates_the_geometry():
    s = scheduler(waiting=[seq(10, 20)])
    # col at the prompt's end; width = 30 columns + half again, at least 64; one slot
    assert s.admit(EMPTY, 0).relayout == Layout(slots=1, width=94, col=10)


def test_current_buffers_are_kept_when_they_hold_the_batch():
    s = scheduler(waiting=[seq(10, 20)], running=[seq(30, 40, generated=5)])
    assert s.admit(Layout(slots=4, width=200, col=100), live=35).relayout is None


def test_more_rows_than_slots_relayout():
    running = [seq(10, 20), seq(10, 20)]
    current = Layout(slots=2, width=200, col=100)
    capped = scheduler(max_batch_size=3, waiting=[seq(10, 20) for _ in range(3)], running=running)
    assert capped.admit(current, live=10).relayout.slots == 3  # the rows needed: the cap stops rounding up
    free = scheduler(max_batch_size=8, waiting=[seq(10, 20) for _ in range(3)], running=running)
    assert free.admit(current, live=10).relayout.slots == 8  # 5 rows rounded up to a power of two


def test_relayout_leaves_slots_for_the_rest_of_the_queue():
    # one short request joins; a long one blocks the queue on the budget, three stay queued
    queue = [seq(10, 10), seq(300, 10), seq(10, 10, first=50), seq(10, 10, first=70)]
    s = scheduler(budget=800, waiting=queue, running=[seq(10, 10)])
    admission = s.admit(Layout(slots=1, width=300, col=100), live=10)
    assert admission.requests == queue[:1] and len(s.waiting) == 3
    assert admission.relayout.slots == 8  # 2 rows + 3 queued, rounded up to a power of two


def test_a_prompt_longer_than_the_columns_left_of_col_relayouts():
    s = scheduler(waiting=[seq(60, 5)], running=[seq(20, 40, generated=2)])
    current = Layout(slots=4, width=200, col=50)  # 51 columns up to and including col
    layout = s.admit(current, live=22).relayout
    assert layout is not None and layout.col == 60
    s = scheduler(waiting=[seq(51, 5)], running=[seq(20, 40, generated=2)])
    assert s.admit(current, live=22).relayout is None  # ends exactly at col


def test_a_right_margin_too_short_relayouts():
    current = Layout(slots=4, width=100, col=70)  # 30 columns from col on
    fits = scheduler(waiting=[seq(10, 30)], running=[seq(20, 40, generated=12)])
    assert fits.admit(current, live=32).relayout is None
    short = scheduler(waiting=[seq(10, 31)], running=[seq(20, 40, generated=12)])
    layout = short.admit(current, live=32).relayout
    assert layout is not None and layout.width - layout.col >= 31


def test_relayout_keeps_the_live_window_left_of_col():
    # the running row spans 80 columns; the new prompt is shorter: col must still hold the 80
    s = scheduler(waiting=[seq(10, 500)], running=[seq(70, 20, generated=10)])
    layout = s.admit(Layout(slots=2, width=120, col=100), live=80).relayout
    assert layout is not None and layout.col == 80 and layout.width - layout.col >= 500


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=12),
    st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40), st.integers(0, 39)), max_size=6),
    st.integers(1, 8),
    st.integers(20, 800),
)
def test_admission_and_layout_invariants(queue, running, cap, budget):
    running = [seq(p, n, generated=min(g, n - 1)) for p, n, g in running][:cap]
    live = max((len(r.prompt_ids) + len(r.completion_ids) for r in running), default=0)
    waiting = [seq(p, n) for p, n in queue]
    s = scheduler(cap, budget, waiting=waiting, running=running)
    admission = s.admit(EMPTY, live)
    chosen = admission.requests
    assert chosen == waiting[: len(chosen)]  # in order, none skipped
    rows = len(running) + len(chosen)
    assert rows <= cap or not chosen
    left = max([live] + [len(c.prompt_ids) for c in chosen])
    right = max([r.remaining for r in running] + [c.params.max_new_tokens for c in chosen])
    if chosen and (running or len(chosen) > 1):
        assert rows * (left + right) <= budget
    if not chosen:
        # something blocked the head of the queue: the cap, or the budget with it added
        head = waiting[0]
        assert len(running) >= cap or (running and (len(running) + 1) * (
            max(live, len(head.prompt_ids)) + max(right, head.params.max_new_tokens)) > budget)
        return
    geometry = admission.relayout  # nothing was allocated, so there always is one
    assert rows <= geometry.slots <= cap
    assert geometry.col >= left and geometry.width - geometry.col >= right
    if rows * (left + right) <= budget:
        assert geometry.slots * geometry.width <= budget


# -- waiting one step for a prefix admitted in the same pass -------------------------------
def prefix_scheduler(queue, stored=lambda s: 0, prefix_min=8, **kw) -> Scheduler:
    return scheduler(waiting=queue, prefix_min=prefix_min, stored_prefix=stored, shared_prefix=shared, **kw)


def test_a_copy_of_a_prompt_admitted_in_the_same_pass_waits_one_step():
    first, copy, other = seq(30), seq(30), seq(30, first=1000)
    s = prefix_scheduler([first, copy, other])
    assert s.admit(EMPTY, 0).requests == [first]
    assert list(s.waiting) == [copy, other]  # order kept: the copy goes first next pass
    assert s.admit(Layout(4, 200, 100), 30).requests == [copy, other]  # nothing of it admitted now


def test_a_longer_turn_of_an_admitted_prompt_waits_one_step():
    turn1, turn2 = seq(30), seq(45)  # turn2 extends turn1
    assert prefix_scheduler([turn1, turn2]).admit(EMPTY, 0).requests == [turn1]


def test_no_wait_when_the_store_already_holds_as_long_a_prefix():
    turn1, turn2 = seq(30), seq(45)
    s = prefix_scheduler([turn1, turn2], stored=lambda r: 30)
    assert s.admit(EMPTY, 0).requests == [turn1, turn2]


def test_no_wait_for_a_shared_prefix_shorter_than_the_minimum():
    a = seq(30)
    b = Sequence(a.prompt_ids[:7] + [999] * 20, SamplingParams())
    assert prefix_scheduler([a, b], prefix_min=8).admit(EMPTY, 0).requests == [a, b]
    c = Sequence(a.prompt_ids[:8] + [999] * 20, SamplingParams())
    assert prefix_scheduler([a, c], prefix_min=8).admit(EMPTY, 0).requests == [a]


def test_a_prompt_reuses_at_most_all_but_its_last_token():
    # an 8-token copy can reuse 7 tokens (its last is computed for its logits): under a minimum of 8
    a, b = seq(8), seq(8)
    assert prefix_scheduler([a, b], prefix_min=8).admit(EMPTY, 0).requests == [a, b]
    assert prefix_scheduler([a, seq(8)], prefix_min=7).admit(EMPTY, 0).requests == [a]


def test_no_wait_without_a_prefix_cache():
    first, copy = seq(30), seq(30)
    s = scheduler(waiting=[first, copy], prefix_min=8, shared_prefix=shared)
    assert s.admit(EMPTY, 0).requests == [first, copy]


def test_only_prompts_admitted_in_the_same_pass_defer_a_request():
    # a copy of a running row's prompt does not wait for it, even if the store lost it
    other, copy = seq(30, first=1000), seq(30)
    s = prefix_scheduler([other, copy], running=[seq(30)])
    assert s.admit(Layout(4, 200, 100), 31).requests == [other, copy]


def test_a_prefix_cache_needs_both_callbacks():
    with pytest.raises(ValueError):
        Scheduler(4, 100, stored_prefix=lambda s: 0)


# -- retirement ----------------------------------------------------------------------
def test_finished_rows_leave_and_the_last_live_rows_fill_their_slots():
    rows = [seq(5, first=i * 10) for i in range(5)]
    rows[1].finish_reason, rows[3].finish_reason = "stop", "length"
    s = scheduler(running=rows)
    done, moves = s.retire()
    assert done == [rows[1], rows[3]]
    assert moves == [(1, 4)]  # the last live row moves into slot 1; slot 3's row is gone
    assert s.running == [rows[0], rows[4], rows[2]]


def test_retire_with_nothing_finished_or_everything_finished():
    rows = [seq(5), seq(6)]
    s = scheduler(running=rows)
    assert s.retire() == ([], []) and s.running == rows
    for r in rows:
        r.finish_reason = "stop"
    assert s.retire() == (rows, []) and s.running == []
