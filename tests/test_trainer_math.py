"""The Flow-GRPO math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from agentflow.trainer.config import FlowGRPOConfig
from agentflow.trainer.flow_grpo import (
    Sample,
    _pad,
    BatchTotals,
    aggregation_weights,
    build_samples,
    clipped_surrogate,
    group_advantages,
    k3_kl,
)
from agentflow.trainer.rollout import RunResult, Turn


def _run(q: int, reward: float, n_turns: int) -> RunResult:
    turns = [Turn([1, 2], [3, 4, 5][: t + 1], [-1.0] * (t + 1), 0.7) for t in range(n_turns)]
    return RunResult(q, {}, turns, reward, n_turns=n_turns)


def test_per_run_normalisation_differs_from_per_turn():
    # rewards [1, 0]; run 0 has 3 planner turns, run 1 has 1.
    # Per run (Flow-GRPO): mean 0.5, unbiased std 1/sqrt(2) -> A = +-0.7071, broadcast to turns.
    per_run = group_advantages([1.0, 0.0], eps=0.0)
    assert per_run == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])
    samples, _ = build_samples([[_run(0, 1.0, 3), _run(0, 0.0, 1)]], FlowGRPOConfig(advantage_eps=1e-12))
    assert [s.advantage for s in samples] == pytest.approx([0.70710678] * 3 + [-0.70710678])
    # Per turn (the published trainer): over [1, 1, 1, 0]: mean 0.75, std 0.5 -> [0.5, 0.5, 0.5, -1.5]:
    # the long run's turns get a third of the short run's weight, with the opposite sign.
    per_turn = group_advantages([1.0, 1.0, 1.0, 0.0], eps=0.0)
    assert per_turn == pytest.approx([0.5, 0.5, 0.5, -1.5])


def test_zero_variance_groups_skip_or_keep():
    groups = [[_run(0, 1.0, 1), _run(0, 1.0, 2)], [_run(1, 1.0, 1), _run(1, 0.0, 1)]]
    skipped, stats = build_samples(groups, FlowGRPOConfig(zero_variance_groups="skip"))
    assert stats["zero_variance_groups"] == 1 and len(skipped) == 2
    kept, stats = build_samples(groups, FlowGRPOConfig(zero_variance_groups="keep"))
    assert stats["zero_variance_groups"] == 1 and len(kept) == 5
    assert [s.advantage for s in kept[:3]] == [0.0, 0.0, 0.0]


def test_clipping_at_both_bounds():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # rho
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    surrogate, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.3)
    # rho 1.5, A>0: min(1.5, 1.3) = 1.3 (clipped at 1+eps_high)
    # rho 1.5, A<0: min(-1.5, -1.3) = -1.5 (unclipped: the pessimistic side)
    # rho 0.5, A>0: min(0.5, 0.8) = 0.5 (unclipped)
    # rho 0.5, A<0: min(-0.5, -0.8) = -0.8 (clipped at 1-eps_low)
    assert surrogate.tolist() == pytest.approx([1.3, -1.5, 0.5, -0.8])
    assert clipped.tolist() == [True, False, False, True]
    # clipped tokens carry no gradient
    logp = logp.clone().requires_grad_(True)
    clipped_surrogate(logp, old, adv, 0.2, 0.3)[0].sum().backward()
    assert logp.grad.tolist() == pytest.approx([0.0, -1.5, 0.5, 0.0])


def test_k3_kl():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.2)])
    # d = ref - logp = log(0.5): exp(d) - d - 1 = 0.5 + log 2 - 1; equal log-probs give 0
    assert k3_kl(logp, ref).tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0])
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_loss_aggregations():
    # run A: samples of 1 and 3 tokens; run B: one sample of 4 tokens (8 tokens, 3 samples, 2 runs)
    lengths, runs = [1, 3, 4], ["A", "A", "B"]
    assert aggregation_weights(lengths, runs, "token_mean") == pytest.approx([1 / 8] * 3)
    assert aggregation_weights(lengths, runs, "sample_mean") == pytest.approx([1 / 3, 1 / 9, 1 / 12])
    assert aggregation_weights(lengths, runs, "run_mean") == pytest.approx([1 / 8, 1 / 8, 1 / 8])
    # every aggregation is a weighted mean: token weights sum to 1
    for mode in ("token_mean", "sample_mean", "run_mean"):
        assert sum(w * n for w, n in zip(aggregation_weights(lengths, runs, mode), lengths)) == pytest.approx(1.0)
    # run_mean: a run weighs 1/2 whatever its token count
    w = aggregation_weights([2, 2, 4], ["A", "A", "B"], "run_mean")
    assert (w[0] * 2 + w[1] * 2, w[2] * 4) == pytest.approx((0.5, 0.5))


def test_global_totals_give_each_process_the_weights_of_the_whole_batch():
    """Process 0 holds run A (1 + 3 tokens), process 1 run B (4 tokens) and run C (2 tokens):
    with the totals of both, each process's weights are its slice of the 1-process weights;
    with its own counts only (the old per-process normalisation) they are not."""
    lengths, runs = [1, 3, 4, 2], ["A", "A", "B", "C"]
    totals = BatchTotals(tokens=10, samples=4, runs=3)
    for mode in ("token_mean", "sample_mean", "run_mean"):
        whole = aggregation_weights(lengths, runs, mode)
        split = aggregation_weights(lengths[:2], runs[:2], mode, totals) + aggregation_weights(lengths[2:], runs[2:], mode, totals)
        assert split == pytest.approx(whole), mode
        local = aggregation_weights(lengths[:2], runs[:2], mode) + aggregation_weights(lengths[2:], runs[2:], mode)
        assert local != pytest.approx(whole), mode


def test_pad_aligns_every_completion_at_one_column():
    # [left pad | prompt | completion | right pad]: prompt widths 2 and 1, completion widths 1 and 2
    samples = [Sample([5, 6], [7], [-0.5], 0.7, 1.0, (0, 0)), Sample([8], [9, 10], [-1.0, -2.0], 0.7, -1.0, (0, 1))]
    batch = _pad(samples, torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [0, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2], [0, 0, 1, 2]]
    assert batch["completion_ids"].tolist() == [[7, 0], [9, 10]]
    assert batch["old_logprobs"].tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert batch["token_mask"].tolist() == [[1.0, 0.0], [1.0, 1.0]]
