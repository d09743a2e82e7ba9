"""Config loading: YAML, unknown keys and bad values fail at start naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def test_a_bad_list_item_is_named_with_its_index_and_expected_type():
    with pytest.raises(ConfigError, match=r"'lora_targets' item 1: Input should be a valid string, got 3"):
        FlowGRPOConfig.from_dict({"lora_targets": ["q_proj", 3]})


def test_every_bad_field_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        FlowGRPOConfig.from_dict({"group_size": "8", "beta": -1, "group_sise": 4})
    assert all(name in str(info.value) for name in ("'group_size'", "'beta'", "'group_sise'"))
    assert "did you mean 'group_size'" in str(info.value)


def test_direct_construction_raises_config_error_too():
    with pytest.raises(ConfigError, match="'micro_batch_size'"):
        FlowGRPOConfig(micro_batch_size=0)


def test_to_dict_round_trips_through_yaml(tmp_path):
    config = FlowGRPOConfig(lora=True, lora_targets=["q_proj"], tools=["calculator"], max_train_minutes=1.5)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert FlowGRPOConfig.from_yaml(path) == config
    assert FlowGRPOConfig.from_dict(config.to_dict()) == config


def test_a_tracker_without_its_package_fails_at_load(monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match="'tensorboard'.*needs the 'tensorboard' package"):
        FlowGRPOConfig.from_dict({"tensorboard": True})
    with pytest.raises(ConfigError, match="'report_to'.*needs the 'wandb' package"):
        FlowGRPOConfig.from_dict({"report_to": ["wandb"]})
    assert FlowGRPOConfig.from_dict({"tensorboard": False}).trackers == []


def test_an_unknown_tracker_fails_at_load():
    with pytest.raises(ConfigError, match="'report_to'.*unknown tracker 'tensorbored'"):
        FlowGRPOConfig.from_dict({"report_to": ["tensorbored"]})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"dataset": "no-such-benchmark"}, "dataset"),
        ({"dataset": "/nonexistent/train.jsonl"}, "dataset"),
        ({"reward": "no-such-scorer"}, "reward"),
        ({"reward": "judge", "judge_model": "/no/such/judge"}, "judge_model"),  # loaded before the planner
        ({"reward": "judge", "judge_model": "openai:m", "judge_base_url": "http://127.0.0.1:9/v1"}, "judge_model"),
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


def test_runs_without_a_name_started_in_one_second_get_their_own_folders(tmp_path, monkeypatch):
    """The default name is the time to the second; a second run in that second takes a
    counter (it was refused as "already holds a run"; an SFT run would have shared it)."""
    from agentflow.trainer import build_trainer, checkpoint
    from tests.trainer_helpers import first_letter_reward, tiny_config

    monkeypatch.setattr(checkpoint.time, "strftime", lambda fmt: "20261130-074420")
    dirs = []
    for _ in range(2):
        trainer = build_trainer(tiny_config(tmp_path, run_name=None), reward_fn=first_letter_reward)
        (trainer.run_dir / "metrics.jsonl").write_text('{"step": 1}\n')  # as a run that trained
        dirs.append(trainer.run_dir.name)
    assert dirs == ["flow_grpo-20261130-074420", "flow_grpo-20261130-074420-2"]
    assert checkpoint.fresh_run_name(tmp_path / "runs", "sft") == "sft-20261130-074420"


def test_lora_config_carries_the_lora_fields():
    lora = FlowGRPOConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.1, lora_targets=["q_proj", "v_proj"]).lora_config()
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 8, 0.1)
    assert lora.target_modules == {"q_proj", "v_proj"} and lora.task_type == "CAUSAL_LM"


@pytest.mark.parametrize(("data", "message"), [
    ({"reward": "judge"}, "reward: judge needs judge_model"),
    ({"judge_model": "openai:m"}, "judge_model and judge_base_url are for reward: judge"),
    ({"judge_base_url": "http://localhost:8000/v1"}, "would be unused"),
])
def test_a_judge_model_goes_with_reward_judge(data, message):
    with pytest.raises(ConfigError, match=message):
        FlowGRPOConfig(**data)
    assert FlowGRPOConfig(reward="judge", judge_model="openai:m").judge_model == "openai:m"


def test_the_qwen7b_recipe_validates():
    """examples/train_qwen7b.yaml (the paper's setting, for GPUs) passes the config loader."""
    config = FlowGRPOConfig.from_yaml(EXAMPLE.with_name("train_qwen7b.yaml"))
    assert config.model == "Qwen/Qwen2.5-7B-Instruct"
    assert (config.group_size, config.queries_per_step, config.max_turns) == (8, 32, 3)
    assert (config.learning_rate, config.beta) == (1e-6, 0.001)
    assert config.rollout_backend == "vllm_colocate" and config.sampler_correction == "tis"
