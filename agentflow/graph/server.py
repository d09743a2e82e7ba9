"""Entry point for a LangGraph server (`langgraph.json` points here).

Builds the default AgentFlow (embedded SmolLM2-135M, offline tools) at import time,
which is what `langgraph dev` / LangGraph Platform expect of a graph module.
"""

from agentflow.graph.builder import build_agentflow

graph = build_agentflow()
