"""The embedded model's cache is a complete Hugging Face folder that other programs serve
as it is (`transformers serve $(agentflow model-path)`: the served-model tests serve it),
and a cache converted by an earlier version, which lacked `architectures` and a
generation config, is completed in place when it is next used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from agentflow.cli import app
from agentflow.models import DEFAULT_MODEL
from agentflow.models.loading import resolve_model_path


def _assert_complete(folder: Path) -> None:
    assert AutoConfig.from_pretrained(folder).architectures == ["LlamaForCausalLM"]
    generation = GenerationConfig.from_pretrained(folder)
    assert (generation.bos_token_id, generation.eos_token_id) == (1, 2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_a_cache_from_an_earlier_version_is_completed_in_place(tmp_path, monkeypatch):
    current = Path(resolve_model_path())
    old = tmp_path / DEFAULT_MODEL
    old.mkdir()
    for item in current.iterdir():
        if item.name == "model.safetensors":
            (old / item.name).symlink_to(item)  # the weights are not touched: no 500 MB copy
        elif item.name != "generation_config.json":
            shutil.copy(item, old / item.name)
    config = json.loads((old / "config.json").read_text())
    config["architectures"] = None  # as earlier conversions wrote it
    (old / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("AGENTFLOW_CACHE", str(tmp_path))

    result = CliRunner().invoke(app, ["model-path"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(old)
    _assert_complete(old)
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in current.iterdir())  # no temporary left


def test_model_path_of_a_folder_that_does_not_exist():
    result = CliRunner().invoke(app, ["model-path", "/no/such/folder"])
    assert result.exit_code == 2
    assert "no model folder at /no/such/folder" in result.output


@pytest.mark.slow
def test_a_fresh_conversion_writes_a_complete_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTFLOW_CACHE", str(tmp_path))
    _assert_complete(Path(resolve_model_path()))
