"""Shared fixtures.

`scripted_llm` is a fake chat model: the graph's wiring, routing, parsing and memory
are tested with replies we choose, because a real model's replies cannot be chosen.
Model behaviour is covered by the tiny random model (fast) and the real embedded
SmolLM2-135M (tests marked `slow` still run in CI).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict


class ScriptedChatModel(BaseChatModel):
    """A fake chat model whose reply is `respond(role, messages)`.

    `role` is which module is calling (planner/executor/verifier/generator/other),
    read from the system prompt, so one scripted model can serve the whole graph
    like a real one does. A trailing AIMessage is a reply prefix, as with
    `LocalChatModel`; the script returns only the continuation.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    respond: Callable[[str, list[BaseMessage]], str]
    continues_final_message: bool = True

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.respond(role_of(messages), messages)))])


def role_of(messages: list[BaseMessage]) -> str:
    system = str(messages[0].content)
    for role, marker in [
        ("planner", "You are the planner"),
        ("executor", "You write the input"),
        ("verifier", "You decide if the question"),
        ("generator", "You answer the question using"),
    ]:
        if system.startswith(marker):
            return role
    return "other"


def query_of(messages: list[BaseMessage]) -> str:
    match = re.search(r"Question: (.*)", str(messages[1].content))
    return match.group(1).strip() if match else ""


def reference_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 0.0) -> list[float]:
    """Log-probs of `completion` from one full forward pass of the model itself, tempered as
    the engine samples (greedy: none): what the engine's recorded log-probs must equal."""
    import torch

    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logits = logits / temperature if temperature > 0 else logits
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def submit_joining_mid_flight(engine, prompts: list[list[int]], params: list) -> list:
    """Submit requests so that most join a running batch: the third waits for the second
    to finish, the rest go in while it decodes. Returns the futures, in order."""
    futures = []
    for p, s in zip(prompts, params):
        futures.append(engine.submit(p, s))
        if len(futures) == 2:
            futures[-1].result()
    return futures


@pytest.fixture(params=[True, False], ids=["fast_forward", "transformers_forward"])
def fast_forward(request):
    """Engine tests that take it run on both forwards: the lean one and transformers' own."""
    return request.param


@pytest.fixture
def scripted():
    return lambda respond: ScriptedChatModel(respond=respond)


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (converting the shipped GGUF once, then cached)."""
    from transformers import AutoTokenizer

    from agentflow.models.loading import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path())


@pytest.fixture
def tiny_llm(tokenizer):
    """A LocalChatModel over a random 2-layer Llama: real forward passes, noise outputs."""
    from agentflow.models import GenerationEngine, LocalChatModel, tiny_model

    engine = GenerationEngine(tiny_model(vocab_size=len(tokenizer)), tokenizer, seed=0)
    return LocalChatModel(engine=engine, model_name="tiny", max_new_tokens=24)


@pytest.fixture(scope="session")
def model_server(tmp_path_factory):
    """A running `transformers serve` of the embedded model (tests.served.ModelServer),
    shared by the session's served-model tests and stopped at the end."""
    from agentflow.models.loading import resolve_model_path
    from tests.served import ModelServer

    server = ModelServer(resolve_model_path(), tmp_path_factory.mktemp("served") / "server.log")
    server.start()
    yield server
    server.stop()
