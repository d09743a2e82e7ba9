"""The slot cache: preallocated key/value buffers that rows join and leave without copying the batch.

transformers' caches do not fit continuous batching on this CPU: `StaticCache` needs one
cache position shared by the batch and re-allocates per `generate`; `DynamicCache`
concatenates every layer's keys/values on every step (copying the whole cache per token)
and `batch_select_indices` copies it again when a row leaves.

So per layer there is one preallocated `[slots, kv_heads, width, head_dim]` buffer. The
live rows occupy slots `0..R-1` and share one write column: a decode step writes column
`col` for every row with an indexed copy (no concatenation; with drafts, columns `col..col+d`,
and what the sampler rejects becomes masked holes) and attention reads the window `[off, col]`, where `off` is the earliest column any live row uses (`SlotCache.off`,
derived from the rows' start columns, never stored). A new request goes into a free slot,
right-aligned so that its prompt ends at column `col` (left padding masked out, positions
given explicitly, so its numbers are those of an unpadded run), and is prefilled in the
same forward pass as the running rows' decode step. A finished row's slot is refilled by
moving the last row into it (one row copied, not the whole cache). The buffers are re-laid
out (one copy of the live window) only when the scheduler says so: a new prompt longer
than the columns left of `col`, a right margin too short for the remaining tokens of
every row, or more slots needed (`scheduler.Scheduler.admit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from agentflow.models.engine.scheduler import Layout


@dataclass(frozen=True)
class KVShape:
    """What one slot's keys/values look like for the current model."""

    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


@dataclass
class Segment:
    """Rows r0..r1 compute `ids` [rows, q], writing keys/values at columns col..col+q and
    attending to columns off..col+q where `mask` [rows, col+q-off] is 1. The forward
    returns logits at each row's last position, or at all q of them when `every` (a
    decode step verifying drafts)."""

    r0: int
    r1: int
    off: int
    col: int
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    every: bool = False


class _SlotLayer(DynamicLayer):
    """One layer's keys/values in the preallocated buffers, for transformers' own forward:
    `update` writes the segment being computed (`SlotCache.segment`), never concatenates."""

    is_compileable = False

    def __init__(self, owner: SlotCache) -> None:
        super().__init__()
        self.owner = owner
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        seg = self.owner.segment
        end = seg.col + key_states.shape[-2]
        self.keys[seg.r0 : seg.r1, :, seg.col : end] = key_states
        self.values[seg.r0 : seg.r1, :, seg.col : end] = value_states
        return self.keys[seg.r0 : seg.r1, :, seg.off : end], self.values[seg.r0 : seg.r1, :, seg.off : end]

    def get_seq_length(self) -> int:
        seg = self.owner.segment
        return seg.col - seg.off

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1


class SlotCache:
    """The buffers and per-row state of the running batch; row i holds `Scheduler.running[i]`.

    Per slot it keeps, besides the keys/values: the attention mask over the columns, the
    position of the token the row computes next and that token (`next`), and the row's
    first column (`starts`). Empty (0 slots) until the first `relayout`.
    """

    def __init__(self, num_layers: int, pad_id: int) -> None:
        self.pad_id = pad_id
        self.layers = [_SlotLayer(self) for _ in range(num_layers)]
        self.hf_cache = Cache(layers=self.layers)  # what transformers' forward is handed
        self.segment: Segment | None = None  # what transformers' forward computes now
        self.slots = self.width = self.col = 0
        self.starts: list[int] = []  # first column of each live row
        self.mask = self.pos = self.next = torch.zeros(0, dtype=torch.long)

    def release(self) -> None:
        """Drop the key/value buffers now. Each layer points back at its cache (`owner`), a
        reference cycle, so a cache merely replaced keeps its buffers until Python's next
        full collection: measured ~240 MB per closed engine (bf16, 24 rows) held that way."""
        for layer in self.layers:
            layer.keys = layer.values = None
        self.slots = self.width = self.col = 0
        self.starts = []

    @property
    def rows(self) -> int:
        return len(self.starts)

    @property
    def off(self) -> int:
        """The first column any live row uses: attention reads columns off..col."""
        return min(self.starts) if self.starts else self.col

    @property
    def live(self) -> int:
        """Columns the live rows span up to (not including) `col`."""
        return self.col - self.off

    @property
    def layout(self) -> Layout:
        return Layout(self.slots, self.width, self.col)

    def relayout(self, layout: Layout, shape: KVShape) -> None:
        """Allocate buffers of the new geometry and copy the live window so that it ends at
        `layout.col`, which must be at least `live` (the scheduler's layouts are)."""
        rows, off, live = self.rows, self.off, self.live
        src, dst = slice(off, self.col), slice(layout.col - live, layout.col)
        for layer in self.layers:
            # zeros, not empty: masked columns are multiplied by -inf-biased scores, and
            # uninitialised memory could hold NaNs that survive the masking.
            keys = torch.zeros(layout.slots, shape.heads, layout.width, shape.head_dim, dtype=shape.dtype, device=shape.device)
            values = torch.zeros_like(keys)
            if rows:
                keys[:rows, :, dst] = layer.keys[:rows, :, src]
                values[:rows, :, dst] = layer.values[:rows, :, src]
            # One layer at a time: its old buffers are freed here, so the copy needs one
            # layer's worth of extra memory, not a second whole cache (measured: fp32, G=32
            # rollout, 886 MB of keys/values; peak RSS in docs/design.md §4, "Memory").
            layer.keys, layer.values = keys, values
        mask = torch.zeros(layout.slots, layout.width, dtype=torch.long, device=shape.device)
        pos = torch.zeros(layout.slots, dtype=torch.long, device=shape.device)
        nxt = torch.full((layout.slots,), self.pad_id, dtype=torch.long, device=shape.device)
        if rows:
            mask[:rows, dst] = self.mask[:rows, src]
            pos[:rows], nxt[:rows] = self.pos[:rows], self.next[:rows]
            shift = dst.start - off
            self.starts = [start + shift for start in self.starts]
        self.mask, self.pos, self.next = mask, pos, nxt
        self.slots, self.width, self.col = layout.slots, layout.width, layout.col

    def add_row(self, length: int, reused: torch.Tensor | None = None, n: int = 0) -> None:
        """Put a prompt of `length` tokens in the next free slot (row `rows`), ending at
        column `col`; copy the first `n` keys/values of a stored prompt (`reused`,
        `[layers, 2, kv_heads, >= n, head_dim]`) into it."""
        row, start = self.rows, self.col + 1 - length
        if n:
            for layer, (k, v) in zip(self.layers, reused):
                layer.keys[row, :, start : start + n] = k[:, :n]
                layer.values[row, :, start : start + n] = v[:, :n]
        self.mask[row] = 0
        self.mask[row, start : self.col + 1] = 1
        self.starts.append(start)

    def decode_segment(self, rows: int, drafts: list[list[int]] | None = None) -> Segment:
        """Rows 0..rows-1 each compute their next token (`next`) at the write column and, with
        `drafts`, the tokens drafted after it at the columns after (padded to the longest
        draft; `advance` masks what the sampler did not keep)."""
        q = 1 + max(map(len, drafts), default=0) if drafts else 1
        col, off = self.col, min(self.starts[:rows])
        self.mask[:rows, col : col + q] = 1
        if q == 1:
            ids, positions = self.next[:rows, None], self.pos[:rows, None]
        else:
            ids = torch.full((rows, q), self.pad_id, dtype=torch.long)
            ids[:, 0] = self.next[:rows]
            for row, draft in enumerate(drafts):
                ids[row, 1 : 1 + len(draft)] = torch.tensor(draft, dtype=torch.long)
            ids = ids.to(self.mask.device)
            positions = self.pos[:rows, None] + torch.arange(q, device=self.mask.device)
        return Segment(0, rows, off, col, ids, self.mask[:rows, off : col + q], positions, every=True)

    def prefill_segment(self, r0: int, prompts: list[torch.Tensor]) -> Segment:
        """Rows r0.. compute their whole prompts, left-padded to one batch ending at `col`."""
        longest = max(len(ids) for ids in prompts)
        ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, longest - len(prompt) :] = prompt
        off = self.col + 1 - longest
        mask = self.mask[r0 : r0 + len(prompts), off : self.col + 1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return Segment(r0, r0 + len(prompts), off, off, ids.to(self.mask.device), mask, positions)

    def suffix_segment(self, row: int, prompt: torch.Tensor, n: int) -> Segment:
        """Row `row` computes its prompt from token `n` on (the first n were reused)."""
        start, device = self.starts[row], self.mask.device
        positions = torch.arange(n, len(prompt), device=device)[None]
        return Segment(row, row + 1, start, start + n, prompt[n:][None].to(device), self.mask[row : row + 1, start : self.col + 1], positions)

    def advance(self, q: int, kept: list[int], new_positions: list[int]) -> None:
        """After a forward pass whose decode segment wrote `q` columns a row: every row
        continues at col + q. Decoding row r keeps its token at col and the first `kept[r]`
        drafts after it (the columns of the rest are masked out for good: holes, which
        attention skips, as it skips left padding) and moves 1 + kept[r] positions on; the
        rows after them (prefilled this step) start decoding at `new_positions`."""
        for row, k in enumerate(kept):
            if 1 + k < q:
                self.mask[row, self.col + 1 + k : self.col + q] = 0
        if kept:
            self.pos[: len(kept)] += torch.tensor(kept, dtype=torch.long, device=self.pos.device) + 1
        for row, position in enumerate(new_positions, start=len(kept)):
            self.pos[row] = position
        self.col += q

    def prompt_kv(self, row: int, length: int) -> torch.Tensor:
        """The keys/values of row `row`'s prompt (its first `length` columns), for the prefix store."""
        cols = slice(self.starts[row], self.starts[row] + length)
        return torch.stack([torch.stack([layer.keys[row, :, cols], layer.values[row, :, cols]]) for layer in self.layers])

    def move_rows(self, moves: list[tuple[int, int]], keep: int) -> None:
        """Apply the scheduler's retirement: copy each mover row into its hole, keep rows 0..keep-1."""
        if moves:
            cols = slice(self.off, self.col)
            # Holes are below `keep` and movers at or above it, so the moves are independent;
            # one sliced copy per move and layer is ~4x faster than indexing with tensors
            # of rows (measured 1.0 vs 4.0 ms a move over 30 layers, bf16, 350 columns).
            for layer in self.layers:
                for hole, mover in moves:
                    layer.keys[hole, :, cols] = layer.keys[mover, :, cols]
                    layer.values[hole, :, cols] = layer.values[mover, :, cols]
            for hole, mover in moves:
                self.mask[hole] = self.mask[mover]
                self.pos[hole] = self.pos[mover]
                self.next[hole] = self.next[mover]
                self.starts[hole] = self.starts[mover]
        del self.starts[keep:]
