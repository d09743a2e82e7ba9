"""The engine's public types: what a caller sends, what it gets back, and the backend protocol.

Pure Python (no torch), so that `VLLMBackend` and the scheduler share them without
loading the local engine's machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # A stop condition no string can express (a module's contract is complete, e.g. one
    # whole JSON object: docs/design.md §1): called with the decoded completion after
    # every token; True finishes the request ("stop"). Must not raise. Backends that cannot
    # run it (a served one) ignore it; the caller cuts the text instead.
    stop_when: Callable[[str], bool] | None = None


@dataclass
class Generation:
    """One finished request: exact ids and the log-prob of every sampled token.

    `logprobs[i]` is log softmax(logits / T)[completion_ids[i]] (T = 1 when greedy),
    i.e. the log-probability under the full tempered distribution the trainer
    recomputes; top-p only restricts which tokens may be drawn.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (eos or stop string) or "length"


@runtime_checkable
class GenerationBackend(Protocol):
    """What `LocalChatModel` needs from a generator: `GenerationEngine`, or `VLLMBackend`."""

    tokenizer: object
    tokens: int

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Future: ...

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation: ...

    def reseed(self, seed: int) -> None: ...


class RequestTooLarge(ValueError):
    """A single request cannot fit the engine's token budget."""
