"""The four AgentFlow modules (planner, executor, verifier, generator) and their parsers."""

from agentflow.nodes.modules import make_executor, make_generator, make_planner, make_verifier, render_memory

__all__ = ["make_executor", "make_generator", "make_planner", "make_verifier", "render_memory"]
