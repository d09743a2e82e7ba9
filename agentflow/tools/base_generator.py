"""The `base_generator` tool: answer a sub-goal directly with a chat model.

Some sub-goals need no computation or retrieval, only the model's own
knowledge or reasoning (summarise, explain, restate). The planner can route
those here. Its system prompt lives with every other prompt in
`agentflow/prompts.py`.
"""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

from agentflow.prompts import BASE_GENERATOR_SYSTEM
from agentflow.tools.cards import card_metadata
from agentflow.tools.contract import NonBlankText, reported_as_tool_failure


class BaseGeneratorInput(BaseModel):
    """Arguments of the `base_generator` tool."""

    query: NonBlankText = Field(description="The question or instruction to answer in plain text.")


class BaseGeneratorTool(BaseTool):
    """One chat call with a short system prompt; model errors become ToolException."""

    name: str = "base_generator"
    description: str = "Answer a question or do a text task (explain, summarise, reason) with the language model itself."
    args_schema: type[BaseModel] = BaseGeneratorInput
    llm: BaseChatModel
    metadata: dict = card_metadata(
        examples=[{"query": "Summarize in one sentence: the mitochondria produce most of the cell's energy."}],
        limitations=["May be wrong about facts and arithmetic; no internet."],
        best_practices=["Ask one clear, self-contained question with all needed context."],
    )

    def _run(self, query: str) -> str:
        with reported_as_tool_failure(self.name):
            reply = self.llm.invoke(_messages(query))
        return _text(reply)

    async def _arun(self, query: str) -> str:
        with reported_as_tool_failure(self.name):
            reply = await self.llm.ainvoke(_messages(query))
        return _text(reply)


def _messages(query: str) -> list[BaseMessage]:
    return [SystemMessage(BASE_GENERATOR_SYSTEM), HumanMessage(query)]


def _text(reply: BaseMessage) -> str:
    text = reply.text.strip()
    if not text:
        raise ToolException("base_generator: the model returned an empty answer")
    return text
