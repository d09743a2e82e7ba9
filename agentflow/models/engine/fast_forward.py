"""A lean forward pass for Llama-family decoders over the engine's slot cache.

The engine runs one forward pass per decode step for every active row, hundreds of
times per graph run. Measured on this project's 2-core AVX2 CPU with the embedded
SmolLM2-135M in fp32 (5 rows, 750 columns of context, `benchmarks/rollout_throughput.py`
repeats the comparison side by side): transformers' forward took 208 ms per decode step,
of which

* ~115 ms were `F.linear` (MKL sgemm): at 5 rows it reaches 9.5 GFLOP/s. oneDNN on
  weights reordered once into its blocked layout (`mkldnn::_reorder_linear_weight`, what
  inductor's CPU weight freezing does) runs the same products at 22 GFLOP/s (M=5),
  38 (M=16), 65 (M=128) and 71 (M=512): faster at every size, prefill included;
* ~40 ms were Python around the tensors: the generic model code builds masks, routes
  the cache through its API, threads keyword arguments and output classes through 30
  layers.

This forward computes the same function with fused projections (q|k|v and gate|up: one
product each), prepacked weights, RMSNorm as one call, attention straight on the slot
buffers, and no per-layer bookkeeping: ~100 ms per step at 5 rows, same greedy tokens,
log-probs within 1e-4 of the model's own forward (oneDNN sums in another order than
MKL; the suite checks this). It calls the model's own embedding, rotary and
activation modules and reads its norms' weights, so the numbers are the model's. The
engine falls back to transformers' forward for any model it does not cover
(`FastForward.unsupported` says why).

LoRA (peft) policies are covered by merging: each projection's weight is the base weight
plus its active adapters' `get_delta_weight`, what `merge_adapter` would write, computed
into the packed copy and not into the model. Packed copies are rebuilt whenever a source
tensor changes (version counter or identity) or the adapter state does, so a trainer that
updates the policy between rollouts decodes with its new weights. Memory: one packed copy
of every projection and of the LM head (~540 MB for the 135M model in fp32), shared by
every engine over the same tensors (`_Packed`). bf16 weights are packed as well where bf16
is fast (AMX, AVX512-BF16): same logits as F.linear, a faster step (docs/design.md §4).
"""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer

from agentflow.models.engine.kv_cache import Segment
from agentflow.models.loading import bf16_is_fast

# Same block structure as Llama (pre-norm, q/k/v/o + gated MLP, rotary): qwen2 adds q/k/v
# biases, which the fused projection carries.
_ARCHITECTURES = {"llama", "qwen2"}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight the module applies now: a peft LoRA layer's base plus its active deltas."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight, module.bias
    weight = base.weight
    if not module.merged and not module.disable_adapters:
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name)
    return weight, base.bias


def _not_linear(module) -> str | None:
    """None for an nn.Linear or a plain peft LoRA layer over one; otherwise what it is."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(getattr(module, "base_layer", None), nn.Linear) and hasattr(module, "lora_A"):
        special = any(module.use_dora.get(a) for a in module.lora_A) or any(getattr(module, "lora_bias", {}).get(a) for a in module.lora_A)
        return "DoRA or a LoRA bias" if special else None
    return f"a {type(module).__name__}"


def lora_state(module: nn.Module) -> tuple:
    """A peft LoRA layer's adapter state (merged, disabled, active adapters); () for any other module."""
    return (module.merged, module.disable_adapters, tuple(module.active_adapters)) if hasattr(module, "lora_A") else ()


def _state(module: nn.Module) -> tuple:
    """What the effective weight depends on: the module, its tensors (identity, version), adapter state."""
    return (id(module), *((id(t), t._version) for t in module.parameters()), *lora_state(module))


class _Packed:
    """One projection's effective weight (fused, packed for oneDNN where `packed`) and bias,
    with weak references to the source tensors it was computed from.

    Shared between every projection whose sources are the same tensors at the same
    versions: the benchmark and an eval hold several engines over one model, and each
    used to pack its own copy of every weight (~540 MB in fp32 for the 135M model, one per
    engine; docs/design.md §4, "Memory")."""

    __slots__ = ("weight", "bias", "packed", "sources", "__weakref__")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool, sources: list[torch.Tensor]) -> None:
        self.weight, self.bias, self.packed = weight, bias, packed
        self.sources = [weakref.ref(t) for t in sources]

    def made_from(self, sources: list[torch.Tensor]) -> bool:
        """Whether these are still the very tensors it was computed from (an id alone may
        be reused by a new tensor once the old one is freed)."""
        return len(sources) == len(self.sources) and all(r() is t for r, t in zip(self.sources, sources))


# Packed weights by (projection kind, adapter state, (id, version) of every source tensor).
# Values are weak: an entry lives as long as some projection holds it, so dropping the last
# engine over a model frees its packed copy. The lock serialises packing across engines'
# worker threads (two engines over one model may refresh at once).
_SHARED: weakref.WeakValueDictionary[tuple, _Packed] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _packs(weight: torch.Tensor) -> bool:
    """Whether to reorder `weight` once for oneDNN's blocked layout: fp32 on CPU (22 vs 9.5
    GFLOP/s for MKL `F.linear` at M=5 on the AVX2 machine), and bf16 on CPUs with bf16
    matrix units (`bf16_is_fast`: AMX or AVX512-BF16), where the packed product gives the
    same logits as `F.linear` and a 5-row decode step is ~15% faster (docs/design.md §4).
    Elsewhere bf16 is emulated and float64 has no oneDNN kernel: `F.linear`."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and bf16_is_fast("cpu"))


class _Projection:
    """Several linear layers (given as parent module + attribute name, so that a layer
    swapped in later, e.g. by peft, is seen) fused into one product on a packed weight."""

    def __init__(self, sources: list[tuple[nn.Module, str]]) -> None:
        self.sources = sources
        self.state: tuple | None = None
        self.current: _Packed | None = None

    @property
    def weight(self) -> torch.Tensor | None:
        return self.current.weight if self.current is not None else None

    @property
    def packed(self) -> bool:
        return self.current is not None and self.current.packed

    def refresh(self) -> None:
        modules = [getattr(parent, name) for parent, name in self.sources]
        state = tuple(_state(m) for m in modules)
        if state == self.state:
            return
        for m, (_, name) in zip(modules, self.sources):
            if reason := _not_linear(m):
                raise RuntimeError(f"FastForward cannot apply {name}: it is now {reason}; build the engine with fast_forward=False")
        tensors = [t for m in modules for t in m.parameters()]
        # the state minus module ids: the same tensors under another wrapper compute the same
        key = (tuple(name for _, name in self.sources), tuple((id(t), t._version) for t in tensors),
               tuple(lora_state(m) for m in modules))
        with _SHARED_LOCK:
            shared = _SHARED.get(key)
            if shared is None or not shared.made_from(tensors):
                shared = _SHARED[key] = self._compute(modules, tensors)
        self.current, self.state = shared, state

    @staticmethod
    def _compute(modules: list[nn.Module], tensors: list[torch.Tensor]) -> _Packed:
        parts = [_weight_and_bias(m) for m in modules]
        weight = torch.cat([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
        bias = None
        if any(b is not None for _, b in parts):
            bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])
        packed = _packs(weight)
        if packed:
            weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        return _Packed(weight, bias, packed, tensors)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        current = self.current
        if current.packed:
            return torch.ops.mkldnn._linear_pointwise(x, current.weight, current.bias, "none", [], "")
        return F.linear(x, current.weight, current.bias)


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Llama/Qwen2 RMSNorm in one call (the module spends 7 small ops; same result)."""
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


class _Block:
    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2, self.act = layer.input_layernorm, layer.post_attention_layernorm, mlp.act_fn
        self.qkv = _Projection([(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj")])
        self.o = _Projection([(attn, "o_proj")])
        self.gate_up = _Projection([(mlp, "gate_proj"), (mlp, "up_proj")])
        self.down = _Projection([(mlp, "down_proj")])
        self.scaling = attn.scaling
        self.projections = (self.qkv, self.o, self.gate_up, self.down)


class FastForward:
    """`forward(layers, segments)` -> last-position logits, over the engine's slot buffers.

    Call `refresh()` before the first forward and whenever the weights may have changed."""

    def __init__(self, model: nn.Module) -> None:
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"FastForward does not cover this model: {reason}")
        base = _unwrap(model)
        config = base.config.get_text_config()
        self.inner = base.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.group = self.heads // self.kv_heads  # query heads per key/value head
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.intermediate = config.intermediate_size
        self.blocks = [_Block(layer) for layer in self.inner.layers]
        self.lm_head = _Projection([(base, "lm_head")])
        self.projections = [p for b in self.blocks for p in b.projections] + [self.lm_head]

    @staticmethod
    def unsupported(model: nn.Module) -> str | None:
        """Why this forward cannot stand in for the model's own, or None when it can."""
        base = _unwrap(model)
        config = base.config.get_text_config()
        if config.model_type not in _ARCHITECTURES:
            return f"model_type {config.model_type!r} is not one of {sorted(_ARCHITECTURES)}"
        if getattr(config, "use_sliding_window", False):
            return "sliding-window attention"
        inner = getattr(base, "model", None)
        if not isinstance(getattr(inner, "embed_tokens", None), nn.Embedding):
            return "the token embedding is wrapped (an adapter on embeddings?)"
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                if not hasattr(norm, "variance_epsilon"):
                    return f"layer {i} norm is a {type(norm).__name__}, not an RMSNorm"
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                if reason := _not_linear(getattr(attn, name, None)):
                    return f"layer {i} {name}: {reason}"
            for name in ("gate_proj", "up_proj", "down_proj"):
                if reason := _not_linear(getattr(mlp, name, None)):
                    return f"layer {i} {name}: {reason}"
        if reason := _not_linear(base.lm_head):
            return f"lm_head: {reason}"
        return None

    def refresh(self) -> None:
        """Repack the projections whose weights changed (in place, swapped, adapter toggled).
        The engine calls it when it sees the model change, before admitting requests."""
        for projection in self.projections:
            projection.refresh()

    @torch.inference_mode()
    def __call__(self, layers: list[DynamicLayer], segments: list[Segment]) -> torch.Tensor:
        """Last-position logits of every row of every segment (of every position where the
        segment says `every`; see `kv_cache.Segment`), in order.

        All segments' tokens go through each projection together, so a decode step and
        the prefills admitted with it read the weights once; attention runs per segment."""
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        qn, kn = heads * head_dim, kv_heads * head_dim
        sizes = [seg.ids.numel() for seg in segments]
        h = self.inner.embed_tokens(torch.cat([seg.ids.reshape(-1) for seg in segments]))  # [tokens, hidden]
        cos, sin, biases, last = [], [], [], []
        start = 0
        for seg, n in zip(segments, sizes):
            rows, q = seg.ids.shape
            c, s = self.inner.rotary_emb(h, seg.positions)
            cos.append(c.reshape(n, 1, head_dim))
            sin.append(s.reshape(n, 1, head_dim))
            allowed = seg.mask.bool()[:, None, None, :]
            if q > 1:
                # causal within the new tokens; each query also sees its own column, so the
                # queries of left padding attend to something and stay finite (their keys
                # are masked for every real query).
                width = seg.mask.shape[-1]
                key = torch.arange(width, device=h.device)
                own = torch.arange(width - q, width, device=h.device)[:, None]
                allowed = (allowed & (key <= own)) | (key == own)
            # additive form, built once for all layers (SDPA would convert a boolean mask per call)
            bias = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill_(~allowed, float("-inf"))
            # a decode segment attends with its query heads grouped by key head (below): the
            # mask once per query head of a group, in the order of the grouped queries
            biases.append(bias.expand(-1, 1, q, -1).repeat(1, 1, self.group, 1) if seg.every else bias)
            if seg.every:
                last.append(torch.arange(start, start + n, device=h.device))
            else:
                last.append(torch.arange(rows, device=h.device) * q + (start + q - 1))
            start += n
        cos, sin = (cos[0], sin[0]) if len(segments) == 1 else (torch.cat(cos), torch.cat(sin))
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]: one op instead of four per layer
        half = head_dim // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)
        for layer, block in zip(layers, self.blocks):
            y = block.qkv(_rms_norm(h, block.norm1))
            # rotary embedding on the query and key heads at once (the model's formula)
            qk = y[:, : qn + kn].view(-1, heads + kv_heads, head_dim)
            qk = qk * cos + qk.roll(half, -1) * sin
            v = y[:, qn + kn :].view(-1, kv_heads, head_dim)
            outs, start = [], 0
            for seg, n, bias in zip(segments, sizes, biases):
                rows, q = seg.ids.shape
                part = qk[start : start + n].view(rows, q, heads + kv_heads, head_dim)
                layer.keys[seg.r0 : seg.r1, :, seg.col : seg.col + q] = part[:, :, heads:].transpose(1, 2)
                layer.values[seg.r0 : seg.r1, :, seg.col : seg.col + q] = v[start : start + n].view(rows, q, kv_heads, head_dim).transpose(1, 2)
                keys = layer.keys[seg.r0 : seg.r1, :, seg.off : seg.col + q]
                values = layer.values[seg.r0 : seg.r1, :, seg.off : seg.col + q]
                if seg.every:
                    # Decode rows (a token and its drafts): the query heads that share a key
                    # head go in as one head of group x q queries, so its keys are read once.
                    # Measured (bf16, 5 rows, 300 columns, per layer): 163 -> 120 us at 1
                    # query a row, 371 -> 196 us at 5; prefill shapes gain nothing.
                    query = part[:, :, :heads].view(rows, q, kv_heads, self.group, head_dim)
                    query = query.permute(0, 2, 3, 1, 4).reshape(rows, kv_heads, self.group * q, head_dim)
                    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=block.scaling)
                    out = out.view(rows, kv_heads, self.group, q, head_dim).permute(0, 3, 1, 2, 4)
                else:
                    query = part[:, :, :heads].transpose(1, 2)
                    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=block.scaling, enable_gqa=True)
                    out = out.transpose(1, 2)
                outs.append(out.reshape(n, qn))
                start += n
            h = h + block.o(outs[0] if len(outs) == 1 else torch.cat(outs))
            g = block.gate_up(_rms_norm(h, block.norm2))
            h = h + block.down(block.act(g[:, : self.intermediate]) * g[:, self.intermediate :])
        h = h[last[0] if len(last) == 1 else torch.cat(last)]
        return self.lm_head(_rms_norm(h, self.inner.norm))
