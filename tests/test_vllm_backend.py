"""The vLLM paths without vLLM: every test here runs against a STAND-IN for vLLM.

vLLM cannot run on this CPU machine (the real thing runs in `scripts/gpu_check.sh`), so:
* a local `http.server` on 127.0.0.1 stands in for `vllm serve`: it records each request
  and answers the way vLLM's `/v1/completions` does. The backend reaches it through the
  real `openai` client (and TRL's real `VLLMClient.generate`), so what is tested is the
  request that goes over the wire and the parsing of the reply that comes back;
* `tests/vllm_standin.py` stands in for an in-process `vllm.LLM` and for TRL's
  `VLLMClient`, holding its own bf16 copy of the weights, so the Flow-GRPO trainer's weight
  push, old-log-prob recomputation, truncated importance weights and gap metric run for real.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from langchain_core.messages import HumanMessage
from trainer_helpers import first_letter_reward, tiny_config
from vllm_standin import STANDIN_API, StandInClient, StandInLLM

from agentflow.models import GenerationBackend, LocalChatModel, SamplingParams, tiny_model
from agentflow.models.vllm_backend import VLLMBackend
from agentflow.trainer import build_trainer, collect_rollouts, read_metrics
from agentflow.trainer.flow_grpo import _pad, build_samples, completion_logprobs, sampler_gap_metrics
from agentflow.trainer.vllm_rollout import hf_weights

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


# ---------------------------------------------------------------------------------------
# Flow-GRPO rollouts through vLLM, against a STAND-IN for vLLM (tests/vllm_standin.py):
# vLLM cannot run on this CPU machine; the real thing runs in scripts/gpu_check.sh. The
# stand-in holds its own bf16 copy of the weights, like vLLM, so everything it knows of
# training arrives through the backend's weight push.
# ---------------------------------------------------------------------------------------

def _standin_trainer(tmp_path, tokenizer, mode: str, **overrides):
    """A tiny-model trainer whose planner decodes through `VLLMBackend` over a stand-in for
    vLLM that loaded the same starting weights (the "tiny" model is seeded by `seed`)."""
    start = tiny_model(vocab_size=len(tokenizer), seed=0)
    if mode == "colocate":
        standin = StandInLLM(start, tokenizer)
        backend = VLLMBackend(tokenizer, llm=standin, api=STANDIN_API)
    else:
        standin = StandInClient(start, tokenizer)
        backend = VLLMBackend(tokenizer, client=standin)
    config = tiny_config(tmp_path, rollout_backend=f"vllm_{mode}", **overrides)
    return build_trainer(config, reward_fn=first_letter_reward, rollout_backend=backend), standin


def _bf16(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to(torch.bfloat16) for name, t in tensors.items()}


def test_colocate_gets_the_weights_after_every_optimizer_step(tmp_path, tokenizer):
    trainer, llm = _standin_trainer(tmp_path, tokenizer, "colocate", mini_batches=2, zero_variance_groups="keep")
    assert trainer.policy.engine is trainer.sampler and trainer.engines[0] is trainer.sampler
    assert len(llm.weights.loads) == 1  # the start: a resumed run's weights are not vLLM's checkpoint
    after_steps = []
    step = trainer.optimizer.step

    def step_and_snapshot(*args, **kwargs):
        out = step(*args, **kwargs)
        after_steps.append({name: p.detach().clone() for name, p in trainer.model.named_parameters()})
        return out

    trainer.optimizer.step = step_and_snapshot
    trainer.train()
    metrics = read_metrics(trainer.run_dir)
    optimizer_steps = sum(m["optimizer_steps"] for m in metrics)
    assert optimizer_steps == 4 == len(after_steps)  # 2 steps x 2 mini-batches
    # one push per optimizer step, right after it, with exactly the updated tensors
    assert len(llm.weights.loads) == 1 + optimizer_steps and llm.weights.prefix_resets == 1 + optimizer_steps
    for pushed, weights in zip(llm.weights.loads[1:], after_steps):
        assert pushed.keys() == weights.keys()
        for name in weights:
            torch.testing.assert_close(pushed[name], weights[name], rtol=0, atol=0)
    # vLLM's copy is now the trained policy (in its own dtype)
    standin = dict(llm.weights.base.named_parameters())
    for name, tensor in _bf16(dict(trainer.model.named_parameters())).items():
        torch.testing.assert_close(standin[name], tensor, rtol=0, atol=0)
    # every planner request went to vLLM; the local engine decoded none
    assert llm.requests == sum(m["runs"] for m in metrics) and trainer.sampler.tokens > 0
    for m in metrics:  # the gap is logged every step: bf16 sampler vs fp32 trainer differ a little
        assert 0 < m["logprob_gap_mean"] <= m["logprob_gap_max"] < 0.1
        assert m["is_weight_mean"] == pytest.approx(1.0, abs=0.01) and m["is_truncated_fraction"] == 0
        assert m["rollout_backend"] == "vllm_colocate" and m["rollout_dtype"] == "vllm-bfloat16"
    assert [m["weight_pushes"] for m in metrics] == [3, 5]


def test_old_logprobs_are_recomputed_and_importance_weights_truncated(tmp_path, tokenizer):
    trainer, llm = _standin_trainer(tmp_path, tokenizer, "colocate", zero_variance_groups="keep", tis_cap=2.0)
    sample = llm.weights.sample

    def sample_and_misreport(prompt_ids, params):  # a sampler whose log-probs are 1 nat too low
        out = sample(prompt_ids, params)
        out.logprobs = [lp - 1.0 for lp in out.logprobs]
        return out

    def rollout():
        groups = collect_rollouts(trainer.graph, trainer._step_items(1), 4, first_letter_reward,
                                  max_concurrency=1, max_turns=1)
        return build_samples(groups, trainer.config)[0]

    samples = rollout()
    sampled = [list(s.old_logprobs) for s in samples]
    stats = sampler_gap_metrics([trainer._recompute_old_logprobs(samples)])
    gaps = []
    for s, reported in zip(samples, sampled):
        assert s.sampler_logprobs == reported
        with torch.no_grad(), trainer._autocast():  # as the update's forward computes them
            own = completion_logprobs(trainer.model, _pad([s], trainer.accelerator.device))[0][0].float()
        torch.testing.assert_close(torch.tensor(s.old_logprobs), own, rtol=0, atol=1e-5)  # the trainer's own
        expected = torch.exp(own - torch.tensor(reported)).clamp(max=2.0)
        torch.testing.assert_close(torch.tensor(s.is_weights), expected, rtol=1e-5, atol=1e-6)
        gaps += (own - torch.tensor(reported)).abs().tolist()
    assert stats["logprob_gap_mean"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-4)
    assert stats["logprob_gap_max"] == pytest.approx(max(gaps), rel=1e-4)

    llm.weights.sample = sample_and_misreport  # ratio e^1 = 2.72 > cap 2: every token truncated
    samples = rollout()
    stats = sampler_gap_metrics([trainer._recompute_old_logprobs(samples)])
    assert stats["is_truncated_fraction"] == 1.0 and stats["logprob_gap_mean"] == pytest.approx(1.0, abs=0.01)
    assert all(w == pytest.approx(2.0) for s in samples for w in s.is_weights)
    trainer.config.sampler_correction = "recompute"  # recomputation only: no weights
    samples = rollout()
    trainer._recompute_old_logprobs(samples)
    assert all(w == 1.0 for s in samples for w in s.is_weights)
    # the weights multiply the loss: all zero, nothing is learnt (beta 0), though the step runs
    for s in samples:
        s.is_weights = [0.0] * len(s.completion_ids)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer._optimizer_step(samples)["optimizer_steps"] == 1
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_lora_colocate_pushes_the_adapter(tmp_path, tokenizer):
    from peft import PeftModel, load_peft_weights

    trainer, llm = _standin_trainer(tmp_path, tokenizer, "colocate", lora=True, lora_rank=4,
                                    learning_rate=1e-2, zero_variance_groups="keep")
    base = {name: p.detach().clone() for name, p in llm.weights.base.named_parameters()}
    trainer.train()
    optimizer_steps = sum(m["optimizer_steps"] for m in read_metrics(trainer.run_dir))
    assert optimizer_steps == 2 and llm.weights.loads == []  # no full weights: the base stays as loaded
    request = trainer.sampler.lora_request
    assert request.lora_int_id == 1 + optimizer_steps  # one new adapter id per push
    # the rollouts decoded with the adapters of the start and of step 1, each loaded once
    assert [r.lora_int_id for r in llm.lora_requests] == [1, 2]
    assert isinstance(llm.weights.engine.model, PeftModel)
    pushed = load_peft_weights(request.lora_path, device="cpu")
    trained = {name: p.detach() for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(pushed) == len(trained) > 0
    for name, p in trained.items():
        torch.testing.assert_close(pushed[name.replace(".default", "")], p, rtol=0, atol=0)
    for name, p in llm.weights.base.named_parameters():
        assert torch.equal(p, base[name])
    assert len(list((trainer.run_dir / ".vllm-adapters-rank0").iterdir())) == 2  # older versions pruned


def test_server_gets_merged_lora_weights_with_their_metadata(tmp_path, tokenizer):
    trainer, client = _standin_trainer(tmp_path, tokenizer, "server", lora=True, lora_rank=4,
                                       learning_rate=1e-2, zero_variance_groups="keep")
    trainer.train()
    optimizer_steps = sum(m["optimizer_steps"] for m in read_metrics(trainer.run_dir))
    assert len(client.metadata) == len(client.weights.loads) == 1 + optimizer_steps
    names = [name for name, _, _ in client.metadata[-1]]
    assert not [n for n in names if "lora_" in n or "base_layer" in n or n.startswith("base_model")]
    merged = copy.deepcopy(trainer.model).merge_and_unload()  # peft's own merge, for reference
    standin = dict(client.weights.base.named_parameters())
    assert set(names) == set(standin)
    for name, p in merged.named_parameters():
        torch.testing.assert_close(standin[name].float(), p.detach().to(torch.bfloat16).float(), rtol=0, atol=0)
    pushed = dict(hf_weights(trainer.model))
    for name, p in merged.named_parameters():
        torch.testing.assert_close(pushed[name], p.detach(), rtol=1e-6, atol=1e-7)
    assert client.requests == sum(m["runs"] for m in read_metrics(trainer.run_dir))


def test_trl_client_carries_our_token_contract(tokenizer):
    """TRL's real `VLLMClient.generate` against the HTTP stand-in: token ids go out, ids and
    log-probs come back in the shape `VLLMBackend` reads. (Its constructor insists on vLLM
    being importable and would open the CUDA weight channel, so the object is made without it.)"""
    import requests
    from trl.generation.vllm_client import VLLMClient

    answer = {"prompt_token_ids": [1, 2, 3], "token_ids": [11, 12],
              "logprobs": {"tokens": ["token_id:11", "token_id:12"], "token_logprobs": [-0.5, -1.5],
                           "top_logprobs": [{"token_id:11": -0.5}, {"token_id:12": -1.5}]},
              "finish_reason": "length"}
    with vllm_standin(lambda body: (200, completion(answer))) as (url, received):
        client = object.__new__(VLLMClient)
        client.session, client.base_url, client.model = requests.Session(), url.removesuffix("/v1"), "policy"
        backend = VLLMBackend(tokenizer, client=client)
        out = backend.generate([1, 2, 3], SamplingParams(max_new_tokens=2, temperature=0.7, seed=9, stop=("\n",)))
        backend.close()
    path, body = received[0]
    assert path == "/v1/completions" and body["prompt"] == [[1, 2, 3]] and body["logprobs"] == 0
    assert body["seed"] == 9 and body["stop"] == ["\n"] and body["include_stop_str_in_output"] is True
    assert body["return_token_ids"] and body["max_tokens"] == 2 and body["temperature"] == 0.7
    assert out.completion_ids == [11, 12] and out.logprobs == [-0.5, -1.5] and out.finish_reason == "length"
