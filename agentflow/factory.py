"""Names to models and tools: the one place that turns `--model`, `--planner-model`,
`--tools` and the trainer's config fields into chat models, tools and an AgentFlow graph
(the CLI, the eval harness, the trainer and the LangGraph server all come here).

Models: a `ModelSpec` per role says what to load and how it generates; roles whose specs
are equal share one loaded model and its engine, so their requests are decoded in one
batch. A model is named one way everywhere (docs/design.md §1, "Models by name"): the
embedded default, a Hub id or a local folder runs here; `provider:model` is a served or
API model made by LangChain's `init_chat_model` (`openai:NAME` plus a base URL reaches
any OpenAI-compatible server: vLLM, Ollama's /v1, `transformers serve`). Whatever stops a
model from being made raises `ModelUnavailable` with a one-line reason.

Tools: `ToolSpec.parse` checks the names (and what they need) when it is made, so a typo
fails in a moment instead of after a model has loaded.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

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
# `provider:model`: a provider name as init_chat_model spells them (openai, google_genai, ...).
_PROVIDER_SPEC = re.compile(r"(?P<provider>[A-Za-z][A-Za-z0-9_]*):(?P<name>.+)")
# What to start when nothing answers at a base URL.
_START_A_SERVER = ("start one first, e.g. `transformers serve $(agentflow model-path) --port 8000` "
                   "or `vllm serve MODEL`, or fix the base URL")


class ModelUnavailable(ValueError):
    """A model cannot be made: a missing folder, a Hub id not fetchable, an unknown provider,
    a missing integration package or API key, a server that does not answer. The message
    is one line saying which, for the command line to print (exit code 2)."""


def served_provider(model: str) -> str | None:
    """The provider of a `provider:model` name, or None for a model that runs here.

    An existing path is always local, even with a colon in it.
    """
    match = _PROVIDER_SPEC.fullmatch(model)
    if match is None or Path(model).exists():
        return None
    return match["provider"]


@dataclass(frozen=True)
class ModelSpec:
    """One role's chat model: what to load and how it generates.

    `model` is the embedded default's name, a Hub id, a local path, "tiny", or
    `provider:model` for a served model (`base_url`, `timeout_s` and `max_retries` are
    for those only). The fields are the model's construction arguments. Frozen, hence
    hashable: `load_models` makes each distinct spec once.
    """

    model: str = DEFAULT_MODEL
    dtype: str = "float32"  # of the weights: float32 or bfloat16
    seed: int = 0  # the engine's sampling seed stream (and the "tiny" model's weights)
    max_new_tokens: int = 256
    temperature: float = 0.0
    base_url: str | None = None  # served: the endpoint (None: the provider's own)
    timeout_s: float = 120.0  # served: per request; the client retries a timeout like a 429 or 5xx
    max_retries: int = 2  # served: the client's retries (with backoff) before a call fails

    @property
    def served(self) -> bool:
        return served_provider(self.model) is not None

    @property
    def label(self) -> str:
        """What eval rows and summaries record for this model: its name, and where it is served."""
        return f"{self.model} @ {self.base_url}" if self.base_url else self.model

    def with_base_url(self, base_url: str | None) -> ModelSpec:
        """This spec served from `base_url`; a local model has no URL and stays as it is."""
        return replace(self, base_url=base_url) if self.served and base_url else self


def role_specs(
    default: ModelSpec,
    *,
    planner: str | None = None,
    executor: str | None = None,
    verifier: str | None = None,
    generator: str | None = None,
    base_url: str | None = None,
    base_urls: Mapping[str, str | None] | None = None,
) -> dict[str, ModelSpec]:
    """The spec of DEFAULT_ROLE and of each role: `default`, with the role's model name where
    one is given.

    `base_url` goes with every served spec (`provider:model`), `base_urls[role]` overrides
    it for one role; local models ignore `base_url`, and a role's own URL for a local model
    is a ValueError (it would be silently unused).
    """
    names = {"planner": planner, "executor": executor, "verifier": verifier, "generator": generator}
    urls = dict(base_urls or {})
    specs = {DEFAULT_ROLE: default.with_base_url(urls.get(DEFAULT_ROLE) or base_url)}
    for role, name in names.items():
        spec = replace(default, model=name) if name else default
        if urls.get(role) and not spec.served:
            raise ValueError(f"a base URL for the {role} goes with a served model (provider:model), "
                             f"but the {role} model {spec.model!r} runs locally")
        specs[role] = spec.with_base_url(urls.get(role) or base_url)
    return specs


def specs_from_env(environ: Mapping[str, str], default: ModelSpec | None = None) -> dict[str, ModelSpec]:
    """Role specs from environment variables, for processes configured only that way (the
    LangGraph server): AGENTFLOW_MODEL and AGENTFLOW_BASE_URL for every module,
    AGENTFLOW_<ROLE>_MODEL and AGENTFLOW_<ROLE>_BASE_URL for one (ROLE: PLANNER, EXECUTOR,
    VERIFIER, GENERATOR). Unset or empty variables keep `default`'s."""

    def get(name: str) -> str | None:
        return environ.get(f"AGENTFLOW_{name}") or None

    default = default or ModelSpec()
    if get("MODEL"):
        default = replace(default, model=get("MODEL"))
    return role_specs(
        default, **{role: get(f"{role.upper()}_MODEL") for role in ROLES}, base_url=get("BASE_URL"),
        base_urls={role: get(f"{role.upper()}_BASE_URL") for role in ROLES},
    )


def load_weights(
    name: str, dtype: str = "float32", device: str | torch.device = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer by name. "tiny" is seeded, so a run and its resumed
    continuation start from the same random weights."""
    if name == TINY_MODEL:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path())
        return tiny_model(seed=seed).to(device=device, dtype=getattr(torch, dtype)), tokenizer
    if name != DEFAULT_MODEL and not Path(name).expanduser().exists():
        # An absolute or relative path, or more than one slash, cannot be a Hub id.
        if name.startswith(("/", ".", "~")) or name.count("/") > 1:
            raise ModelUnavailable(f"no model folder at {name}")
        try:
            return load_model(name, dtype=dtype, device=device)
        except OSError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailable(
                f"{name} is not a local folder and the Hugging Face Hub could not provide it "
                f"(offline? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {reason}"
            ) from exc
    return load_model(name, dtype=dtype, device=device)


def _chat_model(weights: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec) -> LocalChatModel:
    engine = GenerationEngine(weights, tokenizer, seed=spec.seed)
    return LocalChatModel(
        engine=engine, model_name=spec.model, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens
    )


def load_chat_model(spec: ModelSpec) -> BaseChatModel:
    """One chat model: a local one on the CPU (where the local engine runs; the trainer
    places its own), or a served one (`served_chat_model`)."""
    if spec.served:
        return served_chat_model(spec)
    weights, tokenizer = load_weights(spec.model, spec.dtype, "cpu", spec.seed)
    return _chat_model(weights, tokenizer, spec)


def served_chat_model(spec: ModelSpec) -> BaseChatModel:
    """A `provider:model` spec as LangChain's `init_chat_model` makes it.

    Faults during calls are the client library's to retry (429, 5xx, timeouts and dropped
    connections, `max_retries` times with backoff); a call that still fails raises into
    the run, which the eval records as that item's failure. Faults at construction become
    `ModelUnavailable` here: the integration package, the API key, the provider's name,
    and, with a `base_url`, a server that does not answer.
    """
    from langchain.chat_models import init_chat_model

    provider = served_provider(spec.model)
    name = spec.model.split(":", 1)[1]
    settings: dict[str, object] = {
        "temperature": spec.temperature, "max_tokens": spec.max_new_tokens,
        "timeout": spec.timeout_s, "max_retries": spec.max_retries,
    }
    if spec.base_url:
        settings["base_url"] = spec.base_url
        _check_server(spec.base_url, provider)
        if provider == "openai" and not os.environ.get("OPENAI_API_KEY"):
            # Self-hosted OpenAI-compatible servers (vLLM, Ollama, transformers serve) take
            # any key unless started with one, but the client refuses to start without.
            settings["api_key"] = "unused"
    try:
        return init_chat_model(name, model_provider=provider, **settings)
    except Exception as exc:  # each provider's package raises its own types; all mean "cannot make it"
        raise ModelUnavailable(f"{spec.model}: {' '.join(str(exc).split())}") from exc


def _check_server(base_url: str, provider: str | None) -> None:
    """Fail now, naming the URL, when nothing answers there, or when the server refuses the
    key (either would otherwise fail every call of the run the same way). Any other answer
    to GET /models, even 404 from a server without that route, means it is up."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "unused",
                           max_retries=0, timeout=10.0)
    try:
        client.models.list()
    except openai.APIConnectionError as exc:  # refused, unreachable, or timed out
        raise ModelUnavailable(f"no server answers at {base_url} ({exc}); {_START_A_SERVER}") from exc
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        variable = "OPENAI_API_KEY" if provider == "openai" else "the provider's API key variable"
        raise ModelUnavailable(f"the server at {base_url} refused the API key "
                               f"(HTTP {exc.status_code}); set {variable}") from exc
    except openai.APIStatusError:
        pass


def served_call_failure(exc: BaseException) -> str | None:
    """One line for a served model's call that failed after the client's retries (the
    server went away, kept answering 5xx or 429, or timed out), or None when `exc` is not
    that. `agentflow run` prints it and exits 2 instead of a traceback; an eval records it
    as the item's error. Recognised: the OpenAI client's errors (every OpenAI-compatible
    server) and httpx's, which that client and most provider clients are built on."""
    import httpx
    import openai

    if isinstance(exc, openai.APIStatusError):
        where = f" from {exc.request.url}" if getattr(exc, "request", None) is not None else ""
        return f"a served model answered HTTP {exc.status_code}{where} after the client's retries: {_one_line(exc)}"
    if isinstance(exc, openai.APIError):  # connection refused or reset, timeout
        where = f" at {exc.request.url}" if getattr(exc, "request", None) is not None else ""
        return (f"a served model's call failed after the client's retries ({_one_line(exc)}){where}; "
                "is the server still running?")
    if isinstance(exc, httpx.HTTPError):
        return f"a served model's call failed: {type(exc).__name__}: {_one_line(exc)}"
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
    if planner.served:
        raise ModelUnavailable(f"the planner is trained, so it runs here: {planner.model!r} is a served model, "
                               "whose weights cannot be updated; serve the executor, verifier or generator instead")
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
