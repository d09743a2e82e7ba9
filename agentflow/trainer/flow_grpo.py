"""Flow-GRPO: train the planner of a live AgentFlow graph from outcome rewards.

One training step (`FlowGRPOTrainer.step`), in the order of the paper (docs/design.md §3):

1. Rollout. For each of Q queries run the compiled graph G times with the current
   planner weights (on-policy), all runs concurrently in one `graph.batch`. The planner
   node's generations are recorded from the run itself (`rollout.PlannerRecorder`):
   per planner turn t of run i, the prompt ids, the sampled completion ids and their
   sampling log-probs log pi_old(y_k | x, y_<k).
2. Reward. R_i = reward_fn(final_state_i, item) in {0, 1}; a run that raised gets 0.
3. Advantage, once per run, over the group:                                    (Eq. A)
       A_i = (R_i - mean_j R_j) / (std_j R_j + eps)
   then broadcast to every planner turn of run i (every token of those turns).
   Normalising per run (not over all turns, as the published trainer did) keeps a run
   with many turns from dominating the group statistics.
4. Update. Per completion token k of a planner turn, with rho_k = exp(logp_k - logp_old_k):
       L_clip_k = min(rho_k * A, clip(rho_k, 1 - eps_low, 1 + eps_high) * A)   (Eq. clipped surrogate)
       KL_k     = exp(ref_k - logp_k) - (ref_k - logp_k) - 1                      (Eq. k3 estimator)
       loss     = sum_k w_k * (-L_clip_k + beta * KL_k)                          (Eq. objective)
   where the weights w_k implement the loss aggregation (token/sample/run mean).
   log-probs are computed with the sampling temperature: log softmax(logits / T).

Weight sync design: the policy `LocalChatModel`'s engine decodes with `engine.model`,
and without sharding that module IS the one the optimizer updates (fp32 master weights;
with LoRA the engine holds the peft-wrapped model, so the adapter is live in generation
without merging). Rollout and update never overlap (each step rolls out, then updates),
so after `optimizer.step()` the next rollout already samples from the new weights: there
is no copy to push and nothing to get stale. The price is fp32 decoding of the policy (the
frozen modules may use a bf16 copy); the rollout/update dtypes are logged per step.
Under FSDP2 the optimizer updates shards, so the engine keeps a full copy and the shards
are all-gathered into it after every optimizer step (`weight_gather_s` per step).

Rollouts through vLLM (`rollout_backend: vllm_colocate | vllm_server`, docs/design.md §3):
the planner's requests go to vLLM instead (`self.sampler`), which holds its own copy of
the weights. `WeightPusher.push` hands it the updated tensors after every optimizer step
(LoRA in-process: the adapter), and since vLLM's log-probs are not the training forward's,
`_recompute_old_logprobs` replaces the old log-probs with the trainer's own, weights each
token by the truncated importance ratio min(pi_trainer / pi_vllm, C) (Eq. TIS) and logs
the sampler-vs-trainer gap every step.

Distributed (`accelerate launch`, docs/design.md §3 "Distributed update"): each process
rolls out its shard of the step's queries (whole groups, so advantages need no
communication); the update goes through DDP (`accelerator.prepare`) or FSDP2
(`distributed.py` says which plan runs when). Two things keep it exact:
- Global normalisation: the aggregation weights divide by the tokens / samples / runs of
  ALL processes (one all-gather of the counts), and each process's backward is scaled by
  the number of processes, because DDP and FSDP2 average gradients where the objective
  needs their sum. A process with fewer samples therefore weighs exactly its share.
- Equal collective counts: processes have different numbers of planner turns, hence of
  micro-batches, and DDP / FSDP2 run a collective in every (synchronising) backward; every
  process runs the largest count, padding with zero-weight micro-batches, so none waits
  forever and the padding adds exactly zero gradient.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from trl.trainer.utils import pad

from agentflow.evals.stats import tool_error_rate
from agentflow.models import GenerationEngine, LocalChatModel, bf16_is_fast, fast_dtype
from agentflow.models.vllm_backend import VLLMBackend
from agentflow.trainer.checkpoint import fresh_run_name, latest_checkpoint, load_checkpoint, save_checkpoint
from agentflow.trainer.config import ConfigError, FlowGRPOConfig
from agentflow.trainer.distributed import (
    UpdatePlan,
    choose_plan,
    copy_full_weights,
    gather_rows,
    local_numel,
    scalar,
    shard_with_fsdp2,
)
from agentflow.trainer.metrics import MetricsLogger
from agentflow.trainer.rollout import RewardFn, RolloutLog, RunResult, collect_rollouts, rollout_row
from agentflow.trainer.vllm_rollout import WeightPusher, make_vllm_backend

# ---------------------------------------------------------------------------------------
# The math, as plain functions (unit-tested against hand-computed values)
# ---------------------------------------------------------------------------------------


def group_advantages(rewards: Sequence[float], eps: float = 1e-6) -> list[float]:
    """Eq. A: A_i = (R_i - mean R) / (std R + eps) over the G runs of one group.

    std is the unbiased sample std (as TRL and verl compute it). One value per RUN; the
    caller broadcasts it to the run's planner turns.
    """
    r = torch.tensor(rewards, dtype=torch.float64)
    std = r.std() if len(r) > 1 else torch.tensor(0.0, dtype=torch.float64)
    return ((r - r.mean()) / (std + eps)).tolist()


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. clipped surrogate, per token: min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A).

    Returns the surrogate (to maximise) and a mask of tokens where clipping is active
    (the clipped branch is the smaller one, so the token's gradient is zero).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Eq. k3 estimator of KL(pi_theta || pi_ref) per token: exp(d) - d - 1, d = ref - logp (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def truncated_is_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Eq. TIS, per token: w_k = min(exp(logp_trainer_k - logp_sampler_k), cap).

    The tokens were drawn from vLLM's distribution, not the trainer's; weighting each
    token's loss by this ratio (no gradient through it) corrects the expectation, and the
    cap bounds the variance a rare token with a tiny sampler probability would bring (as
    TRL's `token_truncate`; Yao et al., "truncated importance sampling").
    """
    return torch.exp(trainer_logp - sampler_logp).clamp(max=cap)


@dataclass(frozen=True)
class BatchTotals:
    """Tokens, samples and runs of a (mini-)batch over ALL processes: the denominators of
    the aggregation weights, so that normalisation is global (docs/design.md §3)."""

    tokens: int
    samples: int
    runs: int


def sampler_gap_metrics(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """The logged sampler-vs-trainer gap over all processes, from each process's sums
    (`FlowGRPOTrainer._recompute_old_logprobs`): means over every completion token, not
    means of per-process means."""
    tokens = max(sum(p["gap_tokens"] for p in parts), 1.0)
    return {
        "logprob_gap_mean": sum(p["gap_sum"] for p in parts) / tokens,
        "logprob_gap_max": max((p["gap_max"] for p in parts), default=0.0),
        "is_weight_mean": sum(p["is_weight_sum"] for p in parts) / tokens,
        "is_truncated_fraction": sum(p["is_truncated"] for p in parts) / tokens,
    }


def aggregation_weights(
    lengths: Sequence[int], run_ids: Sequence[Any], aggregation: str, totals: BatchTotals | None = None
) -> list[float]:
    """The per-token weight of each sample, so that loss = sum over tokens of w * l_token.

    token_mean:  w = 1 / (all tokens)                         every token weighs the same
    sample_mean: w = 1 / (len_i * n_samples)                  every planner turn weighs the same
    run_mean:    w = 1 / (tokens of run(i) * n_runs)          every run weighs the same
    Weights over a whole (mini-)batch are fixed before it is split into micro-batches,
    so gradient accumulation gives exactly the loss of the full batch. `totals` are the
    counts over all processes (default: these samples are the whole batch); a run's
    tokens are counted locally, since a run's turns never leave its process.
    """
    per_run: Counter = Counter()
    for n, run in zip(lengths, run_ids):
        per_run[run] += n
    totals = totals or BatchTotals(tokens=sum(lengths), samples=len(lengths), runs=len(per_run))
    if aggregation == "token_mean":
        return [1.0 / totals.tokens] * len(lengths)
    if aggregation == "sample_mean":
        return [1.0 / (n * totals.samples) for n in lengths]
    if aggregation == "run_mean":
        return [1.0 / (per_run[run] * totals.runs) for run in run_ids]
    raise ValueError(f"unknown loss aggregation {aggregation!r}")


# ---------------------------------------------------------------------------------------
# Samples and log-probs
# ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One planner turn to train on, with its run's advantage."""

    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float]
    temperature: float
    advantage: float
    run_id: tuple[int, int]  # (query index, run index in group): for run_mean
    weight: float = 0.0  # per-token loss weight (aggregation), set per mini-batch
    # vLLM rollouts only (`_recompute_old_logprobs`): what the sampler reported, and each
    # token's truncated importance weight; None: the sampler was the training forward.
    sampler_logprobs: list[float] | None = None
    is_weights: list[float] | None = None


def build_samples(groups: Sequence[Sequence[RunResult]], config: FlowGRPOConfig) -> tuple[list[Sample], dict[str, float]]:
    """Advantages per run (Eq. A), broadcast to each planner turn; zero-variance policy applied."""
    samples: list[Sample] = []
    advantages: list[float] = []
    zero_variance = 0
    for q, group in enumerate(groups):
        rewards = [run.reward for run in group]
        if max(rewards) == min(rewards):
            zero_variance += 1
            if config.zero_variance_groups == "skip":
                continue
        for i, (run, adv) in enumerate(zip(group, group_advantages(rewards, config.advantage_eps))):
            advantages.append(adv)
            for turn in run.turns:
                if turn.completion_ids:
                    samples.append(Sample(turn.prompt_ids, turn.completion_ids, turn.logprobs, turn.temperature, adv, (q, i)))
    stats = {
        "zero_variance_groups": zero_variance,
        # sums, so that the logged advantage statistics can be made global over processes
        "advantage_count": len(advantages),
        "advantage_sum": float(np.sum(advantages)) if advantages else 0.0,
        "advantage_sq_sum": float(np.sum(np.square(advantages))) if advantages else 0.0,
        "advantage_mean": float(np.mean(advantages)) if advantages else 0.0,
        "advantage_std": float(np.std(advantages)) if advantages else 0.0,
        "advantage_abs_max": float(np.max(np.abs(advantages))) if advantages else 0.0,
    }
    return samples, stats


def _pad(samples: Sequence[Sample], device: torch.device) -> dict[str, torch.Tensor]:
    """Layout [left pad | prompt | completion | right pad], as TRL's GRPOTrainer lays it out:
    every completion starts at the same column P, so the logits of all completion tokens
    are the last C+1 positions."""

    def rows(values: Iterable[list], side: str, dtype: torch.dtype) -> torch.Tensor:
        return pad([torch.tensor(v, dtype=dtype) for v in values], padding_value=0, padding_side=side)

    prompts = rows((s.prompt_ids for s in samples), "left", torch.long)
    prompt_mask = rows(([1] * len(s.prompt_ids) for s in samples), "left", torch.long)
    completion = rows((s.completion_ids for s in samples), "right", torch.long)
    completion_mask = rows(([1] * len(s.completion_ids) for s in samples), "right", torch.long)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    batch = {
        "input_ids": torch.cat([prompts, completion], dim=1),
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),  # as the engine numbers left-padded rows
        "completion_ids": completion,
        "old_logprobs": rows((s.old_logprobs for s in samples), "right", torch.float32),
        "token_mask": completion_mask.float(),
        "temperature": torch.tensor([s.temperature for s in samples]),
        "advantage": torch.tensor([s.advantage for s in samples]),
        "weight": torch.tensor([s.weight for s in samples]),
        "is_weight": rows((s.is_weights or [1.0] * len(s.completion_ids) for s in samples), "right", torch.float32),
    }
    return {k: v.to(device) for k, v in batch.items()}


def completion_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) of each completion token, logits only at completion positions.

    `logits_to_keep` makes the LM head run on C+1 positions instead of the whole
    sequence (vocab 49,152: the full-sequence logits would dominate time and memory).
    """
    width_c = batch["completion_ids"].shape[1]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=width_c + 1,
        use_cache=False,
    ).logits[:, :-1, :]
    logp_all = F.log_softmax(logits.float() / batch["temperature"][:, None, None], dim=-1)
    logp = logp_all.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------


class FlowGRPOTrainer:
    """Trains the planner's `LocalChatModel` inside a compiled AgentFlow graph.

    `graph` must have been built with `policy` as its planner model. `ref_model` is the
    KL reference for full fine-tuning (a frozen bf16 copy is made when omitted and
    beta > 0); with LoRA the reference is the same model with the adapter disabled.
    `frozen_engines` are the other modules' engines, reseeded each step with the policy's
    so a step's sampling is a function of (seed, step, rank) and a resumed run samples
    exactly as an uninterrupted one.
    """

    def __init__(
        self,
        config: FlowGRPOConfig,
        graph: Any,
        policy: LocalChatModel,
        reward_fn: RewardFn,
        train_dataset: Any,
        eval_dataset: Any = None,
        *,
        ref_model: torch.nn.Module | None = None,
        frozen_engines: Sequence[GenerationEngine] = (),
        accelerator: Accelerator | None = None,
        rollout_backend: VLLMBackend | None = None,
    ) -> None:
        """`rollout_backend`: the vLLM backend the planner decodes with when
        `config.rollout_backend` is not "engine"; None makes the real one (GPU machines).
        Tests pass a `VLLMBackend` over a stand-in for vLLM."""
        self.config = config
        self.graph = graph
        self.policy = policy
        self.reward_fn = reward_fn
        self.train_items = [dict(row) for row in train_dataset]
        self.eval_items = [dict(row) for row in eval_dataset] if eval_dataset is not None else []
        self.engines = [policy.engine, *frozen_engines]
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if config.queries_per_step < self.world:
            raise ValueError(f"queries_per_step={config.queries_per_step} < {self.world} processes")
        if len(self.train_items) < config.queries_per_step:
            raise ValueError(f"the dataset has {len(self.train_items)} items, fewer than queries_per_step")
        _seed_everything(config.seed + self.rank)

        model = policy.engine.model
        if config.lora and not hasattr(model, "peft_config"):
            from peft import get_peft_model

            model = get_peft_model(model, config.lora_config())
            policy.engine.model = model  # the engine now decodes with the adapter live
        self.model = model.to(self.accelerator.device)
        self.model.eval()
        self.is_lora = hasattr(model, "peft_config")
        # Rollouts through vLLM (docs/design.md §3): the planner's requests go to it from now on.
        self.sampler = rollout_backend
        if self.sampler is None and config.rollout_backend != "engine":
            self.sampler = make_vllm_backend(config, policy.tokenizer, self.accelerator)
        if self.sampler is not None:
            expected = {"vllm_colocate": "colocate", "vllm_server": "server"}.get(config.rollout_backend)
            if self.sampler.mode != expected:
                raise ValueError(f"rollout_backend={config.rollout_backend!r} but the backend given is {self.sampler.mode!r}")
            policy.engine = self.sampler
            self.engines[0] = self.sampler
        self.ref_model = None
        if config.beta > 0 and not self.is_lora:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model).to(fast_dtype(self.accelerator.device))
            self.ref_model.requires_grad_(False).eval()
        self.plan: UpdatePlan = choose_plan(config.sharding, self.accelerator)
        self.sharded = self.plan in ("fsdp2", "accelerate-fsdp2")
        # The planner with full weights: what the local engine decodes with, what vLLM is
        # pushed and the old log-probs recomputed from. Unsharded it is the trained module.
        self.full_model: torch.nn.Module = self.model
        if self.sharded:
            if self.is_lora:
                raise ValueError("LoRA with a sharded planner is not supported (untested): use sharding: none "
                                 "(a LoRA update is small enough for DDP) or full fine-tuning")
            # The engine decodes with full weights: it keeps `model`; the optimizer updates a
            # sharded copy whose shards are gathered into it after each optimizer step.
            self.model = copy.deepcopy(self.model)
            if self.plan == "fsdp2":
                shard_with_fsdp2(self.model, self.accelerator)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        # `forward_model` is what the update's forward runs through (the DDP wrapper, or the
        # module itself); `model` stays the unwrapped module (state dicts, adapters, dtype).
        self.forward_model: torch.nn.Module = self.model
        if self.plan in ("ddp", "accelerate-fsdp2"):
            self.forward_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
            self.model = self.accelerator.unwrap_model(self.forward_model)
        self.weight_gather_s = 0.0  # seconds spent all-gathering shards into the engine this step
        self.autocast = config.bf16_autocast and bf16_is_fast(str(self.accelerator.device))

        self.steps_per_epoch = len(self.train_items) // config.queries_per_step
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.step_done = 0
        self.run_dir = self._make_run_dir()
        self.logger = MetricsLogger(self.run_dir, config.trackers, config.to_dict()) if self.is_main else None
        self.rollout_log = RolloutLog(self.run_dir) if self.is_main else None
        if config.resume_from:
            self._resume(Path(config.resume_from))
        self.pusher: WeightPusher | None = None
        if self.sampler is not None:  # vLLM loaded the initial checkpoint; a resumed run has moved on
            # under sharding it pushes the gathered full copy (vLLM + FSDP2: not tested yet)
            self.pusher = WeightPusher(self.sampler, self.full_model, self.run_dir / f".vllm-adapters-rank{self.rank}",
                                       is_main=self.is_main, barrier=self.accelerator.wait_for_everyone)
            self.pusher.push()

    # -- bookkeeping -----------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _make_run_dir(self) -> Path:
        """Resuming continues the checkpoint's own run dir; all processes agree on the name."""
        if self.config.resume_from:
            ckpt = latest_checkpoint(self.config.resume_from)
            if ckpt is None:
                raise FileNotFoundError(f"resume_from={self.config.resume_from!r}: no complete checkpoint there")
            return ckpt.parent.parent
        name = [self.config.run_name or fresh_run_name(self.config.output_dir, "flow_grpo")]
        if self.world > 1:
            broadcast_object_list(name)
        run_dir = Path(self.config.output_dir) / name[0]
        if (run_dir / "metrics.jsonl").exists():
            # Appending a new run to an old run's metrics would mix two runs in one curve.
            raise ConfigError(
                f"'run_name': {run_dir} already holds a run; set resume_from to continue it or choose a new run_name"
            )
        if self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(_yaml(self.config.to_dict()))
        return run_dir

    def _resume(self, path: Path) -> None:
        ckpt = latest_checkpoint(path)
        state = load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, rank=self.rank)
        if self.sharded:
            self._sync_engine()  # the engine's full copy still holds the initial weights
        self.step_done = int(state["step"])
        if self.logger is not None:
            self.logger.truncate_after(self.step_done)
        if self.rollout_log is not None:
            self.rollout_log.truncate_after(self.step_done)

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir, self.step_done, model=self.model, optimizer=self.optimizer,
            planner=self.full_model,  # full weights, also under sharding (gathered after each step)
            config=self.config.to_dict(), tokenizer=self.policy.tokenizer, keep=self.config.keep_checkpoints,
            rank=self.rank, is_main=self.is_main, barrier=self.accelerator.wait_for_everyone,
        )

    def _step_items(self, step: int) -> list[dict[str, Any]]:
        """Queries of `step` (1-based): a fixed permutation per epoch, so data order is a
        function of (seed, step) and a resumed run sees the same queries; then this
        process's shard (whole queries, hence whole groups)."""
        q = self.config.queries_per_step
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        order = np.random.default_rng(self.config.seed + epoch).permutation(len(self.train_items))
        chosen = order[index * q : (index + 1) * q]
        return [self.train_items[i] for i in chosen[self.rank :: self.world]]

    # -- training loop -------------------------------------------------------------------
    def train(self) -> Path:
        """Run until `total_steps` or `max_train_minutes`; Ctrl-C saves a checkpoint of the
        last finished step, then re-raises."""
        last_saved = self.step_done
        started = time.monotonic()
        try:
            while self.step_done < self.total_steps:
                metrics = self.step(self.step_done + 1)
                self.step_done += 1
                last = self.step_done == self.total_steps or self._out_of_time(started)
                if self.config.eval_every and self.eval_items and self.step_done % self.config.eval_every == 0:
                    metrics.update(self.evaluate())
                if self.logger is not None and (self.step_done % self.config.log_every == 0 or last):
                    self.logger.log(metrics)
                if self.step_done % self.config.save_every == 0 or last:
                    self.save()
                    last_saved = self.step_done
                if last:
                    break
        except KeyboardInterrupt:
            if self.step_done > last_saved:
                self.save()
            raise
        finally:
            if self.logger is not None:
                self.logger.close()
        return self.run_dir

    def _out_of_time(self, started: float) -> bool:
        """Whether the time budget is spent; processes stop together (the first one out of time decides)."""
        if self.config.max_train_minutes is None:
            return False
        spent = torch.tensor([float(time.monotonic() - started >= 60 * self.config.max_train_minutes)])
        if self.world > 1:
            spent = self.accelerator.reduce(spent, reduction="max")
        return bool(spent.item())

    def step(self, step: int) -> dict[str, Any]:
        """One Flow-GRPO step: rollout -> rewards -> per-run advantages -> clipped update."""
        cfg = self.config
        for k, engine in enumerate(self.engines):
            engine.reseed(hash((cfg.seed, step, self.rank, k)) & (2**62 - 1))
        items = self._step_items(step)
        tokens_before = sum(e.tokens for e in self.engines)
        start = time.perf_counter()
        groups = collect_rollouts(
            self.graph, items, cfg.group_size, self.reward_fn, node=cfg.planner_node,
            max_concurrency=cfg.max_concurrency, max_turns=cfg.max_turns, max_seconds=cfg.run_timeout_s,
        )
        rollout_time = time.perf_counter() - start
        generated = sum(e.tokens for e in self.engines) - tokens_before
        self._log_rollouts(step, groups)
        samples, adv_stats = build_samples(groups, cfg)
        start = time.perf_counter()
        update = self.update(samples)
        update_time = time.perf_counter() - start
        return self._metrics(step, groups, adv_stats, update, rollout_time, update_time, generated)

    def update(self, samples: list[Sample]) -> dict[str, float]:
        """`mini_batches` optimizer steps over the samples; micro-batches accumulate gradients.

        A non-finite loss or gradient on any process skips that optimizer step on all of
        them (gradients dropped, counted as `skipped_updates`); training goes on. Every
        process must call this (it runs collectives), with or without samples; the
        returned statistics are global: sums over all processes, divided by all tokens.
        """
        cfg = self.config
        correction = self._recompute_old_logprobs(samples) if self.sampler is not None else {}
        pushing_s = self.pusher.seconds if self.pusher is not None else 0.0
        random.Random(hash((cfg.seed, self.step_done, self.rank))).shuffle(samples)
        chunks = [samples[i :: cfg.mini_batches] for i in range(cfg.mini_batches)]
        totals: Counter = Counter()
        self.weight_gather_s = 0.0
        self.forward_model.train()
        try:
            for chunk in chunks:
                totals.update(self._optimizer_step(chunk))
        finally:
            self.forward_model.eval()
        summed = ("tokens", "kl", "clipped", "entropy", "ratio", "loss", "trained_tokens", "trained_samples")
        for key, value in zip(summed, gather_rows(self.accelerator, [float(totals[k]) for k in summed]).sum(0).tolist()):
            totals[key] = value  # this process's sums -> all processes' sums
        tokens = max(totals["tokens"], 1.0)
        stats = {k: totals[k] / tokens for k in ("kl", "clipped", "entropy", "ratio")}
        stats.update({k: totals[k] for k in ("skipped_updates", "optimizer_steps", "trained_samples")})
        if totals["optimizer_steps"]:
            # the weights are global (Eq. objective over all processes' tokens), so the
            # objective of an optimizer step is the SUM of the processes' partial losses
            stats["loss"] = totals["loss"] / totals["optimizer_steps"]
            stats["grad_norm"] = totals["grad_norm"] / totals["optimizer_steps"]
        stats["trained_tokens"] = totals["trained_tokens"]
        stats["sampler_gap"] = correction
        if self.pusher is not None:
            stats["weight_push_s"] = self.pusher.seconds - pushing_s
        return stats

    def _recompute_old_logprobs(self, samples: list[Sample]) -> dict[str, float]:
        """vLLM sampled these tokens: replace the old log-probs by the training model's own
        (so the PPO ratio starts at 1 and measures only this update) and set each token's
        truncated importance weight (Eq. TIS; all ones with `sampler_correction: recompute`).

        Returns this process's sums for the sampler-vs-trainer gap logged every step
        (`sampler_gap_metrics`): |logp_trainer - logp_vllm| over completion tokens, the
        weights, and the tokens whose ratio exceeded the cap.
        """
        cfg = self.config
        tokens = gap_sum = gap_max = weight_sum = truncated = 0.0
        with torch.no_grad():
            for micro in _chunks(samples, cfg.micro_batch_size):
                batch = _pad(micro, self.accelerator.device)
                # the same computation as the update's forward; on the full copy, which needs no
                # collectives (processes recompute different numbers of micro-batches)
                with self._autocast():
                    logp = completion_logprobs(self.full_model, batch)[0].float()
                mask, sampler = batch["token_mask"], batch["old_logprobs"]
                ratio = torch.exp(logp - sampler)
                weights = truncated_is_weights(logp, sampler, cfg.tis_cap) if cfg.sampler_correction == "tis" else torch.ones_like(logp)
                gap = (logp - sampler).abs() * mask
                tokens += mask.sum().item()
                gap_sum += gap.sum().item()
                gap_max = max(gap_max, gap.max().item())
                weight_sum += (weights * mask).sum().item()
                truncated += ((ratio > cfg.tis_cap).float() * mask).sum().item()
                for i, s in enumerate(micro):
                    n = len(s.completion_ids)
                    s.sampler_logprobs, s.old_logprobs = s.old_logprobs, logp[i, :n].tolist()
                    s.is_weights = weights[i, :n].tolist()
        # this process's sums; `_metrics` adds them over processes into the logged means
        return {"gap_tokens": tokens, "gap_sum": gap_sum, "gap_max": gap_max, "is_weight_sum": weight_sum,
                "is_truncated": truncated}

    def _optimizer_step(self, samples: list[Sample]) -> Counter:
        cfg = self.config
        out: Counter = Counter()
        # Micro-batches of similar lengths: a padded row is as wide as its batch's longest
        # prompt plus longest completion, so grouping by length cuts the padded tokens the
        # forward/backward runs on (8 planner-like turns in benchmarks/update_throughput.py:
        # 2,352 -> 2,148 for 1,890 real). The weights are fixed over the whole batch, so the
        # grouping changes no gradient (docs/design.md §3, Eq. objective).
        samples = sorted(samples, key=lambda s: (len(s.prompt_ids), len(s.completion_ids)))
        micro = list(_chunks(samples, cfg.micro_batch_size))
        lengths = [len(s.completion_ids) for s in samples]
        run_ids = [s.run_id for s in samples]
        # One all-gather of this process's counts: the global denominators, and the
        # largest micro-batch count, which every process runs (module docstring).
        rows = gather_rows(self.accelerator, [len(samples), sum(lengths), len(set(run_ids)), len(micro)])
        n_samples, n_tokens, n_runs = (int(v) for v in rows[:, :3].sum(0))
        if n_samples == 0:  # every group skipped on every process: nothing to learn from
            return out
        if samples:
            totals = BatchTotals(tokens=n_tokens, samples=n_samples, runs=n_runs)
            for s, w in zip(samples, aggregation_weights(lengths, run_ids, cfg.loss_aggregation, totals)):
                s.weight = w
        real = len(micro)
        micro += [[_padding_sample()] for _ in range(int(rows[:, 3].max()) - real)]
        self.optimizer.zero_grad(set_to_none=False)
        loss_sum, finite = 0.0, True
        for i, batch_samples in enumerate(micro):
            batch = _pad(batch_samples, self.accelerator.device)
            with self._grad_sync(last=i == len(micro) - 1):
                with self._autocast():
                    logp, entropy = completion_logprobs(self.forward_model, batch, with_entropy=True)
                mask = batch["token_mask"]
                surrogate, clipped = clipped_surrogate(
                    logp, batch["old_logprobs"], batch["advantage"][:, None], cfg.clip_eps_low, cfg.clip_eps_high)
                per_token = -surrogate * batch["is_weight"]  # Eq. TIS (all ones unless vLLM sampled)
                kl = torch.zeros_like(logp)
                if cfg.beta > 0:
                    kl = k3_kl(logp, self._reference_logprobs(batch))
                    per_token = per_token + cfg.beta * kl
                # Eq. objective, this process's part: sum_k w_k (-L_clip_k + beta KL_k) with global w_k
                loss = (per_token * mask * batch["weight"][:, None]).sum()
                finite = finite and bool(torch.isfinite(loss))
                # DDP / FSDP2 AVERAGE gradients over processes; the objective is the SUM of the
                # processes' parts, hence the factor. A non-finite loss still runs its backward,
                # so that every process joins the same gradient collectives; the step is skipped below.
                (loss * self.world).backward()
            if i >= real:  # zero-weight padding: no tokens to count
                continue
            loss_sum += loss.item()
            out["tokens"] += mask.sum().item()
            out["trained_tokens"] += batch["attention_mask"].sum().item()
            out["kl"] += (kl.detach() * mask).sum().item()
            out["clipped"] += (clipped.float() * mask).sum().item()
            out["entropy"] += (entropy * mask).sum().item()
            out["ratio"] += (torch.exp(logp.detach() - batch["old_logprobs"]) * mask).sum().item()
        params = [p for p in self.model.parameters() if p.requires_grad]
        flags = torch.tensor([0.0 if finite else 1.0], device=self.accelerator.device)
        if self.world > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        grad_norm = float("nan")
        if flags.item() == 0:
            grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if flags.item() > 0 or not np.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=False)
            out["skipped_updates"] += 1
            return out
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        if self.sharded:
            self._sync_engine()
        if self.pusher is not None:  # vLLM's copy must be the policy the next rollout samples from
            self.pusher.push()
        out.update({"optimizer_steps": 1, "loss": loss_sum, "grad_norm": grad_norm, "trained_samples": len(samples)})
        return out

    def _sync_engine(self) -> None:
        """All-gather the updated shards into the rollout engine's full copy (timed: it is
        the price of sharding on the rollout side, logged as `weight_gather_s`)."""
        start = time.perf_counter()
        copy_full_weights(self.model, self.full_model)
        self.weight_gather_s += time.perf_counter() - start

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP: all-reduce gradients only in the last micro-batch's backward (the others
        accumulate locally; every process has the same count, so the collectives pair up).
        FSDP2 reduce-scatters in every backward, which keeps only shards of the gradients."""
        if self.plan == "ddp" and not last:
            return self.accelerator.no_sync(self.forward_model)
        return contextlib.nullcontext()

    def _reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log pi_ref of the completion tokens: adapter disabled (LoRA) or the frozen copy."""
        with torch.no_grad():
            if self.is_lora:
                with self.model.disable_adapter(), self._autocast():
                    return completion_logprobs(self.model, batch)[0]
            return completion_logprobs(self.ref_model, batch)[0]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=torch.bfloat16)

    # -- evaluation and metrics -------------------------------------------------------
    def greedy_runs(self, items: Sequence[dict[str, Any]]) -> list[RunResult]:
        """One greedy graph run per item with the current planner (the others decode as built)."""
        temperature, self.policy.temperature = self.policy.temperature, 0.0
        try:
            groups = collect_rollouts(self.graph, items, 1, self.reward_fn, node=self.config.planner_node,
                                      max_concurrency=self.config.max_concurrency, max_turns=self.config.max_turns,
                                      max_seconds=self.config.run_timeout_s)
        finally:
            self.policy.temperature = temperature
        return [run for (run,) in groups]

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy of the current planner on the eval items (sharded across processes)."""
        runs = self.greedy_runs(self.eval_items[self.rank :: self.world])
        rewards = [r for part in _gather([run.reward for run in runs], self.world) for r in part]
        return {"eval_accuracy": float(np.mean(rewards)) if rewards else float("nan"), "eval_items": len(rewards)}

    def _log_rollouts(self, step: int, groups: list[list[RunResult]]) -> None:
        """Append this step's graph runs to rollouts.jsonl (docs/design.md §8): gathered from
        every process, written by the main one only. `query_index` is the query's position
        among the step's queries (`_step_items` gives process r the queries r, r + world, ...)."""
        rows = [
            rollout_row(run, step, self.rank + q * self.world, sample)
            for q, group in enumerate(groups) for sample, run in enumerate(group)
        ]
        rows = [row for part in _gather(rows, self.world) for row in part]
        if self.rollout_log is not None:
            self.rollout_log.append(sorted(rows, key=lambda r: (r["query_index"], r["sample"])))

    def _metrics(
        self, step: int, groups: list[list[RunResult]], adv: dict[str, float], update: dict[str, float],
        rollout_time: float, update_time: float, generated: int,
    ) -> dict[str, Any]:
        runs = [
            {"reward": r.reward, "failed": r.failed, "turns": r.n_turns, "tool_errors": r.tool_errors, "tools": dict(r.tools)}
            for group in groups for r in group
        ]
        # `update` is global already (update() sums over processes); the rest is gathered here
        parts = _gather([runs, adv, generated, rollout_time, update_time, update.get("sampler_gap", {})], self.world)
        rollout_time, update_time = max(p[3] for p in parts), max(p[4] for p in parts)  # the slowest process
        runs = [r for part in parts for r in part[0]]
        rewards = np.array([r["reward"] for r in runs], dtype=float)
        tools: Counter = Counter()
        for r in runs:
            tools.update(r["tools"])
        calls = sum(tools.values())
        turns = sum(r["turns"] for r in runs)
        metrics: dict[str, Any] = {
            "step": step,
            "epoch": (step - 1) // self.steps_per_epoch,
            "reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
            "reward_std": float(rewards.std()) if len(rewards) else 0.0,
            "accuracy": float((rewards >= 1.0).mean()) if len(rewards) else 0.0,
            "runs": len(runs),
            "failed_runs": sum(r["failed"] for r in runs),
            "turns_per_run": turns / max(len(runs), 1),
            "tool_error_rate": tool_error_rate(sum(r["tool_errors"] for r in runs), calls),
            **{f"tool_usage/{name}": n / calls for name, n in sorted(tools.items())},
        }
        metrics["zero_variance_groups"] = sum(p[1]["zero_variance_groups"] for p in parts)
        n_adv = sum(p[1]["advantage_count"] for p in parts)
        mean_adv = sum(p[1]["advantage_sum"] for p in parts) / max(n_adv, 1)
        metrics["advantage_mean"] = mean_adv  # over every run of every process, not a mean of means
        metrics["advantage_std"] = float(np.sqrt(max(sum(p[1]["advantage_sq_sum"] for p in parts) / max(n_adv, 1) - mean_adv**2, 0.0)))
        metrics["advantage_abs_max"] = max(p[1]["advantage_abs_max"] for p in parts)
        for key in ("kl", "clipped", "entropy", "ratio", "loss", "grad_norm"):
            metrics[{"clipped": "clip_fraction", "ratio": "ratio_mean"}.get(key, key)] = update.get(key)
        for key in ("skipped_updates", "optimizer_steps", "trained_samples"):
            metrics[key] = update.get(key, 0)
        if self.sampler is not None:  # the sampler-vs-trainer gap (docs/design.md §3), every step
            metrics.update(sampler_gap_metrics([p[5] for p in parts if p[5]]))
            metrics["weight_pushes"] = self.pusher.version  # since the trainer started (1: the initial push)
            metrics["weight_push_s"] = update.get("weight_push_s", 0.0)  # this step's
        metrics.update({
            "rollout_time_s": rollout_time,
            "update_time_s": update_time,
            "rollout_tokens_per_s": sum(p[2] for p in parts) / max(rollout_time, 1e-9),
            "update_tokens_per_s": update.get("trained_tokens", 0) / max(update_time, 1e-9),
            "weight_gather_s": self.weight_gather_s,  # FSDP2: shards -> the engine's full copy
            "rollout_dtype": (f"vllm-{self.config.vllm_dtype}" if self.sampler is not None
                              else str(self.full_model.dtype).removeprefix("torch.")),
            "rollout_backend": self.config.rollout_backend,
            "update_dtype": "bfloat16-autocast" if self.autocast else str(self.model.dtype).removeprefix("torch."),
            "reference": "adapter-disabled" if self.is_lora else ("frozen-copy" if self.ref_model is not None else "none"),
            "processes": self.world,
            "sharding": self.plan,
            "planner_params_per_process": local_numel(self.model),
            "lr": self.optimizer.param_groups[0]["lr"],
        })
        return metrics


def _gather(obj: Any, world: int) -> list[Any]:
    """`obj` of every process, in rank order (just `[obj]` when not distributed)."""
    return list(gather_object([obj])) if world > 1 else [obj]


def _padding_sample() -> Sample:
    """A one-token sample of weight 0: a process with fewer micro-batches than the others
    runs these, so that its forward/backward (and their collectives) pair up with theirs;
    its loss and gradient are exactly zero (Eq. objective with w = 0)."""
    return Sample(prompt_ids=[0], completion_ids=[0], old_logprobs=[0.0], temperature=1.0, advantage=0.0,
                  run_id=(-1, -1), weight=0.0)


def _chunks(items: list[Sample], size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


__all__ = [
    "FlowGRPOTrainer",
    "Sample",
    "aggregation_weights",
    "build_samples",
    "clipped_surrogate",
    "completion_logprobs",
    "group_advantages",
    "k3_kl",
]
