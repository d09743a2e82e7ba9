"""One full run on the real embedded SmolLM2-135M-Instruct (no fakes), and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agentflow import build_agentflow
from agentflow.cli import app
from agentflow.models import LocalChatModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return LocalChatModel.from_pretrained(max_new_tokens=128)  # the CLI default


def test_full_run_on_the_embedded_model(smollm):
    """The README's first command, in process: greedy, so the run is the same every time."""
    graph = build_agentflow(smollm, max_turns=3)
    final = graph.invoke({"query": "What is 12345 * 6789?"})
    assert 1 <= final["turn"] <= 3
    assert len(final["memory"]) == final["turn"]
    assert final["tool_errors"] == sum(r["error"] is not None for r in final["memory"])
    assert final["verdict"] in {"STOP", "CONTINUE"}
    # The planner sends the product to a tool and the generator reports the tool's result.
    assert any(r["result"].strip() == "83810205" for r in final["memory"]), final["memory"]
    assert "83810205" in final["answer"].replace(",", "")


def test_cli_run_json(tmp_path):
    result = CliRunner().invoke(
        app, ["run", "What is 2 + 3?", "--max-turns", "1", "--max-new-tokens", "48", "--json", "--tools", "calculator"]
    )
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["turn"] == 1 and len(final["memory"]) == 1
    assert final["memory"][0]["result"].strip() == "5"
    assert "5" in final["answer"]


def test_cli_rejects_unknown_tools():
    result = CliRunner().invoke(app, ["run", "hi", "--tools", "teleporter"])
    assert result.exit_code == 2
    assert "teleporter" in result.output


def test_drafted_decoding_keeps_the_real_models_logprobs():
    """On the real weights in fp32, sampled with drafts kept (the lean forward's grouped
    attention over a token and its drafts): every recorded log-prob within 1e-4 of the
    model's own full forward, which the trainer recomputes."""
    import torch

    from agentflow.models import GenerationEngine, SamplingParams, load_model
    from tests.conftest import reference_logprobs

    model, tokenizer = load_model(dtype=torch.float32)
    text = "Repeat exactly: the quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog."
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    engine = GenerationEngine(model, tokenizer, seed=0, draft_positions=64)
    outs = [f.result() for f in [engine.submit(prompt, SamplingParams(max_new_tokens=40, temperature=0.7, seed=s))
                                 for s in range(4)]]
    assert engine.stats["kept"] > 0
    for out in outs:
        assert out.logprobs == pytest.approx(reference_logprobs(model, prompt, out.completion_ids, 0.7), abs=1e-4)
