#!/usr/bin/env bash
# Two Flow-GRPO steps of a small model with rollouts through an in-process vLLM
# (rollout_backend: vllm_colocate) on one GPU; prints each step's time and the
# sampler-vs-trainer log-prob gap, and fails when they miss the expectations below.
#
# Needs: one CUDA GPU, this package installed, and vLLM (`pip install vllm`, a version
# TRL 1.16 supports). The CPU test suite exercises the same code against a stand-in for
# vLLM (tests/test_vllm_backend.py); this script is where the real vLLM runs.
#
# Expected (estimates written before any run; docs/design.md §3, "Rollouts through vLLM"):
#   - weight pushes = 1 (at start) + 1 per optimizer step  -> 3 after two steps
#   - logprob_gap_mean: 1e-3 .. 3e-2 nats/token (vLLM bf16 kernels vs the trainer's bf16
#     autocast forward; fails above 0.1), logprob_gap_max below ~1
#   - is_weight_mean within 0.02 of 1, is_truncated_fraction below 0.01
#   - step time (rollout + update) 5 .. 60 s for SmolLM2-135M at 4 queries x 4 runs;
#     vLLM's own start-up (30-90 s) comes before step 1 and is not in it
#
# Usage: scripts/gpu_check.sh [MODEL]   (default: the embedded SmolLM2-135M-Instruct)
set -euo pipefail

MODEL="${1:-smollm2-135m-instruct}"
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d -t agentflow-gpu-check.XXXXXX)"

"$PYTHON" - <<'PY'
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible")
if importlib.util.find_spec("vllm") is None:
    sys.exit("gpu_check: vLLM is not installed (pip install vllm)")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY

cat > "$WORK/gpu_check.yaml" <<YAML
model: $MODEL
dataset: toolmix
dataset_split: train
reward: toolmix
group_size: 4
queries_per_step: 4
max_steps: 2
max_turns: 2
max_new_tokens: 64
module_max_new_tokens: 64
learning_rate: 1.0e-6
beta: 0.001
zero_variance_groups: keep    # every step updates, so every step pushes weights
micro_batch_size: 4
rollout_backend: vllm_colocate
vllm_gpu_memory_utilization: 0.3
vllm_max_model_len: 4096
sampler_correction: tis
output_dir: $WORK
run_name: gpu-check
save_every: 2
YAML

agentflow train -c "$WORK/gpu_check.yaml" --no-plot

"$PYTHON" - "$WORK/gpu-check" <<'PY'
import json, sys
from pathlib import Path

rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines() if line.strip()]
problems = []
for m in rows:
    step_s = m["rollout_time_s"] + m["update_time_s"]
    print(f"step {m['step']}: {step_s:.1f} s (rollout {m['rollout_time_s']:.1f} s, update {m['update_time_s']:.1f} s, "
          f"weight push {m['weight_push_s']:.2f} s) | log-prob gap mean {m['logprob_gap_mean']:.2e} "
          f"max {m['logprob_gap_max']:.2e} | IS weight mean {m['is_weight_mean']:.4f}, "
          f"truncated {m['is_truncated_fraction']:.4f} | pushes so far {m['weight_pushes']}")
    if not m["logprob_gap_mean"] < 0.1:
        problems.append(f"step {m['step']}: log-prob gap {m['logprob_gap_mean']:.3g} >= 0.1 (wrong weights or log-prob mode?)")
    if abs(m["is_weight_mean"] - 1) > 0.02 or m["is_truncated_fraction"] > 0.01:
        problems.append(f"step {m['step']}: importance weights far from 1")
optimizer_steps = sum(m["optimizer_steps"] for m in rows)
if rows[-1]["weight_pushes"] != 1 + optimizer_steps:
    problems.append(f"{rows[-1]['weight_pushes']} weight pushes for {optimizer_steps} optimizer steps (+1 at start)")
print(json.dumps({"steps": len(rows), "optimizer_steps": optimizer_steps, "problems": problems}))
sys.exit(1 if problems else 0)
PY
