"""One way to name a model (agentflow.factory): local names, `provider:model` specs with
their base URLs per role, and a one-line exit-2 error for each way a model cannot be made.
None of these tests needs a running server: a server that is down is a free port."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec

import pytest
from conftest import ScriptedChatModel
from typer.testing import CliRunner

from agentflow.cli import app
from agentflow.factory import DEFAULT_ROLE, ModelSpec, ModelUnavailable, role_specs, served_provider, specs_from_env
from tests.served import free_port

LOCAL = "smollm2-135m-instruct"


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_provider_specs_are_served_and_names_and_paths_are_local(tmp_path):
    assert served_provider("openai:gpt-4o-mini") == "openai"
    assert served_provider("ollama:llama3.2:1b") == "ollama"  # the model's own tag keeps its colon
    assert served_provider("openai:/models/my-folder") == "openai"
    for local in (LOCAL, "HuggingFaceTB/SmolLM2-135M-Instruct", "/models/x", "tiny"):
        assert served_provider(local) is None
    folder = tmp_path / "odd:name"
    folder.mkdir()
    assert served_provider(str(folder)) is None  # an existing path is local, colon or not


def test_base_url_goes_with_served_specs_and_a_role_url_overrides_it():
    specs = role_specs(ModelSpec("openai:m"), planner=LOCAL, generator="openai:g", base_url="http://a/v1",
                       base_urls={"generator": "http://b/v1"})
    assert specs["planner"] == ModelSpec(LOCAL)  # a local model ignores the command's base URL
    assert specs["executor"].base_url == specs["verifier"].base_url == specs[DEFAULT_ROLE].base_url == "http://a/v1"
    assert specs["generator"] == ModelSpec("openai:g", base_url="http://b/v1")
    assert specs["executor"].label == "openai:m @ http://a/v1"
    with pytest.raises(ValueError, match="planner model 'smollm2-135m-instruct' runs locally"):
        role_specs(ModelSpec("openai:m"), planner=LOCAL, base_urls={"planner": "http://a/v1"})


def test_the_langgraph_server_names_its_models_in_the_environment():
    specs = specs_from_env({"AGENTFLOW_MODEL": "openai:m", "AGENTFLOW_BASE_URL": "http://a/v1",
                            "AGENTFLOW_PLANNER_MODEL": LOCAL, "AGENTFLOW_VERIFIER_BASE_URL": "http://b/v1",
                            "AGENTFLOW_GENERATOR_MODEL": ""})
    assert {role: spec.label for role, spec in specs.items()} == {
        DEFAULT_ROLE: "openai:m @ http://a/v1", "planner": LOCAL, "executor": "openai:m @ http://a/v1",
        "verifier": "openai:m @ http://b/v1", "generator": "openai:m @ http://a/v1",
    }
    assert specs_from_env({}) == role_specs(ModelSpec())


def test_served_settings_reach_the_client_that_retries(monkeypatch):
    """Retrying 429s, 5xx and timeouts is the client's job: it gets the spec's settings."""
    from agentflow.factory import served_chat_model

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    llm = served_chat_model(ModelSpec("openai:m", temperature=0.3, max_new_tokens=7, timeout_s=9.0, max_retries=4))
    assert (llm.model_name, llm.temperature, llm.max_tokens, llm.request_timeout, llm.max_retries) == ("m", 0.3, 7, 9.0, 4)
    assert not getattr(llm, "continues_final_message", False)  # served chat APIs get no reply prefix


def _fails_in_one_line(args: list[str], *needles: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a traceback
    text = one_line(result.output)
    for needle in needles:
        assert needle in text, result.output


def test_a_local_path_that_does_not_exist():
    _fails_in_one_line(["run", "hi", "--model", "/no/such/path", "--tools", "calculator"], "no model folder at /no/such/path")


def test_a_server_that_is_down_names_its_url_and_what_to_start():
    url = f"http://127.0.0.1:{free_port()}/v1"
    _fails_in_one_line(["run", "hi", "--model", "openai:m", "--base-url", url, "--tools", "calculator"],
                       f"no server answers at {url}", "transformers serve")
    _fails_in_one_line(["eval", "--benchmark", "toolmix", "--limit", "1", "--executor-model", "openai:m",
                        "--executor-base-url", url, "--model", "tiny"], f"no server answers at {url}")


def test_a_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _fails_in_one_line(["run", "hi", "--model", "openai:gpt-4o-mini", "--tools", "calculator"], "OPENAI_API_KEY")


@pytest.mark.skipif(find_spec("langchain_anthropic") is not None, reason="langchain-anthropic is installed here")
def test_a_missing_integration_package_names_the_package():
    _fails_in_one_line(["run", "hi", "--model", "anthropic:claude-sonnet-4-5", "--tools", "calculator"],
                       "pip install langchain-anthropic")


def test_an_unknown_provider_lists_the_known_ones():
    _fails_in_one_line(["run", "hi", "--model", "nosuch:model", "--tools", "calculator"],
                       "Unsupported provider='nosuch'", "openai", "ollama")


def test_a_base_url_for_a_local_role_is_refused():
    _fails_in_one_line(["run", "hi", "--planner-base-url", "http://127.0.0.1:1/v1", "--tools", "calculator"],
                       "runs locally")


def test_a_hub_id_that_cannot_be_fetched_offline(tmp_path):
    """A subprocess: the Hub's offline switch is read when huggingface_hub is imported."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "agentflow.cli", "run", "hi", "--model", "nobody/no-such-model",
                           "--tools", "calculator"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "nobody/no-such-model is not a local folder and the Hugging Face Hub could not provide it" in one_line(done.stderr)


def test_the_trained_planner_cannot_be_served():
    from agentflow.trainer import ConfigError, FlowGRPOConfig

    with pytest.raises(ConfigError, match="'model'.*the planner is trained, so it must be a local model"):
        FlowGRPOConfig(model="openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match="'executor_model'.*serve it"):
        FlowGRPOConfig(executor_model="HuggingFaceTB/SmolLM2-360M-Instruct")
    config = FlowGRPOConfig(executor_model="openai:m", base_url="http://a/v1")
    assert FlowGRPOConfig.from_dict(config.to_dict()) == config


def test_training_with_a_served_module_checks_its_server_before_loading(monkeypatch):
    from agentflow.trainer import ConfigError, FlowGRPOConfig
    from agentflow.trainer.build import build_graph_and_models

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConfigError, match=f"no server answers at {url}"):
        build_graph_and_models(FlowGRPOConfig(model="tiny", tools=["calculator"], verifier_model="openai:m",
                                              verifier_base_url=url))


def test_an_eval_folder_made_with_other_models_is_refused(tmp_path):
    from agentflow.evals.runner import run_eval

    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"pid": "1", "query": "What is 1+1?", "answer": "2"}) + "\n")
    llm = ScriptedChatModel(respond=lambda role, messages: "Conclusion: STOP" if role == "verifier" else "2")
    common = {"llm": llm, "output": tmp_path / "out", "tools": "calculator", "progress": False, "plots": False}
    run_eval(str(bench), specs=role_specs(ModelSpec("a")), **common)
    run_eval(str(bench), specs=role_specs(ModelSpec("a")), **common)  # the same models resume
    with pytest.raises(ValueError, match="made with other models .*planner=a.* than this run's .*planner=b"):
        run_eval(str(bench), specs=role_specs(ModelSpec("a"), planner="b"), **common)
