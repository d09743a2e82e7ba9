"""Served models against a real OpenAI-compatible server (`transformers serve` of the
embedded model, the `model_server` fixture): every module served, a local planner with
served modules, a server that dies mid-eval, a busy server the client retries, and a
Flow-GRPO step whose frozen modules are served. The 135M model answers poorly; these
tests check the plumbing (requests reach the server, replies are parsed and recorded,
failures are recorded and resumed), not accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_helpers import first_letter_reward, tiny_config
from typer.testing import CliRunner

from agentflow.cli import app
from agentflow.models import DEFAULT_MODEL

pytestmark = pytest.mark.served

ITEMS = [
    {"pid": "a", "query": "What is 12 times 7?", "answer": "84"},
    {"pid": "b", "query": "What is 30 plus 12?", "answer": "42"},
]


def _bench(tmp_path: Path, items: list[dict]) -> Path:
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _requests(server) -> int:
    """Chat requests the server has answered so far (its access log)."""
    return server.log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


def test_run_with_every_module_served(model_server, monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a local model was loaded although every module is served")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    before = _requests(model_server)
    result = CliRunner().invoke(app, [
        "run", "What is 12 times 7?", "--model", model_server.model, "--base-url", model_server.base_url,
        "--tools", "calculator", "--max-turns", "1", "--max-new-tokens", "32", "--json",
    ])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["turn"] == 1 and len(final["memory"]) == 1  # the planner's turn, parsed (or recorded as an error)
    assert final["verdict"] in {"STOP", "CONTINUE"}
    assert final["response"].strip()  # the generator's reply came back from the server
    # planner, verifier, generator (and the executor when the planner named a tool)
    assert _requests(model_server) - before >= 3


def test_eval_with_a_local_planner_and_served_modules_and_judge(model_server, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "eval", "--benchmark", str(_bench(tmp_path, ITEMS)), "--scorer", "qa_em", "--tools", "calculator",
        "--planner-model", DEFAULT_MODEL, "--model", model_server.model, "--base-url", model_server.base_url,
        "--judge-model", model_server.model,
        "--max-turns", "1", "--max-new-tokens", "24", "--concurrency", "2", "--output", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    rows = _rows(out / "mini__agentflow__turns1.jsonl")
    served = f"{model_server.model} @ {model_server.base_url}"
    assert sorted(row["pid"] for row in rows) == ["a", "b"]
    for row in rows:
        assert row["error"] is None, row.get("traceback")
        assert row["models"] == {"default": served, "planner": DEFAULT_MODEL, "executor": served,
                                 "verifier": served, "generator": served, "judge": served}
        assert row["prediction"].strip()
        assert row["judge_score"] in (0.0, 1.0)  # the served judge's verdict (the 135M judge is no judge)
        # tokens of both kinds of model: the local planner's and the server's (which
        # reports the model id it serves, the folder's path)
        assert set(row["usage"]) == {DEFAULT_MODEL, model_server.model_path}
        assert all(u["output_tokens"] > 0 for u in row["usage"].values())
    summary = json.loads((out / "mini__agentflow__turns1.summary.json").read_text())
    assert summary["config"]["models"]["executor"] == served
    assert summary["judge_accuracy"] == sum(row["judge_score"] for row in rows) / 2
    assert summary["token_usage"][model_server.model_path]["output_tokens"] == sum(
        row["usage"][model_server.model_path]["output_tokens"] for row in rows)


def test_a_server_that_dies_mid_eval_fails_items_that_a_rerun_completes(model_server, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "agentflow.cli", "eval", "--benchmark", str(_bench(tmp_path, ITEMS)),
        "--scorer", "qa_em", "--tools", "calculator", "--model", model_server.model,
        "--base-url", model_server.base_url, "--max-turns", "1", "--max-new-tokens", "16",
        "--concurrency", "1", "--output", str(out), "--no-progress",
    ]
    results = out / "mini__agentflow__turns1.jsonl"
    try:
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while not (results.is_file() and _rows(results)):  # the first item is done: take the server down
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.5)
        model_server.stop()
        output, _ = first.communicate(timeout=300)
        assert first.returncode == 0, output  # failed items are data, not a failed command
        rows = _rows(results)
        assert len(rows) == 2
        failed = [row for row in rows if row["error"] is not None]
        assert failed and all("Connection" in row["error"] for row in failed), rows
    finally:
        model_server.start()  # later tests need the server, whatever happened here

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    rows = _rows(results)
    assert sorted(row["pid"] for row in rows) == ["a", "b"]  # every item exactly once
    assert all(row["error"] is None for row in rows), [row["error"] for row in rows]
    summary = json.loads((out / "mini__agentflow__turns1.summary.json").read_text())
    assert summary["n"] == 2 and summary["failed"] == 0 and summary["resumed"] == 2 - len(failed)


@pytest.mark.parametrize("status", [429, 503, None], ids=["rate-limited", "unavailable", "timeout"])
def test_the_client_retries_busy_servers(model_server, status):
    from agentflow.factory import ModelSpec, load_chat_model
    from tests.served import FlakyProxy

    with FlakyProxy(model_server.base_url, status) as proxy:
        llm = load_chat_model(ModelSpec(model_server.model, base_url=proxy.base_url, max_new_tokens=4,
                                        timeout_s=10.0, max_retries=2))
        reply = llm.invoke("Say hi.")
    assert (proxy.failed, proxy.forwarded) == (1, 1)  # the first try failed, the retry got through
    assert reply.usage_metadata["output_tokens"] > 0


def test_a_flow_grpo_step_with_served_frozen_modules(model_server, tmp_path):
    from agentflow.trainer import build_trainer, read_metrics

    config = tiny_config(tmp_path, max_steps=1, group_size=2, queries_per_step=1, zero_variance_groups="keep",
                         executor_model=model_server.model, verifier_model=model_server.model,
                         generator_model=model_server.model, base_url=model_server.base_url)
    trainer = build_trainer(config, reward_fn=first_letter_reward)
    before = _requests(model_server)
    trainer.train()
    [metrics] = read_metrics(trainer.run_dir)
    assert (metrics["runs"], metrics["failed_runs"], metrics["optimizer_steps"]) == (2, 0, 1)
    # each run's verifier and generator (and executor, when the tiny planner names a tool) were served
    assert _requests(model_server) - before >= 4


def test_run_whose_server_dies_mid_run_ends_with_one_line_and_exit_code_2(model_server):
    from tests.served import DyingProxy

    with DyingProxy(model_server.base_url, answers=1) as proxy:  # the planner's call, then nothing
        result = CliRunner().invoke(app, [
            "run", "What is 12 times 7?", "--model", model_server.model, "--base-url", proxy.base_url,
            "--tools", "calculator", "--max-turns", "1", "--max-new-tokens", "16",
        ])
    assert proxy.answered == 1 and proxy.closed
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proxy.base_url.removesuffix("/v1") in errors[0], result.output
    assert "is the server still running?" in errors[0]


def test_a_flow_grpo_step_rewarded_by_a_served_judge(model_server, tmp_path):
    """`reward: judge`: every run's reward is the served judge's verdict, kept in the run's
    judge cache (the one `agentflow eval --judge-model` keeps), which a rerun reads back."""
    from agentflow.evals.judge import JUDGE_CACHE_FILE, JudgeCache
    from agentflow.trainer import JudgeReward, build_trainer, read_metrics
    from agentflow.trainer.rollout import read_rollouts

    config = tiny_config(tmp_path, max_steps=1, group_size=2, queries_per_step=1, zero_variance_groups="keep",
                         reward="judge", judge_model=model_server.model, judge_base_url=model_server.base_url,
                         module_max_new_tokens=16)
    trainer = build_trainer(config)
    assert isinstance(trainer.reward_fn, JudgeReward)
    before = _requests(model_server)
    trainer.train()
    [metrics] = read_metrics(trainer.run_dir)
    assert (metrics["runs"], metrics["failed_runs"]) == (2, 0)
    rows = read_rollouts(trainer.run_dir)
    assert _requests(model_server) - before == len({(row["query"], row["answer"]) for row in rows})  # one call each
    # a cache with no judge behind it: every run's verdict must already be there, and be its reward
    cache = JudgeCache(trainer.run_dir / JUDGE_CACHE_FILE, judge=None, judge_label=f"{model_server.model} @ {model_server.base_url}")
    assert [cache(row["query"], row["answer"], str(row["gold"])) for row in rows] == [row["reward"] for row in rows]
    assert cache.calls == 0


def test_the_parse_rates_benchmark_against_the_server(model_server, capsys):
    """benchmarks/parse_rates.py's served systems (every module served; the frozen modules
    served beside a local planner) on one item, against the running server: every served
    module's calls reach it and are counted."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "parse_rates.py"
    spec = importlib.util.spec_from_file_location("parse_rates", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = _requests(model_server)
    out = module.main(["--n", "1", "--systems", "served,mixed", "--quick", "--base-url", model_server.base_url])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    served, mixed = out["systems"]
    assert served["served"] == ["planner", "executor", "verifier", "generator"] and served["failed_runs"] == 0
    assert served["planner"]["calls"] >= 1 and served["decode_steps_per_run"] is None  # nothing decoded here
    assert mixed["served"] == ["executor", "verifier", "generator"] and mixed["decode_steps_per_run"] > 0
    calls = sum(s[m]["calls"] for s in (served, mixed) for m in ("planner", "executor", "verifier") if m in s["served"])
    assert _requests(model_server) - before == calls + 2  # + each run's one generator call
