"""The model runner: one forward pass over a step's segments, and noticing when the weights change.

The forward is `fast_forward.FastForward` for Llama-family models (fused, oneDNN-packed
projections; ~2x transformers' forward per decode step on this CPU) and transformers' own
forward, one call per segment through the slot cache's layers, for the rest.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

from agentflow.models.engine.fast_forward import FastForward, lora_state
from agentflow.models.engine.kv_cache import KVShape, Segment, SlotCache


def mark_weights_updated(model: torch.nn.Module) -> None:
    """Tell every engine decoding `model` that its weights changed.

    Engines notice a change by the parameters' version counters, which ordinary in-place
    writes bump (torch's default optimizers, `load_state_dict`, `copy_`). Fused kernels
    write without bumping them: after `torch.optim.AdamW(fused=True)` steps (the Hugging
    Face Trainer's default optimizer, `adamw_torch_fused`) an engine would go on decoding
    with the weights it packed before. Code that updates weights that way calls this after."""
    torch.autograd.graph.increment_version(list(model.parameters()))


class ModelRunner:
    """Runs a causal LM over the slot cache; `fast` is the lean forward, None when it does
    not cover the model or was not asked for."""

    def __init__(self, model: PreTrainedModel, fast_forward: bool = True) -> None:
        self.model = model
        self.fast = FastForward(model) if fast_forward and FastForward.unsupported(model) is None else None
        self._weights_state: tuple | None = None
        self._cache_args: dict[int, str] = {}

    @property
    def num_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers

    def kv_shape(self) -> KVShape:
        """One slot's key/value shape, read now: the model may have moved or changed dtype since."""
        config = self.model.config
        config = getattr(config, "get_text_config", lambda: config)()
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        param = next(self.model.parameters())
        return KVShape(heads, head_dim, param.dtype, param.device)

    def sync_weights(self) -> bool:
        """True when the function the model computes may have changed since the last call:
        a parameter updated in place (optimizer step, load) or replaced, or a peft adapter
        toggled (`disable_adapter()`, `set_adapter`, merge). A write that bypasses the
        version counters is seen only after `mark_weights_updated`. The lean forward's packed
        weights are rebuilt then; the caller drops keys/values computed with the old ones."""
        state = (
            tuple((id(p), p._version) for p in self.model.parameters()),
            tuple(flags for m in self.model.modules() if (flags := lora_state(m))),
        )
        changed = state != self._weights_state
        self._weights_state = state
        if changed and self.fast is not None:
            self.fast.refresh()
        return changed

    def forward(self, cache: SlotCache, segments: list[Segment]) -> torch.Tensor:
        """Last-position logits of every row of every segment (all positions of a segment
        marked `every`), in row order."""
        if self.fast is not None:
            return self.fast(cache.layers, segments)
        logits = []
        for seg in segments:  # transformers' forward: one pass per segment, through the slot layers
            cache.segment = seg
            keep = seg.ids.shape[1] if seg.every else 1
            out = self.model(
                input_ids=seg.ids,
                attention_mask=seg.mask,
                position_ids=seg.positions,
                use_cache=True,
                logits_to_keep=keep,
                **{self._cache_arg(self.model): cache.hf_cache},
            )
            logits.append(out.logits[:, -keep:, :].reshape(-1, out.logits.shape[-1]))
        return logits[0] if len(logits) == 1 else torch.cat(logits)

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
