"""`FlowGRPOConfig`: every knob of a Flow-GRPO (or offline SFT) run, in one pydantic model.

Loaded from YAML (or a dict) with strict validation: an unknown key or a bad value
fails before any model is loaded, with a message naming the field, because a typo in
a training config otherwise surfaces (or silently does nothing) an hour into a run.
Validation is pydantic's, in strict mode: YAML's `"8"` is not an int and `yes` in
quotes is not a bool; the one coercion kept is int -> float (`learning_rate: 1`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from peft import LoraConfig

LossAggregation = Literal["token_mean", "sample_mean", "run_mean"]
ZeroVariancePolicy = Literal["skip", "keep"]
RolloutBackend = Literal["engine", "vllm_colocate", "vllm_server"]
UnitFloat = Annotated[float, Field(ge=0, lt=1)]  # in [0, 1)


class ConfigError(ValueError):
    """A config field is unknown or has a bad value; the message names the field."""


class FlowGRPOConfig(BaseModel):
    """Hyper-parameters and run settings. Defaults follow the published Flow-GRPO run
    (docs/design.md §3) where one exists, scaled down to a CPU-sized model otherwise.

    Every way of building one (`FlowGRPOConfig(...)`, `from_dict`, `from_yaml`, `load`)
    validates every field and raises `ConfigError` naming each bad one.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    # -- what to train, on what --------------------------------------------------------
    model: str = "smollm2-135m-instruct"  # the trained planner: name, Hub id or local path; "tiny" for tests
    dataset: str = "toolmix"  # benchmark name or .json/.jsonl file
    dataset_split: str = "train"
    dataset_limit: PositiveInt | None = None
    eval_dataset: str | None = None  # evaluated greedily every `eval_every` steps
    eval_split: str = "test"
    eval_limit: PositiveInt | None = 32
    # scorer: a benchmark name or scorer kind of agentflow.evals.scoring (deterministic), or
    # "judge": the published LLM-judge verdict of `judge_model` (docs/design.md §5), as
    # `agentflow eval --judge-model` gives it, cached in the run directory (judge_cache.jsonl)
    reward: str = "toolmix"
    judge_model: str | None = None  # any model name the factory takes (local, or provider:model)
    judge_base_url: str | None = None  # the judge's endpoint (default: base_url)
    answer_instruction: bool = True  # append the <answer></answer> instruction to queries
    tools: list[str] | None = None  # tool names (agentflow.tools.get_tools); None: default_tools
    corpus: str | None = None  # JSONL corpus for local_search; toolmix uses its own corpus
    planner_node: str = "planner"  # graph node whose chat-model calls are trained

    # -- Flow-GRPO ----------------------------------------------------------------------
    group_size: int = Field(8, ge=2, description="advantages compare the G runs of a group")
    queries_per_step: PositiveInt = 4
    learning_rate: PositiveFloat = 1e-6
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: PositiveFloat = 1.0
    beta: NonNegativeFloat = 0.001  # KL coefficient (k3 estimator); 0 skips the reference forward
    clip_eps_low: UnitFloat = 0.2
    clip_eps_high: NonNegativeFloat = 0.3
    advantage_eps: PositiveFloat = 1e-6
    # token_mean (default): every completion token of the step weighs the same, as in the
    # published (verl) trainer and TRL's DAPO loss; no per-sequence length normalisation,
    # which would make long wrong turns cheap. sample_mean: each planner turn weighs the
    # same. run_mean: each run weighs the same however many turns/tokens it has.
    loss_aggregation: LossAggregation = "token_mean"
    zero_variance_groups: ZeroVariancePolicy = "skip"  # all-equal rewards: no signal
    max_turns: PositiveInt = 3  # planner turns per training run (published: 3)
    run_timeout_s: PositiveFloat = 300.0  # the graph's time limit per run (routes to the generator)
    # planner sampling temperature (training)
    temperature: float = Field(0.7, gt=0, description="a group of greedy runs has no variance")
    max_new_tokens: PositiveInt = 256  # planner completion limit
    module_max_new_tokens: PositiveInt = 256  # executor / verifier / generator limit
    share_modules_model: bool = False  # True: all four modules use the trained model
    # The frozen modules' models: None runs the frozen copy of `model`; `provider:model`
    # (e.g. openai:NAME with a base URL) a served one (docs/design.md §1, "Models by name").
    # `base_url` goes with every served module, `<module>_base_url` overrides it for one.
    executor_model: str | None = None
    verifier_model: str | None = None
    generator_model: str | None = None
    base_url: str | None = None
    executor_base_url: str | None = None
    verifier_base_url: str | None = None
    generator_base_url: str | None = None
    max_concurrency: PositiveInt | None = None  # graph runs in flight; None: all runs of the step

    # -- rollouts through vLLM (docs/design.md §3, "Rollouts through vLLM") -------------
    # engine: the local engine decodes with the trained module itself (no sync, CPU or GPU).
    # vllm_colocate: an in-process vllm.LLM per process, sharing its GPU with training.
    # vllm_server: an external `trl vllm-serve` (vllm serve with its weight channel).
    rollout_backend: RolloutBackend = "engine"
    vllm_server_url: str = "http://127.0.0.1:8000"  # vllm_server: the server (no /v1)
    vllm_server_timeout_s: NonNegativeFloat = 240.0  # vllm_server: wait this long for it to come up
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # colocate: vLLM's share of the GPU
    vllm_max_model_len: PositiveInt | None = None  # colocate: context length (None: the model's)
    vllm_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"  # colocate: vLLM's weights
    # vLLM's log-probs are not the trainer's: recompute the old log-probs with the training
    # model (recompute), and also weight each token's loss by the truncated importance ratio
    # min(pi_trainer / pi_sampler, tis_cap) (tis, as TRL's token_truncate). Engine: unused.
    sampler_correction: Literal["tis", "recompute"] = "tis"
    tis_cap: float = Field(3.0, ge=1.0)

    # -- schedule -----------------------------------------------------------------------
    max_steps: PositiveInt | None = None  # None: `epochs` passes over the dataset
    # wall-clock budget of one `train()` call: no step starts after it (the step under way
    # finishes, is logged and saved); None: no limit
    max_train_minutes: PositiveFloat | None = None
    epochs: PositiveInt = 1
    mini_batches: PositiveInt = 1  # optimizer steps per rollout batch (>1: later ones are off-policy)
    micro_batch_size: PositiveInt = 4  # samples per forward/backward; gradients accumulate
    bf16_autocast: bool = True  # update forward in bf16 autocast where bf16 is fast; master weights stay fp32
    # dtype of the frozen copy that serves the executor/verifier/generator and, with full
    # fine-tuning, is the KL reference (bf16 halves its memory; it is only fast with bf16 matrix units)
    frozen_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 only where it is fast
    # none: every process holds the whole planner (one process, or DDP under `accelerate launch`);
    # fsdp: PyTorch FSDP2 (`fully_shard`) splits the planner's parameters, gradients and optimizer
    # state over the processes, on CPUs too. An accelerate launch config with the FSDP2 plugin
    # (GPUs) shards whatever this says; docs/design.md §3 "Distributed update".
    sharding: Literal["none", "fsdp"] = "none"

    # -- LoRA ---------------------------------------------------------------------------
    lora: bool = False
    lora_rank: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_dropout: UnitFloat = 0.0
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )

    # -- bookkeeping ----------------------------------------------------------------------
    seed: int = 0
    output_dir: str = "runs"
    run_name: str | None = None  # None: flow_grpo-<time> (sft-<time>), -2, -3 .. when taken
    resume_from: str | None = None  # a checkpoint dir or a run dir (its latest checkpoint)
    save_every: PositiveInt = 50
    keep_checkpoints: PositiveInt = 2
    eval_every: NonNegativeInt = 0  # 0: never
    log_every: PositiveInt = 1
    # experiment trackers the step metrics also go to (accelerate's: tensorboard, wandb,
    # mlflow, trackio, ...); metrics.jsonl in the run directory is always written
    report_to: list[str] = Field(default_factory=list)
    tensorboard: bool = False  # true: the same as listing tensorboard in report_to

    # -- offline SFT ablation (sft_from_config) ------------------------------------------
    sft_queries: PositiveInt = 16  # queries rolled out (group_size runs each) to collect successes
    sft_epochs: PositiveInt = 1

    def __init__(self, **fields: Any) -> None:
        # pydantic's ValidationError becomes ConfigError, which the CLI maps to exit code 2.
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from exc

    @field_validator("model")
    @classmethod
    def _planner_runs_here(cls, model: str) -> str:
        from agentflow.factory import served_provider

        if served_provider(model) is not None:
            raise ValueError("the planner is trained, so it must be a local model (the embedded default, a Hub id "
                             "or a folder): a served model's weights cannot be updated; serve the executor, "
                             "verifier or generator instead (executor_model, ...)")
        return model

    @field_validator("executor_model", "verifier_model", "generator_model")
    @classmethod
    def _modules_served_or_frozen(cls, model: str | None) -> str | None:
        from agentflow.factory import served_provider

        if model is not None and served_provider(model) is None:
            raise ValueError("a frozen module runs the frozen copy of `model` (leave it unset) or a served model "
                             "(provider:model); to use another local model, serve it (e.g. transformers serve, "
                             "vLLM) and name it openai:NAME with a base URL")
        return model

    @model_validator(mode="after")
    def _judge_goes_with_its_reward(self) -> FlowGRPOConfig:
        if self.reward == "judge" and not self.judge_model:
            raise ValueError("reward: judge needs judge_model (a model name, e.g. openai:NAME with judge_base_url)")
        if self.reward != "judge" and (self.judge_model or self.judge_base_url):
            raise ValueError(f"judge_model and judge_base_url are for reward: judge; reward is {self.reward!r}, "
                             "so they would be unused")
        return self

    @field_validator("report_to")
    @classmethod
    def _trackers_available(cls, names: list[str]) -> list[str]:
        for name in names:
            _check_tracker(name)
        return names

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_available(cls, on: bool) -> bool:
        if on:
            _check_tracker("tensorboard")
        return on

    @property
    def trackers(self) -> list[str]:
        """The accelerate trackers to report to: `report_to`, plus tensorboard when `tensorboard` is on."""
        return list(dict.fromkeys([*self.report_to, *(["tensorboard"] if self.tensorboard else [])]))

    @classmethod
    def from_dict(cls, data: Any) -> FlowGRPOConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of fields, got {type(data).__name__}")
        return cls(**{str(key): value for key, value in data.items()})  # YAML keys may be ints

    @classmethod
    def from_yaml(cls, path: str | Path) -> FlowGRPOConfig:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path_or_config: str | Path | dict[str, Any] | FlowGRPOConfig) -> FlowGRPOConfig:
        """A config from a YAML path, a dict, or an existing config (returned as is)."""
        if isinstance(path_or_config, FlowGRPOConfig):
            return path_or_config
        if isinstance(path_or_config, dict):
            return cls.from_dict(path_or_config)
        return cls.from_yaml(path_or_config)

    def lora_config(self) -> LoraConfig:
        """peft's adapter config from the lora_* fields: Flow-GRPO and the SFT ablation
        must build the same adapter for their results to compare."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.lora_targets), task_type="CAUSAL_LM")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe values; `from_dict(config.to_dict()) == config`."""
        return self.model_dump()


def _check_tracker(name: str) -> None:
    """Fail on a tracker accelerate does not know or whose package is missing: accelerate
    itself drops such a tracker with a debug-level log, so a run asked to report to W&B
    would otherwise report nowhere without a word."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if name not in LOGGER_TYPE_TO_CLASS:
        raise ValueError(f"unknown tracker {name!r}; accelerate has {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    if name not in {str(t) for t in get_available_trackers()}:
        raise ValueError(f"tracker {name!r} needs the {name!r} package, which is not installed (pip install {name})")


def _explain(exc: ValidationError) -> str:
    """One clause per bad field, each naming it (and the item, for a list), with the bad value."""
    known = list(FlowGRPOConfig.model_fields)
    lines = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # a rule over several fields (a model validator) names them itself
            lines.append(f"config: {error['msg'].removeprefix('Value error, ')}")
            continue
        name, *inner = error["loc"]
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(name), known, n=1)
            lines.append(f"unknown config field {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        where = "".join(f" item {i}" if isinstance(i, int) else f" {i}" for i in inner)
        message = error["msg"].removeprefix("Value error, ")
        why = FlowGRPOConfig.model_fields[name].description  # the reason for a range, not for a type
        why = f" ({why})" if why and not error["type"].endswith("_type") else ""
        lines.append(f"config field {name!r}{where}: {message}, got {error['input']!r}{why}")
    return "; ".join(lines)
