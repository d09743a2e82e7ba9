"""`LocalChatModel`: a LangChain chat model over a local transformers model.

It is the trainable chat model of the project: every generation reports the exact
prompt token ids, the sampled completion token ids and their log-probs in
`generation_info`, so the Flow-GRPO trainer can train on what was sampled (token-in,
token-out: never decode and re-encode). Requests go through a shared
`GenerationEngine`, so concurrent graph runs are decoded together.
"""

from __future__ import annotations

from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from agentflow.models.engine import GenerationBackend, GenerationEngine, SamplingParams
from agentflow.models.loading import DEFAULT_MODEL, load_model

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class LocalChatModel(BaseChatModel):
    """Chat model backed by a `GenerationEngine` (one HF model, batched decoding).

    A trailing `AIMessage` in the input is treated as a prefix of the answer: the
    chat template is rendered up to the assistant turn, the prefix appended, and the
    model continues it. The planner uses this to start its turn with `Sub-Goal:`,
    which is what makes a 135M model follow the output contract (docs/design.md §1).

    Besides `stop` strings, a call may pass `stop_when`, a predicate on the decoded
    completion checked after every token (the modules' stop rules: a complete JSON
    object is no fixed string).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # The local `GenerationEngine` (CPU, continuous batching) or any `GenerationBackend`,
    # e.g. `agentflow.models.vllm_backend.VLLMBackend` on a GPU machine.
    engine: GenerationBackend
    # The graph's nodes start a reply only for models that continue a trailing AIMessage.
    continues_final_message: bool = True
    # ... and pass their stop predicate (`stop_when=`, docs/design.md §1) only to models that
    # take one; a served model would send an unknown field to its API.
    takes_stop_when: bool = True
    model_name: str = DEFAULT_MODEL
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        dtype: torch.dtype | str = torch.float32,
        device: str = "cpu",
        seed: int = 0,
        max_batch_size: int = 32,
        **kwargs: Any,
    ) -> "LocalChatModel":
        model, tokenizer = load_model(name_or_path, dtype=dtype, device=device)
        engine = GenerationEngine(model, tokenizer, max_batch_size=max_batch_size, seed=seed)
        return cls(engine=engine, model_name=name_or_path, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "agentflow-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def encode_messages(self, messages: list[BaseMessage]) -> tuple[list[int], str]:
        """Render messages with the chat template; returns prompt ids and the answer prefix."""
        prefix = ""
        if messages and isinstance(messages[-1], AIMessage):
            prefix = str(messages[-1].content)
            messages = messages[:-1]
        chat = [{"role": _ROLES.get(m.type, m.type), "content": str(m.content)} for m in messages]
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + prefix
        return self.tokenizer.encode(text, add_special_tokens=False), prefix

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt_ids, prefix = self.encode_messages(messages)
        params = SamplingParams(
            max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed"),
            stop=tuple(stop or ()),
            stop_when=kwargs.get("stop_when"),
        )
        out = self.engine.generate(prompt_ids, params)
        text = self.tokenizer.decode(out.completion_ids, skip_special_tokens=True)
        for s in params.stop:  # the tokens stay as sampled; only the text is cut
            text = text.split(s)[0]
        info = {
            "prompt_token_ids": out.prompt_ids,
            "completion_token_ids": out.completion_ids,
            "logprobs": out.logprobs,
            "temperature": params.temperature,
            "finish_reason": out.finish_reason,
            "prefix": prefix,
        }
        message = AIMessage(
            content=text,
            response_metadata={"model_name": self.model_name, "finish_reason": out.finish_reason},
            usage_metadata={
                "input_tokens": len(out.prompt_ids),
                "output_tokens": len(out.completion_ids),
                "total_tokens": len(out.prompt_ids) + len(out.completion_ids),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])
