"""Flow-GRPO training of the AgentFlow planner (and the offline SFT ablation).

Entry points for the CLI: `train_from_config`, `plot_run`, `sft_from_config`.
The algorithm itself lives in `agentflow.trainer.flow_grpo`.
"""

from agentflow.trainer.build import JudgeReward, build_trainer, config_reward, make_reward, train_from_config
from agentflow.trainer.checkpoint import latest_checkpoint
from agentflow.trainer.config import ConfigError, FlowGRPOConfig
from agentflow.trainer.flow_grpo import FlowGRPOTrainer
from agentflow.trainer.metrics import plot_run, read_metrics
from agentflow.trainer.rollout import PlannerRecorder, RunResult, collect_rollouts
from agentflow.trainer.sft import sft_from_config

__all__ = [
    "ConfigError",
    "FlowGRPOConfig",
    "FlowGRPOTrainer",
    "JudgeReward",
    "PlannerRecorder",
    "RunResult",
    "build_trainer",
    "collect_rollouts",
    "config_reward",
    "latest_checkpoint",
    "make_reward",
    "plot_run",
    "read_metrics",
    "sft_from_config",
    "train_from_config",
]
