"""`agentflow export CHECKPOINT OUT`: a trained planner as a standalone Hugging Face folder.

A training checkpoint holds what resuming needs (docs/design.md §3, "Checkpoints"): the
full weights, or only a LoRA adapter whose base is named in the run's config, beside
optimizer and RNG state. What serves a model needs is different: one folder with the
merged weights, `config.json` with `architectures` (servers pick the model class from
it), `generation_config.json`, and the tokenizer with its chat template. That folder is
what `agentflow run --model OUT`, `agentflow eval --planner-model OUT`, `transformers
serve OUT` and `vllm serve OUT` load (docs/design.md §1, "Building models and tools
from names").

Reading a checkpoint is one function, `read_checkpoint`, so that a new checkpoint format
(e.g. one sharded with `torch.distributed.checkpoint`) is one more branch there and the
writing side stays as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from agentflow.factory import load_weights
from agentflow.trainer.checkpoint import latest_checkpoint, load_planner

_ADAPTER_CONFIG = "adapter_config.json"
INFO_FILE = "agentflow_export.json"  # where the folder came from (checkpoint, step, base, LoRA)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """The planner of a checkpoint (or of a run directory's latest one) as a plain causal LM,
    LoRA merged, with its tokenizer and a description of where it came from.

    The base model is rebuilt from the run's config (`model`, and `seed` for the seeded
    "tiny" test model) through the same loader the trainer used, then the checkpoint's
    weights are loaded into it with `checkpoint.load_planner`, so this reads exactly what
    the trainer wrote. A LoRA adapter is applied with its own saved peft config and merged
    (W + B A scaled), leaving a model without peft layers.
    """
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no complete training checkpoint at {path} (a step-NNNNNN folder or a run directory)")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    config = state.get("config") or {}
    planner = ckpt / "planner"
    base, tokenizer = load_weights(config.get("model", "smollm2-135m-instruct"), "float32", "cpu", int(config.get("seed", 0)))
    lora = (planner / _ADAPTER_CONFIG).is_file()
    if lora:
        from peft import PeftConfig, get_peft_model

        peft_model = get_peft_model(base, PeftConfig.from_pretrained(str(planner)))
        load_planner(peft_model, planner)
        model = peft_model.merge_and_unload()
    else:
        load_planner(base, planner)
        model = base
    if (planner / "tokenizer_config.json").is_file():  # full checkpoints carry the tokenizer they trained with
        tokenizer = AutoTokenizer.from_pretrained(str(planner))
    info = {"checkpoint": str(ckpt.resolve()), "step": state.get("step"), "base_model": config.get("model"),
            "lora_merged": lora}
    return model.eval(), tokenizer, info


def write_hf_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike[str],
    *, dtype: torch.dtype = torch.float32, info: dict[str, Any] | None = None,
) -> Path:
    """Write `model` and `tokenizer` as one complete Hugging Face folder at `out`.

    Written into a temporary sibling and renamed, so an interrupted export never leaves a
    folder that looks complete. `out` must not exist or be empty: overwriting someone's
    model folder is not something an export should do silently.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another OUT")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; the graph's modules talk to the planner in chat turns")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = model.to(dtype)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = str(dtype).removeprefix("torch.")
    model.config.use_cache = True  # training may have turned it off; servers and generate want it
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if not (tmp / "generation_config.json").is_file():
            GenerationConfig.from_model_config(model.config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info or {}, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_planner(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], dtype: str = "float32") -> Path:
    """`agentflow export`: `read_checkpoint`, then `write_hf_folder` in `dtype` (float32 keeps
    the trained master weights exactly; bfloat16 halves the folder, as 7B models ship)."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype is float32, bfloat16 or float16, got {dtype!r}")
    model, tokenizer, info = read_checkpoint(checkpoint)
    return write_hf_folder(model, tokenizer, out, dtype=getattr(torch, dtype), info={**info, "dtype": dtype})


__all__ = ["export_planner", "read_checkpoint", "write_hf_folder"]
