"""Step metrics: metrics.jsonl is the source of truth, the same with or without trackers;
accelerate's TensorBoard tracker mirrors its numbers when the config asks for it."""

from __future__ import annotations

import pytest
from trainer_helpers import first_letter_reward, tiny_config

from agentflow.trainer import build_trainer, read_metrics
from agentflow.trainer.metrics import METRICS_FILE, TRACKERS_DIR, MetricsLogger

RECORDS = [
    {"step": 1, "reward_mean": 0.25, "loss": float("nan"), "runs": 8, "rollout_dtype": "float32", "tool_usage/calculator": 0.5},
    {"step": 2, "reward_mean": 0.5, "loss": 0.125, "runs": 8, "rollout_dtype": "float32", "tool_usage/calculator": 1.0},
]


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in (run_dir / TRACKERS_DIR).rglob("events.out.tfevents.*") if p.parent.name == run_dir.name}
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_metrics_file_is_the_same_with_a_tracker_and_nan_is_null(tmp_path):
    pytest.importorskip("tensorboard")
    files = {}
    for trackers in ([], ["tensorboard"]):
        run_dir = tmp_path / ("tracked" if trackers else "plain")
        logger = MetricsLogger(run_dir, trackers, config={"group_size": 4, "lora_targets": ["q_proj", "v_proj"]})
        for record in RECORDS:
            logger.log(record)
        logger.close()
        files[bool(trackers)] = (run_dir / METRICS_FILE).read_bytes()
    assert files[True] == files[False]
    assert [r["loss"] for r in read_metrics(tmp_path / "plain")] == [None, 0.125]
    scalars = _scalars(tmp_path / "tracked")
    assert scalars["reward_mean"] == [(1, 0.25), (2, 0.5)]
    assert scalars["tool_usage/calculator"] == [(1, 0.5), (2, 1.0)]
    assert "step" not in scalars and "rollout_dtype" not in scalars


def test_tensorboard_config_key_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = build_trainer(tiny_config(tmp_path, max_steps=1, tensorboard=True), reward_fn=first_letter_reward)
    run_dir = trainer.train()
    (record,) = read_metrics(run_dir)
    assert _scalars(run_dir)["reward_mean"] == [(1, pytest.approx(record["reward_mean"]))]
