"""Checkpoints: resume equals an uninterrupted run, SIGKILL mid-write keeps the previous
checkpoint, Ctrl-C saves, NaN losses skip the update, curves render."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import first_letter_reward, tiny_config

import agentflow.trainer.flow_grpo as flow_grpo
from agentflow.trainer import build_trainer, latest_checkpoint, plot_run, read_metrics
from agentflow.trainer.checkpoint import load_checkpoint


def _weights(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_resume_continues_the_same_run(tmp_path):
    straight = build_trainer(tiny_config(tmp_path, run_name="straight", max_steps=2), reward_fn=first_letter_reward)
    initial = _weights(straight)
    straight.train()
    assert [m["optimizer_steps"] for m in read_metrics(straight.run_dir)] == [1, 1]  # both steps update
    assert not all(torch.equal(a, b) for a, b in zip(initial, _weights(straight)))
    first = build_trainer(tiny_config(tmp_path, run_name="split", max_steps=1), reward_fn=first_letter_reward)
    run_dir = first.train()
    resumed = build_trainer(tiny_config(tmp_path, max_steps=2, resume_from=str(run_dir)), reward_fn=first_letter_reward)
    assert resumed.run_dir == run_dir and resumed.step_done == 1
    resumed.train()
    for a, b in zip(_weights(straight), _weights(resumed)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    split, whole = read_metrics(run_dir), read_metrics(straight.run_dir)
    assert [m["step"] for m in split] == [1, 2]  # one metrics file, appended
    assert [m["reward_mean"] for m in split] == [m["reward_mean"] for m in whole]  # same data, same samples


def _adapter(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_lora_checkpoint_roundtrip(tmp_path):
    lora = dict(max_steps=1, lora=True, lora_rank=4, beta=0.01)
    trainer = build_trainer(tiny_config(tmp_path, **lora), reward_fn=first_letter_reward)
    initial = _adapter(trainer)
    assert initial and all("lora_" in name for name in initial)  # only the adapter trains
    trainer.train()
    trained = _adapter(trainer)
    # training moved the adapter, so a checkpoint of the initial weights would not pass below
    assert [name for name in initial if not torch.equal(initial[name], trained[name])]
    ckpt = latest_checkpoint(trainer.run_dir)
    assert (ckpt / "planner" / "adapter_config.json").is_file()
    fresh = build_trainer(tiny_config(tmp_path, run_name="fresh", **lora), reward_fn=first_letter_reward)
    assert all(torch.equal(initial[name], p) for name, p in _adapter(fresh).items())  # same seed, same start
    load_checkpoint(ckpt, model=fresh.model, optimizer=fresh.optimizer)
    for name, p in _adapter(fresh).items():
        torch.testing.assert_close(p, trained[name], rtol=0, atol=0)
    for a, b in zip(_weights(trainer), _weights(fresh)):  # the frozen base model too
        torch.testing.assert_close(a, b, rtol=0, atol=0)


_KILLED_WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
import agentflow.trainer.checkpoint as ckpt
from agentflow.trainer import build_trainer
from trainer_helpers import first_letter_reward, tiny_config
from pathlib import Path
trainer = build_trainer(tiny_config(Path({tmp!r}), max_steps=1), reward_fn=first_letter_reward)
trainer.train()
real = ckpt.save_planner
def slow(model, target, tokenizer=None):
    real(model, target, tokenizer)
    Path({marker!r}).write_text("writing")
    time.sleep(600)
ckpt.save_planner = slow
trainer.step_done = 2
trainer.save()
"""


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    script = _KILLED_WRITER.format(tests=str(Path(__file__).parent), tmp=str(tmp_path), marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "writer died or hung before the checkpoint write"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    run_dir = tmp_path / "runs" / "run"
    assert (run_dir / "checkpoints" / ".tmp-step-000002").is_dir()  # the half-written one
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.name == "step-000001"
    trainer = build_trainer(tiny_config(tmp_path, max_steps=2, resume_from=str(run_dir)), reward_fn=first_letter_reward)
    assert trainer.step_done == 1
    trainer.train()
    assert latest_checkpoint(run_dir).name == "step-000002"
    assert not (run_dir / "checkpoints" / ".tmp-step-000002").exists()


def test_keyboard_interrupt_saves_a_checkpoint(tmp_path):
    calls = []

    def interrupting(state, item):
        calls.append(1)
        if len(calls) > 8:  # during step 2 (8 runs per step)
            raise KeyboardInterrupt
        return first_letter_reward(state, item)

    trainer = build_trainer(tiny_config(tmp_path, max_steps=3, save_every=100), reward_fn=interrupting)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert latest_checkpoint(trainer.run_dir).name == "step-000001"


def test_nan_loss_skips_the_update_and_training_goes_on(tmp_path, monkeypatch):
    real = flow_grpo.build_samples

    def poisoned(groups, config):
        samples, stats = real(groups, config)
        if samples and trainer.step_done == 0:
            samples[0].old_logprobs = [float("nan")] * len(samples[0].old_logprobs)
        return samples, stats

    monkeypatch.setattr(flow_grpo, "build_samples", poisoned)
    trainer = build_trainer(tiny_config(tmp_path, max_steps=2, zero_variance_groups="keep"), reward_fn=first_letter_reward)
    before = _weights(trainer)
    trainer.step_done = 0
    metrics = trainer.step(1)
    assert metrics["skipped_updates"] == 1 and metrics["optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer)))
    trainer.step_done = 1
    metrics = trainer.step(2)
    assert metrics["skipped_updates"] == 0 and metrics["optimizer_steps"] == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(trainer)))


def test_plot_run_writes_pngs(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, max_steps=2, beta=0.01), reward_fn=first_letter_reward)
    paths = plot_run(trainer.train())
    names = {p.name for p in paths}
    assert {"reward.png", "accuracy.png", "tool_error_rate.png", "kl.png", "tool_usage.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)


def test_time_budget_stops_after_the_step_under_way(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, max_steps=5, max_train_minutes=1e-4, save_every=10),
                            reward_fn=first_letter_reward)
    run_dir = trainer.train()
    assert trainer.step_done == 1
    assert [m["step"] for m in read_metrics(run_dir)] == [1]  # the last step is logged and saved
    assert latest_checkpoint(run_dir).name == "step-000001"
