"""Sampling: one token per row, vectorised, with each request's own RNG; stop rules.

`model.generate` has one RNG and one stop rule per batch. Here a sample must not depend
on what it was batched with, and every request keeps the exact ids it sampled with their
log-probs under the tempered distribution (what the trainer recomputes).
"""

from __future__ import annotations

from collections.abc import Sequence as Rows
from typing import Protocol

import torch

from agentflow.models.engine.scheduler import Sequence
from agentflow.models.engine.types import SamplingParams


class SeededRow(Protocol):
    """What sampling reads of a row: its parameters and its own random stream."""

    params: SamplingParams
    generator: torch.Generator


def sample(rows: Rows[SeededRow], logits: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """One token per row and its log-prob under softmax(logits / T) (T = 1 when greedy).

    Sampling is inverse-CDF: each sampled row draws one uniform number from its own
    generator and takes the first token whose cumulative probability exceeds it, so a
    request's tokens depend only on its seed and its logits, never on its batch.
    """
    n = len(rows)
    temps = [r.params.temperature for r in rows]
    logits = logits.float()
    if any(t != 1.0 and t > 0 for t in temps):
        scale = torch.tensor([t if t > 0 else 1.0 for t in temps], dtype=torch.float32, device=logits.device)
        logits = logits / scale[:, None]
    logp = torch.log_softmax(logits, -1)
    sampled = [i for i, t in enumerate(temps) if t > 0]
    # greedy rows only: over a 49k vocabulary the argmax costs ~0.3 ms a step on this CPU
    chosen = logp.argmax(-1) if len(sampled) < n else None
    if sampled:
        u = torch.tensor([float(torch.rand((), generator=rows[i].generator)) for i in sampled], device=logits.device)
        idx = torch.tensor(sampled, device=logits.device) if len(sampled) < n else None
        probs = (logp if idx is None else logp[idx]).exp()
        top_p = [rows[i].params.top_p for i in sampled]
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
    return chosen, logp.gather(-1, chosen[:, None])[:, 0].tolist()


def record(rows: Rows[Sequence], tokens: list[int], logprobs: list[float], eos_ids: set[int], tokenizer) -> None:
    """Append each row's token and log-prob, and say why it finished, if it did: "stop"
    (an eos token, a stop string in the decoded tail, or the request's `stop_when` true of
    its decoded completion) or "length" (max_new_tokens)."""
    for seq, token, lp in zip(rows, tokens, logprobs):
        p = seq.params
        seq.completion_ids.append(token)
        seq.logprobs.append(lp)
        if token in eos_ids:
            seq.finish_reason = "stop"
        elif p.stop and _hit_stop(seq, tokenizer):
            seq.finish_reason = "stop"
        elif p.stop_when is not None and p.stop_when(tokenizer.decode(seq.completion_ids, skip_special_tokens=True)):
            seq.finish_reason = "stop"
        elif len(seq.completion_ids) >= p.max_new_tokens:
            seq.finish_reason = "length"


def _hit_stop(seq: Sequence, tokenizer) -> bool:
    tail = tokenizer.decode(seq.completion_ids[-16:], skip_special_tokens=True)
    return any(s in tail for s in seq.params.stop)
