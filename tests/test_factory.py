"""`agentflow.factory`: names to per-role models, tool names to tools, checked in that order
(tools first, so a typo never waits for a model to load).

Loading is replaced by a counting fake where what is tested is which specs get loaded and
shared; the trainer's models use the random tiny model (real weights, milliseconds).
"""

from __future__ import annotations

import pytest
import torch
from conftest import ScriptedChatModel
from typer.testing import CliRunner

import agentflow.factory as factory
from agentflow.cli import app
from agentflow.factory import DEFAULT_ROLE, ROLES, ModelSpec, ToolSpec, agentflow_graph, load_models, role_specs


@pytest.fixture
def loads(monkeypatch):
    """Replace model loading with a fake that records each spec it is asked to load."""
    seen: list[ModelSpec] = []

    def fake_load(spec: ModelSpec):
        seen.append(spec)
        return ScriptedChatModel(respond=lambda role, messages: "")

    monkeypatch.setattr(factory, "load_chat_model", fake_load)
    return seen


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model or tokenizer is loaded (by any code path: the patch is on
    transformers itself)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the tools were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)


def test_role_specs_override_only_the_model_name():
    default = ModelSpec("a", dtype="bfloat16", seed=3, max_new_tokens=9, temperature=0.5)
    specs = role_specs(default, planner="b")
    assert set(specs) == {DEFAULT_ROLE, *ROLES}
    assert specs["planner"] == ModelSpec("b", dtype="bfloat16", seed=3, max_new_tokens=9, temperature=0.5)
    assert all(specs[role] == default for role in ("executor", "verifier", "generator", DEFAULT_ROLE))


def test_roles_with_equal_specs_share_one_loaded_model(loads):
    models = load_models(role_specs(ModelSpec("a"), planner="b", verifier="b"))
    assert [spec.model for spec in loads] == ["a", "b"]  # each distinct spec loaded once
    assert models["planner"] is models["verifier"]
    assert models[DEFAULT_ROLE] is models["executor"] is models["generator"]
    assert models["planner"] is not models[DEFAULT_ROLE]


def test_tool_spec_parses_text_and_lists_alike():
    assert ToolSpec.parse(" Python, calculator,python ,") == ToolSpec(("python", "calculator"))
    assert ToolSpec.parse(["calculator"]).names == ("calculator",)
    assert ToolSpec.parse("").names is None and ToolSpec.parse(None).names is None  # the default set


@pytest.mark.parametrize(
    ("tools", "corpus", "message"),
    [("calculator,teleporter", None, "unknown tool(s) teleporter"), ("local_search", None, "needs a corpus")],
)
def test_tool_spec_rejects_what_it_cannot_build(tools, corpus, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ToolSpec.parse(tools, corpus)


def test_tool_spec_builds_in_order_with_the_model_for_base_generator():
    llm = ScriptedChatModel(respond=lambda role, messages: "")
    tools = ToolSpec.parse("base_generator,local_search,calculator", ["Bern is the capital."]).build(llm)
    assert [t.name for t in tools] == ["base_generator", "local_search", "calculator"]
    assert tools[0].llm is llm
    assert [t.name for t in ToolSpec().build(None)] == ["python", "calculator"]  # the offline default set


def test_agentflow_graph_gives_each_node_its_roles_model():
    calls: dict[str, set[str]] = {}

    def model(name: str) -> ScriptedChatModel:
        replies = {"planner": " Add.\nTool Name: calculator\nContext: none", "executor": '1+1"}',
                   "verifier": " STOP", "generator": "<answer>2</answer>"}

        def respond(role, messages):
            calls.setdefault(name, set()).add(role)
            return replies.get(role, "")

        return ScriptedChatModel(respond=respond)

    models = {DEFAULT_ROLE: model("default"), "planner": model("planner"), "verifier": model("verifier")}
    tools = ToolSpec.parse("calculator").build(models[DEFAULT_ROLE])
    final = agentflow_graph(models, tools, max_turns=1).invoke({"query": "What is 1+1?"})
    assert final["answer"] == "2"
    # planner and verifier use their own models; roles left out use the default one
    assert calls == {"planner": {"planner"}, "verifier": {"verifier"}, "default": {"executor", "generator"}}


def test_cli_run_checks_tools_before_loading_a_model(no_loading):
    result = CliRunner().invoke(app, ["run", "hi", "--tools", "calculator,teleporter"])
    assert result.exit_code == 2, result.output
    assert "unknown tool(s) teleporter" in " ".join(result.output.split())


def test_cli_run_builds_the_graph_from_the_factory(loads):
    result = CliRunner().invoke(app, ["run", "What is 1+1?", "--model", "m", "--tools", "calculator",
                                      "--max-new-tokens", "7", "--temperature", "0.5", "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert loads == [ModelSpec("m", dtype="float32", seed=4, max_new_tokens=7, temperature=0.5)]


def test_trainer_checks_tools_before_loading_a_model(no_loading):
    from agentflow.trainer import ConfigError, FlowGRPOConfig
    from agentflow.trainer.build import build_graph_and_models

    with pytest.raises(ConfigError, match="'tools'"):
        build_graph_and_models(FlowGRPOConfig(model="tiny", dataset="toolmix", tools=["calculator", "teleporter"]))


def test_trainable_models_freeze_one_copy_of_the_planners_weights():
    planner = ModelSpec("tiny", dtype="float32", seed=0, temperature=0.7, max_new_tokens=5)
    modules = ModelSpec("tiny", dtype="bfloat16", seed=1, temperature=0.0, max_new_tokens=3)
    policy, frozen = factory.trainable_models(planner, "cpu", modules)
    trained = dict(policy.engine.model.named_parameters())
    copied = dict(frozen.engine.model.named_parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in trained.values())
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in copied.values())
    name = next(iter(trained))
    assert trained[name].data_ptr() != copied[name].data_ptr()  # a copy, not the same tensor
    assert torch.equal(trained[name].to(torch.bfloat16), copied[name])  # of the same initial weights
    assert (policy.temperature, policy.max_new_tokens, frozen.temperature, frozen.max_new_tokens) == (0.7, 5, 0.0, 3)

    shared, none = factory.trainable_models(planner, "cpu")
    assert none is None and shared.model_name == "tiny"
    with pytest.raises(ValueError, match="copy the planner's weights"):
        factory.trainable_models(planner, "cpu", ModelSpec("other"))
