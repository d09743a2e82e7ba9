"""Update throughput: the Flow-GRPO update against TRL `GRPOTrainer`'s loss computation.

    python benchmarks/update_throughput.py            # the embedded SmolLM2-135M
    python benchmarks/update_throughput.py --quick --tiny   # random 2-layer model (the test)

Both sides take one optimizer step over the same planner turns: the same token ids,
sampling log-probs and advantages, the same model weights (two copies, one per side, so
neither's optimizer moves the other's), micro-batch, dtype (fp32 master weights; the forward
in bf16 autocast on both sides where bf16 is fast, as the trainer does by default, else
fp32 on both; `--dtype` forces one), temperature,
clip bounds (0.2 / 0.3), beta (0, TRL's default; `--beta` sets both) and aggregation
(our `token_mean` is TRL's `dapo`: every completion token of the step weighs the same).

(a) ours: `FlowGRPOTrainer.update(samples)`, the trainer's own code path (zero_grad,
    forward/backward per micro-batch, clip, AdamW step), with `mini_batches: 1`.
(b) TRL: per micro-batch `GRPOTrainer._compute_loss(model, inputs)` + `backward()` (what
    its `training_step` runs), then the same clip and AdamW step. `inputs` hold
    `old_per_token_logps` (so its ratio is computed as ours is) and `num_items_in_batch`
    (the step's completion tokens, dapo's normaliser); with beta > 0 the reference
    log-probs are computed before the timer starts, as TRL computes them at generation
    time (ours computes them inside the update: `--beta` favours TRL).
    TRL's activation checkpointing (its config default) is turned off: ours has none.

The sides alternate (a, b, a, b, ...) after one warm-up each, so load from other jobs
falls on both. `update_vs_trl` is the median over repeats of TRL's step time / ours (the
two steps of a repeat run back to back, under about the same load);
`update_vs_trl_cpu_time` the same with the process's CPU time. The per-side tokens/s are
the medians of each side's steps. Throughput counts every token the forward
sees (prompt + completion) per second of the optimizer step. The last line is JSON with
`update_vs_trl` = ours / TRL. Prints figures; not a timed test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def make_samples(n: int, prompt_len: int, completion_len: int, vocab: int, seed: int) -> list:
    """Planner-turn-like samples: prompts of prompt_len/2..prompt_len tokens (the planner's
    prompt grows with the memory), completions of completion_len/2..completion_len, one
    advantage per pair of turns (a run), old log-probs filled in by `fill_old_logprobs`."""
    from agentflow.trainer.flow_grpo import Sample

    rng = random.Random(seed)
    samples = []
    for i in range(n):
        c = rng.randint(max(completion_len // 2, 1), completion_len)
        samples.append(Sample(
            prompt_ids=[rng.randrange(vocab) for _ in range(rng.randint(max(prompt_len // 2, 1), prompt_len))],
            completion_ids=[rng.randrange(vocab) for _ in range(c)],
            old_logprobs=[0.0] * c, temperature=0.7,
            advantage=(1.0 if (i // 2) % 2 == 0 else -1.0) * rng.uniform(0.5, 1.5), run_id=(0, i // 2),
        ))
    return samples


def fill_old_logprobs(model: torch.nn.Module, samples: list) -> None:
    """The sampling log-probs are the model's own (an on-policy step, ratio 1 at the start)."""
    from agentflow.trainer.flow_grpo import _pad, completion_logprobs

    with torch.no_grad():
        for s in samples:
            logp, _ = completion_logprobs(model, _pad([s], torch.device("cpu")))
            s.old_logprobs = logp[0, : len(s.completion_ids)].tolist()


def trl_inputs(samples: list, num_items: int, ref_model: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """TRL's batch layout for `_compute_loss`: left-padded prompts, right-padded completions
    (the layout ours uses too), per-token old log-probs, one advantage per row."""
    from agentflow.trainer.flow_grpo import _pad, completion_logprobs

    batch = _pad(samples, torch.device("cpu"))
    width_p = max(len(s.prompt_ids) for s in samples)
    inputs = {
        "prompt_ids": batch["input_ids"][:, :width_p],
        "prompt_mask": batch["attention_mask"][:, :width_p],
        "completion_ids": batch["completion_ids"],
        "completion_mask": batch["token_mask"].long(),
        "old_per_token_logps": batch["old_logprobs"],
        "advantages": batch["advantage"],
        "num_items_in_batch": torch.tensor(float(num_items)),
    }
    if ref_model is not None:
        with torch.no_grad():
            inputs["ref_per_token_logps"] = completion_logprobs(ref_model, batch)[0]
    return inputs


def build_ours(args, tmp: Path):
    from agentflow.trainer import build_trainer

    config = dict(
        model="tiny" if args.tiny else "smollm2-135m-instruct", dataset="toolmix", dataset_limit=4, group_size=2,
        queries_per_step=1, max_steps=1, micro_batch_size=args.micro_batch, mini_batches=1, beta=args.beta,
        clip_eps_low=0.2, clip_eps_high=0.3, loss_aggregation="token_mean", learning_rate=1e-6, max_grad_norm=1.0,
        temperature=0.7, output_dir=str(tmp / "runs"), run_name="bench", seed=args.seed,
        bf16_autocast=args.dtype == "bfloat16-autocast",
    )
    return build_trainer(config, reward_fn=lambda state, item: 0.0)


def build_trl(model: torch.nn.Module, tokenizer, args, n_micro: int, tmp: Path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=n_micro,
        num_generations=2, beta=args.beta, epsilon=0.2, epsilon_high=0.3, loss_type="dapo", temperature=0.7,
        max_completion_length=args.completion_len, use_cpu=True, bf16=args.dtype == "bfloat16-autocast", report_to="none",
        gradient_checkpointing=False, learning_rate=1e-6, max_grad_norm=1.0, seed=args.seed,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=config,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * (args.micro_batch * n_micro)}),
                          processing_class=tokenizer)
    # `current_gradient_accumulation_steps` is set by Trainer.train()'s loop; dapo's normaliser
    # is num_items_in_batch * it / steps_per_generation (= num_items_in_batch here).
    trainer.current_gradient_accumulation_steps = n_micro
    return trainer


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke mode: small batch, one repeat")
    p.add_argument("--tiny", action="store_true", help="a random 2-layer model instead of SmolLM2-135M")
    p.add_argument("--samples", type=int, default=None, help="planner turns in the step (default 8, quick 4)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=None, help="longest prompt (default 256, quick 32)")
    p.add_argument("--completion-len", type=int, default=None, help="longest completion (default 64, quick 8)")
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per side (default 3, quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16-autocast"],
                   help="the update forward's dtype on both sides; auto: bf16 autocast where bf16 is fast (the trainer's default)")
    args = p.parse_args(argv)
    if args.dtype == "auto":
        from agentflow.models import bf16_is_fast

        args.dtype = "bfloat16-autocast" if bf16_is_fast("cpu") else "float32"
    args.samples = args.samples or (4 if args.quick else 8)
    args.prompt_len = args.prompt_len or (32 if args.quick else 256)
    args.completion_len = args.completion_len or (8 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    print(f"load: {os.getloadavg()}  cpus: {os.cpu_count()}  torch threads: {torch.get_num_threads()}")

    tmp = Path(tempfile.mkdtemp(prefix="update_throughput-"))
    ours = build_ours(args, tmp)
    model = ours.model
    n_params = sum(p.numel() for p in model.parameters())
    samples = make_samples(args.samples, args.prompt_len, args.completion_len, model.config.vocab_size, args.seed)
    fill_old_logprobs(model, samples)
    trl_model = copy.deepcopy(model)  # same weights; its own optimizer moves only it
    n_micro = -(-len(samples) // args.micro_batch)
    trl = build_trl(trl_model, ours.policy.tokenizer, args, n_micro, tmp)
    trl_optimizer = torch.optim.AdamW([p for p in trl_model.parameters() if p.requires_grad], lr=1e-6,
                                      weight_decay=ours.config.weight_decay)
    completion_tokens = sum(len(s.completion_ids) for s in samples)
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    micro_batches = [samples[i : i + args.micro_batch] for i in range(0, len(samples), args.micro_batch)]
    ref = ours.ref_model if args.beta > 0 else None
    trl_batches = [trl_inputs(m, completion_tokens, ref) for m in micro_batches]
    print(f"model: {'tiny' if args.tiny else 'SmolLM2-135M'} {n_params / 1e6:.1f}M params, "
          f"{str(next(model.parameters()).dtype).removeprefix('torch.')} weights, forward {args.dtype} on both sides "
          f"(ours autocast={ours.autocast}, TRL accelerate mixed_precision={trl.accelerator.mixed_precision}); "
          f"{len(samples)} samples in {n_micro} micro-batches of {args.micro_batch}; {tokens} tokens "
          f"({completion_tokens} completion); T=0.7, clip 0.2/0.3, beta={args.beta}, token_mean = TRL dapo")

    def step_ours() -> tuple[float, float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        stats = ours.update(copy.deepcopy(samples))
        return time.perf_counter() - start, time.process_time() - cpu, stats["loss"]

    def step_trl() -> tuple[float, float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        trl_model.train()
        trl_optimizer.zero_grad(set_to_none=False)
        loss_sum = 0.0
        for inputs in trl_batches:
            loss = trl._compute_loss(trl_model, inputs)
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(trl_model.parameters(), 1.0)
        trl_optimizer.step()
        trl_optimizer.zero_grad(set_to_none=False)
        trl_model.eval()
        return time.perf_counter() - start, time.process_time() - cpu, loss_sum

    (*_, loss_ours), (*_, loss_trl) = step_ours(), step_trl()  # warm-up; the first step's losses
    print(f"warm-up step losses: ours {loss_ours:.6f}, TRL {loss_trl:.6f} (same weights, same samples; TRL passes no "
          f"position_ids, so left-padded rows are positioned from the padding on: a small difference is expected)")
    # wall seconds (what tokens/s means) and process CPU seconds (all threads): on a machine
    # shared with other jobs the wall time swings with their load, CPU time much less
    times: dict[str, list[float]] = {"ours": [], "trl": []}
    cpu_times: dict[str, list[float]] = {"ours": [], "trl": []}
    for i in range(args.repeats):
        for side, step in (("ours", step_ours), ("trl", step_trl)):
            wall, cpu, _ = step()
            times[side].append(wall)
            cpu_times[side].append(cpu)
        print(f"repeat {i + 1}/{args.repeats}: ours {times['ours'][-1]:.3f}s, TRL {times['trl'][-1]:.3f}s "
              f"(CPU time: ours {cpu_times['ours'][-1]:.2f}s, TRL {cpu_times['trl'][-1]:.2f}s)")
    ours_s, trl_s = statistics.median(times["ours"]), statistics.median(times["trl"])
    # The ratio is the median of the per-repeat ratios: a repeat's two steps run back to back
    # under about the same load, while the load swings between repeats (measured here: one
    # side's step from 50 s to 141 s), which a ratio of separate medians would mix in.
    ratio = statistics.median(t / o for o, t in zip(times["ours"], times["trl"]))
    cpu_ratio = statistics.median(t / o for o, t in zip(cpu_times["ours"], cpu_times["trl"]))
    print(f"(a) ours  FlowGRPOTrainer.update:          {ours_s:.2f}s/step = {tokens / ours_s:.1f} tok/s "
          f"({completion_tokens / ours_s:.1f} completion tok/s)")
    print(f"(b) TRL   GRPOTrainer._compute_loss+backward: {trl_s:.2f}s/step = {tokens / trl_s:.1f} tok/s "
          f"({completion_tokens / trl_s:.1f} completion tok/s)")
    out = {"update_vs_trl": round(ratio, 3), "ours_tokens_per_s": round(tokens / ours_s, 1),
           "trl_tokens_per_s": round(tokens / trl_s, 1), "update_vs_trl_cpu_time": round(cpu_ratio, 3)}
    print(f"ratio (a)/(b) tokens/s = {out['update_vs_trl']:.2f}x (median of the repeats' wall-time ratios "
          f"{[round(t / o, 2) for o, t in zip(times['ours'], times['trl'])]}); "
          f"per CPU-second {out['update_vs_trl_cpu_time']:.2f}x (median of CPU-time ratios)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
