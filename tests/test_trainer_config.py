"""Config loading: YAML, unknown keys and bad values fail at start naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.trainer import ConfigError, FlowGRPOConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_toolmix.yaml"


def test_example_config_loads():
    config = FlowGRPOConfig.from_yaml(EXAMPLE)
    assert config.model == "smollm2-135m-instruct" and config.group_size == 4


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"group_sise": 4}, "group_sise"),
        ({"group_size": 1}, "group_size"),
        ({"group_size": "8"}, "group_size"),
        ({"loss_aggregation": "mean"}, "loss_aggregation"),
        ({"zero_variance_groups": "drop"}, "zero_variance_groups"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"clip_eps_low": 1.5}, "clip_eps_low"),
        ({"temperature": 0}, "temperature"),
        ({"lora": "yes"}, "lora"),
        ({"lora_targets": ["q_proj", 3]}, "lora_targets"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_config_names_the_field(tmp_path, data, field):
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in data.items()))
    with pytest.raises(ConfigError, match=repr(field)):
        FlowGRPOConfig.from_yaml(path)


def test_yaml_ints_are_accepted_as_floats():
    assert FlowGRPOConfig.from_dict({"learning_rate": 1, "beta": 0}).learning_rate == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"dataset": "no-such-benchmark"}, "dataset"),
        ({"dataset": "/nonexistent/train.jsonl"}, "dataset"),
        ({"reward": "no-such-scorer"}, "reward"),
    ],
)
def test_bad_data_or_reward_fails_before_loading_a_model(data, field):
    from agentflow.trainer import build_trainer

    with pytest.raises(ConfigError, match=field):
        build_trainer({"model": "no/such-model", **data})  # loading this model would fail differently


def test_a_new_run_refuses_an_existing_run_dir(tmp_path):
    from agentflow.trainer import build_trainer
    from tests.trainer_helpers import tiny_config

    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="run_name"):
        build_trainer(tiny_config(tmp_path))
