"""Entry point for a LangGraph server (`langgraph.json` points here).

Builds the default AgentFlow (embedded SmolLM2-135M for every module, the offline tools)
at import time, which is what `langgraph dev` / LangGraph Platform expect of a graph module.
"""

from agentflow.factory import DEFAULT_ROLE, ModelSpec, ToolSpec, agentflow_graph, load_models, role_specs

_models = load_models(role_specs(ModelSpec()))
graph = agentflow_graph(_models, ToolSpec().build(_models[DEFAULT_ROLE]))
