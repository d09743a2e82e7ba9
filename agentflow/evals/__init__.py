"""Benchmarks and scoring: load evaluation sets, score answers (also the training reward),
and the eval harness: `run_eval` (runner), the systems it compares (systems, with the
ReAct baseline `build_react`), summaries (stats) and the table and plots (report).

The harness names are imported on first use, so the reward path (`score`) does not pay
for importing LangChain/LangGraph.
"""

from agentflow.evals.datasets import BENCHMARKS, load_benchmark
from agentflow.evals.scoring import score
from agentflow.evals.toolmix import make_toolmix

_LAZY = {
    "run_eval": "agentflow.evals.runner",
    "summarize": "agentflow.evals.stats",
    "write_report": "agentflow.evals.report",
    "build_react": "agentflow.evals.react",
}

__all__ = ["BENCHMARKS", "build_react", "load_benchmark", "make_toolmix", "run_eval", "score", "summarize",
           "write_report"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
