"""The AgentFlow graph: state schema and builder."""

from agentflow.graph.builder import NODES, build_agentflow, make_router
from agentflow.graph.embed import agentflow_tool
from agentflow.state import AgentFlowState, MemoryRecord, Verdict

__all__ = ["NODES", "AgentFlowState", "MemoryRecord", "Verdict", "agentflow_tool", "build_agentflow", "make_router"]
