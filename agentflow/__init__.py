"""AgentFlow on LangGraph: a trainable modular agent (planner, executor, verifier,
generator) whose planner is trained in the flow with Flow-GRPO."""

from agentflow.graph import AgentFlowState, MemoryRecord, agentflow_tool, build_agentflow

__version__ = "0.1.0"
__all__ = ["AgentFlowState", "MemoryRecord", "__version__", "agentflow_tool", "build_agentflow"]
