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
