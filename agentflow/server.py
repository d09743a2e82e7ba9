"""Entry point for a LangGraph server (`langgraph.json` points here).

Builds AgentFlow with the offline tools at import time, which is what `langgraph dev` /
LangGraph Platform expect of a graph module. A server is configured through its
environment, so the models are named there (`agentflow.factory.specs_from_env`):
AGENTFLOW_MODEL and AGENTFLOW_BASE_URL for every module, AGENTFLOW_<MODULE>_MODEL and
AGENTFLOW_<MODULE>_BASE_URL for one; unset, every module runs the embedded SmolLM2-135M.
"""

import os

from agentflow.factory import DEFAULT_ROLE, ToolSpec, agentflow_graph, load_models, specs_from_env

_models = load_models(specs_from_env(os.environ))
graph = agentflow_graph(_models, ToolSpec().build(_models[DEFAULT_ROLE]))
