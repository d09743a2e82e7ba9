"""The vLLM seam without vLLM: request/response mapping against a fake server reply."""

from __future__ import annotations

import sys

from langchain_core.messages import HumanMessage

from agentflow.models import GenerationBackend, LocalChatModel, SamplingParams
from agentflow.models.vllm_backend import VLLMBackend


def test_request_and_response_mapping(tokenizer):
    sent = []

    def fake_post(url, payload):
        sent.append((url, payload))
        return {"choices": [{
            "text": "ignored",
            "logprobs": {"tokens": ["token_id:11", "token_id:12", "token_id:2"], "token_logprobs": [-0.5, -1.25, -0.1]},
            "finish_reason": "stop",
        }]}

    backend = VLLMBackend(tokenizer, base_url="http://gpu:8000/v1/", model="policy", post=fake_post)
    out = backend.generate([1, 2, 3], SamplingParams(max_new_tokens=7, temperature=0.7, seed=5, stop=("\n\n",)))
    url, payload = sent[0]
    assert url == "http://gpu:8000/v1/completions"
    assert payload["prompt"] == [1, 2, 3] and payload["model"] == "policy"
    assert payload["max_tokens"] == 7 and payload["temperature"] == 0.7 and payload["seed"] == 5
    assert payload["logprobs"] == 0 and payload["return_tokens_as_token_ids"] and payload["stop"] == ["\n\n"]
    assert out.prompt_ids == [1, 2, 3] and out.completion_ids == [11, 12, 2]
    assert out.logprobs == [-0.5, -1.25, -0.1] and out.finish_reason == "stop"
    assert backend.tokens == 3
    # newer servers return the ids directly
    choice = {"token_ids": [7, 8], "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0]}, "finish_reason": "length"}
    assert VLLMBackend.parse_choice([1], choice).completion_ids == [7, 8]
    assert "vllm" not in sys.modules  # imported lazily, only in-process


def test_chat_model_over_the_vllm_backend(tokenizer):
    ids = tokenizer.encode(" hello there", add_special_tokens=False)
    fake = lambda url, payload: {"choices": [{"token_ids": ids, "logprobs": {"token_logprobs": [-0.3] * len(ids)},
                                              "finish_reason": "stop"}]}
    backend = VLLMBackend(tokenizer, base_url="http://x/v1", model="m", post=fake)
    assert isinstance(backend, GenerationBackend)
    llm = LocalChatModel(engine=backend, model_name="m", temperature=0.7)
    result = llm.generate([[HumanMessage("hi")]]).generations[0][0]
    assert result.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert result.generation_info["completion_token_ids"] == ids
    assert result.generation_info["prompt_token_ids"] == llm.encode_messages([HumanMessage("hi")])[0]
