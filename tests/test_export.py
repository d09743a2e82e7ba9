"""`agentflow export`: a training checkpoint (full or LoRA) becomes a standalone Hugging Face
folder that the CLI's run and eval, and `transformers serve`, load as they load any model."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import first_letter_reward, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from agentflow.cli import app
from agentflow.models import tiny_model
from agentflow.trainer import build_trainer
from agentflow.trainer.export import INFO_FILE, read_checkpoint

KINDS = {"full": {}, "lora": {"lora": True, "lora_rank": 4}}


@pytest.fixture(scope="module", params=list(KINDS))
def trained(request, tmp_path_factory):
    """(kind, trainer after one step, its run directory): the trained weights differ from the start."""
    tmp = tmp_path_factory.mktemp(request.param)
    config = tiny_config(tmp, max_steps=1, learning_rate=1e-2, zero_variance_groups="keep", **KINDS[request.param])
    trainer = build_trainer(config, reward_fn=first_letter_reward)
    trainer.train()
    return request.param, trainer, trainer.run_dir


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    kind, trainer, run_dir = trained
    out = tmp_path_factory.mktemp(f"{kind}-export") / "planner"
    result = CliRunner().invoke(app, ["export", str(run_dir), str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(out))
    return kind, trainer, out


def test_the_folder_is_complete_and_holds_the_trained_weights(exported):
    kind, trainer, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert (out / "generation_config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()  # merged: no peft files
    info = json.loads((out / INFO_FILE).read_text())
    assert info["step"] == 1 and info["lora_merged"] == (kind == "lora") and info["base_model"] == "tiny"
    assert AutoTokenizer.from_pretrained(out).chat_template
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora_" in name for name, _ in model.named_parameters())
    ids = torch.tensor([[1, 17, 300, 4000, 9, 2]])
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
        untrained = tiny_model(seed=0)(input_ids=ids).logits  # the "tiny" start, seeded as the run was
    # full: the very tensors; LoRA: W + B A rounded once, so fp32 rounding apart
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0 if kind == "full" else 1e-5)
    assert (got - untrained).abs().max() > 1e-3  # the step moved the weights, and the export has the moved ones


def test_run_and_eval_load_the_folder(exported, tmp_path):
    _, _, out = exported
    runner = CliRunner()
    result = runner.invoke(app, ["run", "What is 2 plus 3?", "--model", str(out), "--tools", "calculator",
                                 "--max-turns", "1", "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["turn"] == 1
    bench = tmp_path / "mini.jsonl"
    bench.write_text(json.dumps({"pid": "a", "query": "What is 2 plus 3?", "answer": "5"}) + "\n")
    result = runner.invoke(app, ["eval", "--benchmark", str(bench), "--scorer", "qa_em", "--tools", "calculator",
                                 "--model", "tiny", "--planner-model", str(out), "--max-turns", "1",
                                 "--max-new-tokens", "4", "--output", str(tmp_path / "eval"), "--no-progress"])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "eval" / "mini__agentflow__turns1.jsonl").read_text().splitlines()[0])
    assert row["error"] is None and row["models"]["planner"] == str(out)


def test_read_checkpoint_takes_a_checkpoint_folder_and_refuses_a_non_empty_out(trained, tmp_path):
    kind, trainer, run_dir = trained
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    model, tokenizer, info = read_checkpoint(checkpoint)
    assert info["checkpoint"] == str(checkpoint.resolve()) and tokenizer.chat_template
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("someone's file")
    result = CliRunner().invoke(app, ["export", str(checkpoint), str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not an empty folder" in result.output
    result = CliRunner().invoke(app, ["export", str(tmp_path), str(tmp_path / "new")])
    assert result.exit_code == 2 and "no complete training checkpoint" in result.output


@pytest.mark.served
def test_transformers_serve_loads_the_exported_folder(exported, tmp_path):
    """The real `transformers serve` (tests/served.py) answers a chat request from the folder."""
    import openai

    from tests.served import ModelServer

    kind, _, out = exported
    if kind != "lora":
        pytest.skip("one served load is enough: the LoRA folder, which had to be merged")
    server = ModelServer(str(out), tmp_path / "server.log")
    server.start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120)
        reply = client.chat.completions.create(model=str(out), max_tokens=3,
                                               messages=[{"role": "user", "content": "What is 2 plus 3?"}])
    finally:
        server.stop()
    assert reply.choices[0].message.content is not None
