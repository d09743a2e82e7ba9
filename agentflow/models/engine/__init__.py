"""The local generation engine: continuous batching over a slot KV cache with a prefix cache.

`engine.GenerationEngine` ties together the parts, each in its own module:
`scheduler` (which requests run, when the buffers are re-laid out; pure Python),
`kv_cache` (the slot buffers), `prefix_cache` (keys/values of recent prompts),
`runner` and `fast_forward` (the forward pass), `sampler` (per-request sampling) and
`drafter` (prompt-lookup drafts the next forward verifies).
"""

from agentflow.models.engine.engine import GenerationEngine
from agentflow.models.engine.runner import mark_weights_updated
from agentflow.models.engine.types import Generation, GenerationBackend, RequestTooLarge, SamplingParams

__all__ = ["Generation", "GenerationBackend", "GenerationEngine", "RequestTooLarge", "SamplingParams",
           "mark_weights_updated"]
