"""The local model layer: loading (incl. the embedded default), batched engine, chat model."""

from agentflow.models.chat import LocalChatModel
from agentflow.models.engine import (
    Generation,
    GenerationBackend,
    GenerationEngine,
    RequestTooLarge,
    SamplingParams,
    mark_weights_updated,
)
from agentflow.models.loading import (
    DEFAULT_MODEL,
    bf16_is_fast,
    cache_dir,
    fast_dtype,
    load_model,
    resolve_model_path,
    tiny_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "bf16_is_fast",
    "fast_dtype",
    "Generation",
    "GenerationBackend",
    "GenerationEngine",
    "LocalChatModel",
    "RequestTooLarge",
    "SamplingParams",
    "cache_dir",
    "load_model",
    "resolve_model_path",
    "mark_weights_updated",
    "tiny_model",
]
