"""The prefix cache: keys/values of recent prompts, reused by prompts that share a prefix.

Node calls repeat long prompt prefixes. The G runs of a group send the same first
planner prompt; every planner, verifier and generator prompt of a query starts with that
module's system prompt (tool cards included) and the question; a planner prompt at turn
k+1 extends the one of turn k up to its memory. On this CPU a prefill is compute-bound
(~4 ms per token for the 135M model), so recomputing those prefixes dominated rollout
time. The store keeps the keys/values of recent prompts (an LRU bounded by
`prefix_cache_tokens`); a new request copies the keys/values of its longest common prefix
with any stored prompt into its slot and prefills only the rest. Causal attention makes
the first n positions of a stored prompt valid for any prompt that shares those n tokens.

The engine drops every entry when the model changes (`ModelRunner.sync_weights`), so a
trainer that updates the policy between rollouts never decodes with stale keys.
`benchmarks/rollout_throughput.py` measures what this saves (`prefix_tokens_reused`).
"""

from __future__ import annotations

import collections

import torch


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two id tensors share (one vectorised comparison)."""
    m = min(len(a), len(b))
    same = a[:m] == b[:m]
    return m if bool(same.all()) else int(same.to(torch.uint8).argmin())


class PrefixStore:
    """Keys/values of recent prompts, for reuse by requests that share a prefix with them.

    An entry is one prompt's ids and one `[layers, 2, kv_heads, length, head_dim]` tensor.
    Lookup is a longest-common-prefix scan over the entries (a few dozen; one vectorised
    comparison each), which is cheap next to one prefilled token.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens  # 0 disables the store
        self.tokens = 0
        self._entries: collections.OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = collections.OrderedDict()
        self._next_key = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

    def lookup(self, ids: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """The longest prefix of `ids` some entry holds, and that entry's keys/values."""
        best, best_key = 0, None
        for key, (stored, _) in self._entries.items():
            if min(len(stored), len(ids)) <= best:
                continue
            n = common_prefix(stored, ids)
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
            if common_prefix(stored, ids) == min(len(stored), len(ids)):
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
