"""Benchmarks and scoring: load evaluation sets, score answers (also the training reward)."""

from agentflow.evals.datasets import BENCHMARKS, load_benchmark
from agentflow.evals.scoring import score
from agentflow.evals.toolmix import make_toolmix

__all__ = ["BENCHMARKS", "load_benchmark", "make_toolmix", "score"]
