"""`FlowGRPOConfig`: every knob of a Flow-GRPO (or offline SFT) run, in one dataclass.

Loaded from YAML (or a dict) with strict validation: an unknown key or a bad value
fails before any model is loaded, with a message naming the field, because a typo in
a training config otherwise surfaces (or silently does nothing) an hour into a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

LossAggregation = Literal["token_mean", "sample_mean", "run_mean"]
ZeroVariancePolicy = Literal["skip", "keep"]

TINY_MODEL = "tiny"  # `agentflow.models.tiny_model()` with the default model's tokenizer (tests)


class ConfigError(ValueError):
    """A config field is unknown or has a bad value; the message names the field."""


@dataclass
class FlowGRPOConfig:
    """Hyper-parameters and run settings. Defaults follow the published Flow-GRPO run
    (DESIGN.md §2) where one exists, scaled down to a CPU-sized model otherwise."""

    # -- what to train, on what --------------------------------------------------------
    model: str = "smollm2-135m-instruct"  # name, Hub id or local path; "tiny" for tests
    dataset: str = "toolmix"  # benchmark name or .json/.jsonl file
    dataset_split: str = "train"
    dataset_limit: int | None = None
    eval_dataset: str | None = None  # evaluated greedily every `eval_every` steps
    eval_split: str = "test"
    eval_limit: int | None = 32
    reward: str = "toolmix"  # scorer: a benchmark name or scorer kind of agentflow.evals.scoring
    answer_instruction: bool = True  # append the <answer></answer> instruction to queries
    tools: list[str] | None = None  # tool names (agentflow.tools.get_tools); None: default_tools
    corpus: str | None = None  # JSONL corpus for local_search; toolmix uses its own corpus
    planner_node: str = "planner"  # graph node whose chat-model calls are trained

    # -- Flow-GRPO ----------------------------------------------------------------------
    group_size: int = 8  # G runs per query
    queries_per_step: int = 4
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.001  # KL coefficient (k3 estimator); 0 skips the reference forward
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.3
    advantage_eps: float = 1e-6
    # token_mean (default): every completion token of the step weighs the same, as in the
    # published (verl) trainer and TRL's DAPO loss; no per-sequence length normalisation,
    # which would make long wrong turns cheap. sample_mean: each planner turn weighs the
    # same. run_mean: each run weighs the same however many turns/tokens it has.
    loss_aggregation: LossAggregation = "token_mean"
    zero_variance_groups: ZeroVariancePolicy = "skip"  # all-equal rewards: no signal
    max_turns: int = 3  # planner turns per training run (published: 3)
    run_timeout_s: float = 300.0  # the graph's time limit per run (routes to the generator)
    temperature: float = 0.7  # planner sampling temperature (training)
    max_new_tokens: int = 256  # planner completion limit
    module_max_new_tokens: int = 256  # executor / verifier / generator limit
    share_modules_model: bool = False  # True: all four modules use the trained model
    max_concurrency: int | None = None  # graph runs in flight; None: all runs of the step

    # -- schedule -----------------------------------------------------------------------
    max_steps: int | None = None  # None: `epochs` passes over the dataset
    # wall-clock budget of one `train()` call: no step starts after it (the step under way
    # finishes, is logged and saved); None: no limit
    max_train_minutes: float | None = None
    epochs: int = 1
    mini_batches: int = 1  # optimizer steps per rollout batch (>1: later ones are off-policy)
    micro_batch_size: int = 4  # samples per forward/backward; gradients accumulate
    bf16_autocast: bool = True  # update forward in bf16 autocast where bf16 is fast; master weights stay fp32
    # dtype of the frozen copy that serves the executor/verifier/generator and, with full
    # fine-tuning, is the KL reference (bf16 halves its memory; it is only fast with bf16 matrix units)
    frozen_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 only where it is fast

    # -- LoRA ---------------------------------------------------------------------------
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    # -- bookkeeping ----------------------------------------------------------------------
    seed: int = 0
    output_dir: str = "runs"
    run_name: str | None = None  # None: flow_grpo-<timestamp>
    resume_from: str | None = None  # a checkpoint dir or a run dir (its latest checkpoint)
    save_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: never
    log_every: int = 1
    tensorboard: bool = True  # used when tensorboard is importable

    # -- offline SFT ablation (sft_from_config) ------------------------------------------
    sft_queries: int = 16  # queries rolled out (group_size runs each) to collect successes
    sft_epochs: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Type-check every field, then the value constraints; raise ConfigError naming the field."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ConfigError(f"config field {f.name!r}: expected {_describe(hints[f.name])}, got {value!r}")
        positive = ["group_size", "queries_per_step", "epochs", "mini_batches", "micro_batch_size", "max_turns",
                    "max_new_tokens", "module_max_new_tokens", "lora_rank", "lora_alpha", "save_every",
                    "log_every", "keep_checkpoints", "sft_epochs", "sft_queries"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_concurrency", "dataset_limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1 or null, got {getattr(self, name)}")
        if self.max_train_minutes is not None and not self.max_train_minutes > 0:
            raise ConfigError(f"config field 'max_train_minutes' must be > 0 or null, got {self.max_train_minutes}")
        for name in ("learning_rate", "run_timeout_s", "advantage_eps", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"config field {name!r} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "weight_decay", "temperature", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config field {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("clip_eps_low", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be in [0, 1), got {getattr(self, name)}")
        if self.clip_eps_high < 0:
            raise ConfigError(f"config field 'clip_eps_high' must be >= 0, got {self.clip_eps_high}")
        if self.temperature == 0:
            raise ConfigError("config field 'temperature' must be > 0 for training: a group of greedy runs has no variance")
        if self.group_size < 2:
            raise ConfigError(f"config field 'group_size' must be >= 2 (advantages compare runs), got {self.group_size}")
        if self.lora and not self.lora_targets:
            raise ConfigError("config field 'lora_targets' must name at least one module when lora is on")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlowGRPOConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "FlowGRPOConfig":
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path_or_config: "str | Path | dict[str, Any] | FlowGRPOConfig") -> "FlowGRPOConfig":
        """A config from a YAML path, a dict, or an existing config (returned as is)."""
        if isinstance(path_or_config, FlowGRPOConfig):
            return path_or_config
        if isinstance(path_or_config, dict):
            return cls.from_dict(path_or_config)
        return cls.from_yaml(path_or_config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _matches(value: Any, hint: Any) -> bool:
    """A small runtime check for the few types the config uses (YAML gives ints for floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
