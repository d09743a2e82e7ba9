"""The vLLM seam without vLLM: request/response mapping against a stand-in server.

vLLM cannot run on this CPU machine, so a local `http.server` on 127.0.0.1 stands in for
`vllm serve`: it records each request and answers the way vLLM's `/v1/completions`
does. The backend reaches it through the real `openai` client, so what is tested is the
request that goes over the wire and the parsing of the reply that comes back.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from langchain_core.messages import HumanMessage

from agentflow.models import GenerationBackend, LocalChatModel, SamplingParams
from agentflow.models.vllm_backend import VLLMBackend

Reply = tuple[int, dict]  # HTTP status, JSON body


@contextmanager
def vllm_standin(reply: Callable[[dict], Reply]) -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """A stand-in vLLM server: `reply(request body)` gives each answer; yields its base URL
    and the (path, body) of every request it received."""
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body))
            status, answer = reply(body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("retry-after-ms", "1")  # a retry comes at once
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def completion(choice: dict) -> dict:
    """A vLLM `/v1/completions` reply around one choice."""
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "policy",
            "choices": [{"index": 0, "text": "ignored", **choice}]}


def test_request_and_response_mapping(tokenizer):
    old_style = {  # older servers: tokens come back as "token_id:<id>" strings
        "logprobs": {"tokens": ["token_id:11", "token_id:12", "token_id:2"], "token_logprobs": [-0.5, -1.25, -0.1]},
        "finish_reason": "stop",
    }
    with vllm_standin(lambda body: (200, completion(old_style))) as (url, received):
        backend = VLLMBackend(tokenizer, base_url=url, model="policy")
        out = backend.generate([1, 2, 3], SamplingParams(max_new_tokens=7, temperature=0.7, seed=5, stop=("\n\n",)))
        backend.close()
    path, payload = received[0]
    assert path == "/v1/completions"
    assert payload["prompt"] == [1, 2, 3] and payload["model"] == "policy"
    assert payload["max_tokens"] == 7 and payload["temperature"] == 0.7 and payload["seed"] == 5
    assert payload["logprobs"] == 0 and payload["stop"] == ["\n\n"]
    assert payload["return_tokens_as_token_ids"] and payload["return_token_ids"]  # vLLM's fields, at the top level
    assert payload["include_stop_str_in_output"] and payload["skip_special_tokens"] is False
    assert out.prompt_ids == [1, 2, 3] and out.completion_ids == [11, 12, 2]
    assert out.logprobs == [-0.5, -1.25, -0.1] and out.finish_reason == "stop"
    assert backend.tokens == 3
    # newer servers return the ids directly
    choice = {"token_ids": [7, 8], "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0]}, "finish_reason": "length"}
    assert VLLMBackend.parse_choice([1], choice).completion_ids == [7, 8]
    assert "vllm" not in sys.modules  # imported lazily, only in-process


def test_a_server_error_is_retried():
    replies = iter([(503, {"error": {"message": "busy"}}),
                    (200, completion({"token_ids": [5], "logprobs": {"token_logprobs": [-0.2]}, "finish_reason": "length"}))])
    with vllm_standin(lambda body: next(replies)) as (url, received):
        backend = VLLMBackend(None, base_url=url, model="m", max_retries=1)
        out = backend.generate([1], SamplingParams(max_new_tokens=1))
        backend.close()
    assert len(received) == 2 and out.completion_ids == [5] and out.finish_reason == "length"


def test_chat_model_over_the_vllm_backend(tokenizer):
    ids = tokenizer.encode(" hello there", add_special_tokens=False)
    choice = {"token_ids": ids, "logprobs": {"token_logprobs": [-0.3] * len(ids)}, "finish_reason": "stop"}
    with vllm_standin(lambda body: (200, completion(choice))) as (url, received):
        backend = VLLMBackend(tokenizer, base_url=url, model="m")
        assert isinstance(backend, GenerationBackend)
        llm = LocalChatModel(engine=backend, model_name="m", temperature=0.7)
        result = llm.generate([[HumanMessage("hi")]]).generations[0][0]
        backend.close()
    assert result.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert result.generation_info["completion_token_ids"] == ids
    assert result.generation_info["prompt_token_ids"] == llm.encode_messages([HumanMessage("hi")])[0]
    assert received[0][1]["prompt"] == result.generation_info["prompt_token_ids"]
