"""Using a compiled AgentFlow graph inside other LangChain / LangGraph apps.

The compiled graph is already a runnable (invoke, stream, batch, ainvoke, abatch).
`agentflow_tool` wraps it as a `BaseTool`, so a whole AgentFlow can be one tool of
another agent (e.g. `langgraph.prebuilt.create_react_agent(model, [agentflow_tool(g)])`).
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, Field


class _AgentFlowInput(BaseModel):
    query: str = Field(description="The question to solve, self-contained.")


def agentflow_tool(
    graph: CompiledStateGraph,
    name: str = "agentflow",
    description: str = "Solve a question step by step with a planner, tools and a verifier; returns the final answer.",
) -> BaseTool:
    """Expose a compiled AgentFlow graph as a LangChain tool that returns the final answer."""

    def run(query: str, config: RunnableConfig | None = None) -> str:
        return graph.invoke({"query": query}, config)["answer"]

    async def arun(query: str, config: RunnableConfig | None = None) -> str:
        return (await graph.ainvoke({"query": query}, config))["answer"]

    return StructuredTool.from_function(
        func=run, coroutine=arun, name=name, description=description, args_schema=_AgentFlowInput
    )
