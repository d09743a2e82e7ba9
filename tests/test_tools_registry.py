"""Tool cards, what every tool keeps to (blank arguments refused, failures as ToolException),
the tool registry (default_tools/get_tools) and the base_generator tool.

The base_generator tests use a fake chat model from langchain-core: a real
model is not needed to test the plumbing (messages in, text out, errors).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field, ValidationError

from agentflow.nodes.parsing import parse_tool_arguments
from agentflow.tools import (
    BASE_GENERATOR_SYSTEM,
    TOOL_NAMES,
    BaseGeneratorTool,
    CalculatorTool,
    LocalSearchTool,
    PythonSandboxTool,
    ToolUnavailable,
    WebSearchTool,
    WikipediaTool,
    default_tools,
    get_tools,
    render_tool_cards,
    tool_card,
)
from agentflow.tools.cards import card_metadata


class _Args(BaseModel):
    city: str = Field(description="City name.")
    days: int | None = Field(default=None, description="How many days ahead.")


class _Weather(BaseTool):
    name: str = "weather"
    description: str = "Get the forecast. Uses a made-up service.\nSecond line."
    args_schema: type[BaseModel] = _Args

    def _run(self, city: str, days: int | None = None) -> str:
        return "sunny"


def test_card_built_from_schema_and_metadata() -> None:
    card = tool_card(CalculatorTool())
    assert card["name"] == "calculator"
    assert card["input_types"] == {
        "expression": {
            "type": "string",
            "description": "One arithmetic expression, e.g. 12,345 * 6,789 or (3/4 + 1/8) ^ 2.",
        }
    }
    assert card["output_type"] == "str"
    assert card["demo_commands"] == ['calculator(expression="12,345 * 6,789")']
    assert card["limitations"] and card["best_practices"]


def test_card_without_metadata_and_with_optional_args() -> None:
    card = tool_card(_Weather())
    assert card["input_types"]["days"] == {"type": "integer|null", "description": "How many days ahead."}
    assert card["demo_commands"] == [] and card["limitations"] == [] and card["best_practices"] == []


def test_rendered_cards_are_compact() -> None:
    text = render_tool_cards([CalculatorTool(), _Weather()])
    assert text.splitlines() == [
        "- calculator: Compute one arithmetic expression exactly.",
        "  args: expression (string)",
        '  example: calculator(expression="12,345 * 6,789")',
        "- weather: Get the forecast.",
        "  args: city (string), days (integer|null)",
    ]


def test_every_offline_tool_has_a_short_card() -> None:
    tools = default_tools(llm=FakeListChatModel(responses=["x"]), corpus=["some text"])
    assert [t.name for t in tools] == ["python", "calculator", "local_search", "base_generator"]
    for tool in tools:
        assert tool.handle_tool_error is False
        assert len(render_tool_cards([tool]).splitlines()) == 3
    assert len(render_tool_cards(tools)) < 1200


def test_card_metadata_is_what_the_card_reads_and_is_copied_per_tool() -> None:
    metadata = card_metadata(examples=[{"city": "Oslo"}], limitations=["Made up."], best_practices=["Name a city."])
    card = tool_card(_Weather(metadata=metadata))
    assert card["demo_commands"] == ['weather(city="Oslo")']
    assert card["limitations"] == ["Made up."] and card["best_practices"] == ["Name a city."]
    first, second = CalculatorTool(), CalculatorTool()
    first.metadata["limitations"].append("changed")
    assert "changed" not in second.metadata["limitations"]


@pytest.mark.parametrize(
    "tool",
    [
        LocalSearchTool.from_texts(["some text"]),
        BaseGeneratorTool(llm=FakeListChatModel(responses=["x"])),
        WebSearchTool(client=None),
        WikipediaTool(api_wrapper=None),
    ],
    ids=lambda tool: tool.name,
)
def test_blank_query_is_invalid_arguments_before_the_tool_runs(tool: BaseTool) -> None:
    """The executor validates arguments against the schema first and records the error."""
    parsed = parse_tool_arguments('{"query": "   "}', tool)
    assert parsed.args is None and parsed.error.startswith(f"invalid arguments for {tool.name}")
    with pytest.raises(ValidationError, match="at least 1 character"):
        tool.invoke({"query": " "})


def test_default_tools_without_llm_or_corpus() -> None:
    tools = default_tools(python_timeout=3)
    assert [t.name for t in tools] == ["python", "calculator"]
    assert isinstance(tools[0], PythonSandboxTool) and tools[0].limits.timeout_s == 3


def test_default_tools_with_a_corpus_file(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "Canberra is the capital of Australia."}) + "\n")
    local = default_tools(corpus=str(path))[-1]
    assert isinstance(local, LocalSearchTool)
    assert "Canberra" in local.invoke({"query": "Australia"})
    assert isinstance(default_tools(corpus=path)[-1], LocalSearchTool)


def test_get_tools_by_name() -> None:
    tools = get_tools([" Python", "calculator", "calculator"])
    assert [t.name for t in tools] == ["python", "calculator"]


def test_get_tools_rejects_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(ValueError) as caught:
        get_tools(["python", "browser"])
    message = str(caught.value)
    assert "browser" in message and all(name in message for name in TOOL_NAMES)


def test_get_tools_explains_missing_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="needs a chat model"):
        get_tools(["base_generator"])
    with pytest.raises(ValueError, match="needs a corpus"):
        get_tools(["local_search"])
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    with pytest.raises(ToolUnavailable, match="TAVILY_API_KEY"):
        get_tools(["web_search"])


def test_base_generator_sends_system_prompt_and_returns_text() -> None:
    seen: list[list[BaseMessage]] = []

    class Recording(FakeListChatModel):
        def _call(self, messages: list[BaseMessage], *args: object, **kwargs: object) -> str:
            seen.append(messages)
            return super()._call(messages, *args, **kwargs)

    tool = BaseGeneratorTool(llm=Recording(responses=["  Paris.  "]))
    assert tool.invoke({"query": "Capital of France?"}) == "Paris."
    assert [m.type for m in seen[0]] == ["system", "human"]
    assert seen[0][0].content == BASE_GENERATOR_SYSTEM
    assert seen[0][1].content == "Capital of France?"


def test_base_generator_async() -> None:
    tool = BaseGeneratorTool(llm=GenericFakeChatModel(messages=iter([AIMessage("42")])))
    assert asyncio.run(tool.ainvoke({"query": "answer?"})) == "42"


def test_base_generator_errors_become_tool_exceptions() -> None:
    with pytest.raises(ToolException, match="empty answer"):
        BaseGeneratorTool(llm=FakeListChatModel(responses=[""])).invoke({"query": "hi"})
    with pytest.raises(ToolException, match="^base_generator failed: "):
        BaseGeneratorTool(llm=GenericFakeChatModel(messages=iter([]))).invoke({"query": "hi"})
    with pytest.raises(ToolException, match="^base_generator failed: "):
        asyncio.run(BaseGeneratorTool(llm=GenericFakeChatModel(messages=iter([]))).ainvoke({"query": "hi"}))
