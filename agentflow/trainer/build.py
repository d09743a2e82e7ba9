"""From a `FlowGRPOConfig` to a running trainer: models, tools, graph, data, reward.

The default layout trains only the planner: the policy `LocalChatModel` (fp32 master
weights, the engine decodes with them) is the planner's model, and one frozen copy
(`frozen_dtype`: bf16 where the hardware runs it fast, else fp32) serves the executor, verifier and generator and, for
full fine-tuning, is also the KL reference, so the reference costs no extra memory.
A module given a served model (`executor_model: openai:NAME`, ...) calls it instead.
The reward is the config's scorer, or with `reward: judge` the verdict of `judge_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from langchain_core.language_models import BaseChatModel

from agentflow.evals.datasets import load_benchmark, with_answer_instruction
from agentflow.evals.judge import JUDGE_CACHE_FILE, JudgeCache
from agentflow.evals.scoring import judge_score, score
from agentflow.factory import DEFAULT_ROLE, ModelSpec, ToolSpec, agentflow_graph, load_chat_model, role_specs, trainable_models
from agentflow.models import fast_dtype
from agentflow.models.vllm_backend import VLLMBackend
from agentflow.trainer.config import ConfigError, FlowGRPOConfig
from agentflow.trainer.flow_grpo import FlowGRPOTrainer
from agentflow.trainer.rollout import RewardFn


def make_reward(scorer: str) -> RewardFn:
    """The verifiable reward: `score(scorer, final answer, item)`."""
    if scorer == "judge":
        raise ValueError("reward: judge is made from the whole config (judge_model): use config_reward")
    score(scorer, "", {"answer": "0", "question": "[1, 2, 3, 4]"})  # fail now on an unknown scorer name

    def reward(state: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        return score(scorer, str(state.get("answer", "")), item)

    return reward


class JudgeReward:
    """`reward: judge`: 1.0 when the judge model says the final answer is equivalent to the
    gold, the published LLM-judge protocol (docs/design.md §5), the same call and cache as
    `agentflow eval --judge-model`. A run's reward costs a judge call, so verdicts are kept
    in the run directory (`use_cache`, done by `build_trainer`) and a resumed run, or a
    group whose runs end with the same answer, does not pay twice. A judge call that
    fails raises, and the rollout counts that run as failed (reward 0), not as wrong."""

    def __init__(self, judge: BaseChatModel, label: str) -> None:
        self.judge, self.label = judge, label
        self.cache: JudgeCache | None = None

    def use_cache(self, directory: Path) -> None:
        self.cache = JudgeCache(Path(directory) / JUDGE_CACHE_FILE, self.judge, self.label)

    def __call__(self, state: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        question, answer, gold = item["query"], str(state.get("answer", "")), str(item["answer"])
        if self.cache is not None:
            return self.cache(question, answer, gold)
        return judge_score(self.judge, question, answer, gold)


def config_reward(config: FlowGRPOConfig) -> RewardFn:
    """The config's reward: its deterministic scorer (`make_reward`), or with `reward: judge`
    a `JudgeReward` over `judge_model` (any name the factory takes; a served one at
    `judge_base_url`, else `base_url`). Raises ConfigError naming the field."""
    if config.reward != "judge":
        try:
            return make_reward(config.reward)
        except ValueError as exc:
            raise ConfigError(f"'reward': {exc}") from exc
    spec = ModelSpec(config.judge_model or "", seed=config.seed, temperature=0.0,
                     max_new_tokens=config.module_max_new_tokens).with_base_url(config.judge_base_url or config.base_url)
    try:
        return JudgeReward(load_chat_model(spec), spec.label)
    except ValueError as exc:  # ModelUnavailable: a missing folder, a server that does not answer, ...
        raise ConfigError(f"'judge_model': {exc}") from exc


def load_datasets(config: FlowGRPOConfig):
    def load(name: str, split: str, limit: int | None):
        data = load_benchmark(name, split=split, limit=limit)
        if config.answer_instruction:
            data = data.map(lambda row: {"query": with_answer_instruction(row["query"])})
        return data

    train = load(config.dataset, config.dataset_split, config.dataset_limit)
    evals = load(config.eval_dataset, config.eval_split, config.eval_limit) if config.eval_dataset else None
    return train, evals


def build_graph_and_models(config: FlowGRPOConfig, device: torch.device | str = "cpu"):
    """(graph, policy chat model, frozen chat model or None) as the trainer expects them.

    The tools and the served modules' base URLs are checked first, so a bad name or URL
    fails before the model loads.
    """
    from agentflow.evals.toolmix import make_toolmix

    corpus = config.corpus or (make_toolmix().corpus if config.dataset == "toolmix" else None)
    try:
        tools = ToolSpec.parse(config.tools, corpus)
    except ValueError as exc:
        raise ConfigError(f"'tools': {exc}") from exc
    planner = ModelSpec(config.model, dtype="float32", seed=config.seed, temperature=config.temperature,
                        max_new_tokens=config.max_new_tokens)
    modules = None
    if not config.share_modules_model:
        dtype = fast_dtype(device) if config.frozen_dtype == "auto" else getattr(torch, config.frozen_dtype)
        modules = ModelSpec(config.model, dtype=str(dtype).removeprefix("torch."), seed=config.seed + 1,
                            temperature=0.0, max_new_tokens=config.module_max_new_tokens)
    try:
        specs = role_specs(
            modules or planner,
            executor=config.executor_model, verifier=config.verifier_model, generator=config.generator_model,
            base_url=config.base_url,
            base_urls={"executor": config.executor_base_url, "verifier": config.verifier_base_url,
                       "generator": config.generator_base_url},
        )
    except ValueError as exc:
        raise ConfigError(f"'*_base_url': {exc}") from exc
    served = {role: spec for role, spec in specs.items() if spec.served}
    try:  # one client per distinct spec; a server that does not answer fails here, naming its URL
        made = {spec: load_chat_model(spec) for spec in set(served.values())}
    except ValueError as exc:
        raise ConfigError(f"'*_model': {exc}") from exc
    policy, frozen = trainable_models(planner, device, modules)
    models = {DEFAULT_ROLE: frozen or policy, "planner": policy, **{role: made[spec] for role, spec in served.items()}}
    graph = agentflow_graph(models, tools.build(models[DEFAULT_ROLE]), max_turns=config.max_turns,
                            max_seconds=config.run_timeout_s)
    return graph, policy, frozen


def build_trainer(
    path_or_config: str | Path | dict[str, Any] | FlowGRPOConfig,
    reward_fn: RewardFn | None = None,
    accelerator: Accelerator | None = None,
    rollout_backend: VLLMBackend | None = None,
) -> FlowGRPOTrainer:
    """Everything `train_from_config` builds, without training (tests swap the reward, and
    give a `VLLMBackend` over a stand-in for vLLM where the config asks for vLLM rollouts)."""
    config = FlowGRPOConfig.load(path_or_config)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    # Bad names and files fail here, before the planner's model is loaded, naming the field.
    reward_fn = reward_fn or config_reward(config)
    try:
        train, evals = load_datasets(config)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"'dataset' / 'eval_dataset': {exc}") from exc
    graph, policy, frozen = build_graph_and_models(config, accelerator.device)
    trainer = FlowGRPOTrainer(
        config, graph, policy, reward_fn, train, evals,
        ref_model=frozen.engine.model if frozen is not None else None,
        frozen_engines=[frozen.engine] if frozen is not None else [],
        accelerator=accelerator, rollout_backend=rollout_backend,
    )
    if isinstance(reward_fn, JudgeReward):  # the run directory exists from here on
        reward_fn.use_cache(trainer.run_dir)
    return trainer


def train_from_config(path_or_config: str | Path | dict[str, Any] | FlowGRPOConfig) -> Path:
    """Train as the config says (resuming when `resume_from` is set); returns the run directory."""
    return build_trainer(path_or_config).train()
