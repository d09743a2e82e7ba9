"""Names to models and tools: the one place that turns `--model`, `--planner-model`,
`--tools` and the trainer's config fields into chat models, tools and an AgentFlow graph
(the CLI, the eval harness, the trainer and the LangGraph server all come here).

Models: a `ModelSpec` per role says what to load and how it generates; roles whose specs
are equal share one loaded model and its engine, so their requests are decoded in one
batch. Tools: `ToolSpec.parse` checks the names (and what they need) when it is made,
so a typo fails in a moment instead of after a model has loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from agentflow.graph.builder import NODES, build_agentflow
from agentflow.models import DEFAULT_MODEL, GenerationEngine, LocalChatModel, load_model, resolve_model_path, tiny_model
from agentflow.tools import TOOL_NAMES, Corpus, default_tools, get_tools

ROLES = NODES  # one model per graph node
# The model of what is not one of the four modules: tools that need a model
# (base_generator) and single-model systems (the ReAct baseline).
DEFAULT_ROLE = "default"
TINY_MODEL = "tiny"  # `tiny_model()` (random, 2 layers) with the default model's tokenizer: for tests


@dataclass(frozen=True)
class ModelSpec:
    """One role's chat model: what to load and how it generates.

    `model` names a local Hugging Face causal LM: the embedded default's name, a Hub id, a
    local path, or "tiny". The fields are the model's construction arguments, so another
    kind of model adds its own here. Frozen, hence hashable: `load_models` loads each
    distinct spec once.
    """

    model: str = DEFAULT_MODEL
    dtype: str = "float32"  # of the weights: float32 or bfloat16
    seed: int = 0  # the engine's sampling seed stream (and the "tiny" model's weights)
    max_new_tokens: int = 256
    temperature: float = 0.0


def role_specs(
    default: ModelSpec,
    *,
    planner: str | None = None,
    executor: str | None = None,
    verifier: str | None = None,
    generator: str | None = None,
) -> dict[str, ModelSpec]:
    """The spec of DEFAULT_ROLE and of each role: `default`, with the role's model name where one is given."""
    names = {"planner": planner, "executor": executor, "verifier": verifier, "generator": generator}
    specs = {role: replace(default, model=name) if name else default for role, name in names.items()}
    return {DEFAULT_ROLE: default, **specs}


def load_weights(
    name: str, dtype: str = "float32", device: str | torch.device = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer by name. "tiny" is seeded, so a run and its resumed
    continuation start from the same random weights."""
    if name == TINY_MODEL:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path())
        return tiny_model(seed=seed).to(device=device, dtype=getattr(torch, dtype)), tokenizer
    return load_model(name, dtype=dtype, device=device)


def _chat_model(weights: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec) -> LocalChatModel:
    engine = GenerationEngine(weights, tokenizer, seed=spec.seed)
    return LocalChatModel(
        engine=engine, model_name=spec.model, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens
    )


def load_chat_model(spec: ModelSpec) -> BaseChatModel:
    """One chat model, on the CPU (where the local engine runs; the trainer places its own)."""
    weights, tokenizer = load_weights(spec.model, spec.dtype, "cpu", spec.seed)
    return _chat_model(weights, tokenizer, spec)


def load_models(specs: Mapping[str, ModelSpec]) -> dict[str, BaseChatModel]:
    """role -> chat model; roles with equal specs get the same instance (one copy of the
    weights, one engine batching all their requests)."""
    loaded: dict[ModelSpec, BaseChatModel] = {}
    for spec in specs.values():
        if spec not in loaded:
            loaded[spec] = load_chat_model(spec)
    return {role: loaded[spec] for role, spec in specs.items()}


def trainable_models(
    planner: ModelSpec, device: str | torch.device, modules: ModelSpec | None = None
) -> tuple[LocalChatModel, LocalChatModel | None]:
    """The trainer's models: (planner, frozen modules' model or None).

    The planner's weights (`planner.dtype`; the trainer asks for fp32 master weights) sit
    on `device` and its engine decodes with those very tensors, so rollouts sample from
    the current policy with no weight sync. With `modules`, the executor, verifier and
    generator get one frozen copy of the same initial weights in `modules.dtype` (the
    trainer also uses it as the KL reference); with None they share the planner's model.
    """
    if modules is not None and modules.model != planner.model:
        raise ValueError(f"the frozen modules copy the planner's weights: {modules.model!r} != {planner.model!r}")
    weights, tokenizer = load_weights(planner.model, planner.dtype, device, planner.seed)
    policy = _chat_model(weights, tokenizer, planner)
    if modules is None:
        return policy, None
    frozen = copy.deepcopy(weights).to(getattr(torch, modules.dtype)).requires_grad_(False).eval()
    return policy, _chat_model(frozen, tokenizer, modules)


@dataclass(frozen=True)
class ToolSpec:
    """Which tools a system gets: names in order (None: the offline default set) and the
    corpus local_search reads. Make it with `parse`, which checks it."""

    names: tuple[str, ...] | None = None
    corpus: Corpus | None = None

    @classmethod
    def parse(cls, tools: str | Sequence[str] | None, corpus: Corpus | None = None) -> ToolSpec:
        """`tools` as comma-separated text ("python,calculator") or a list of names.

        Raises ValueError for an unknown name or local_search without a corpus: everything
        that can be checked before the model that base_generator needs is loaded.
        """
        if isinstance(tools, str):
            tools = tools.split(",")
        names = tuple(dict.fromkeys(name.strip().lower() for name in tools or () if name.strip()))
        unknown = [name for name in names if name not in TOOL_NAMES]
        if unknown:
            raise ValueError(f"unknown tool(s) {', '.join(unknown)}; valid tools: {', '.join(TOOL_NAMES)}")
        if "local_search" in names and corpus is None:
            raise ValueError("local_search needs a corpus (a JSONL path or a list of texts)")
        return cls(names or None, corpus)

    def build(self, llm: BaseChatModel | None) -> list[BaseTool]:
        """The tools, with `llm` serving those that need a model (base_generator).

        Online tools that cannot be built here raise `agentflow.tools.ToolUnavailable`.
        """
        if self.names is None:
            return default_tools(llm=llm, corpus=self.corpus)
        return get_tools(list(self.names), llm=llm, corpus=self.corpus)


def agentflow_graph(
    models: Mapping[str, BaseChatModel], tools: Sequence[BaseTool], **options
) -> CompiledStateGraph:
    """AgentFlow over per-role models (as `load_models` returns them; a role left out uses
    DEFAULT_ROLE's). `options` go to `build_agentflow` (max_turns, max_seconds, ...)."""
    default = models[DEFAULT_ROLE]
    return build_agentflow(default, tools, **{f"{role}_llm": models.get(role, default) for role in ROLES}, **options)
