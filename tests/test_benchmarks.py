"""The rollout benchmark's quick mode runs end to end on a tiny model (so the script cannot rot)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_throughput.py"


def _run_rollout_benchmark(capsys, *extra: str) -> tuple[dict, str]:
    """The rollout benchmark in quick mode on the tiny model, checked line by line: the
    last-line figures are the ratios of what the run measured and printed, the G=8 rollout
    finished every run, and the prefix cache reused the group's shared prompts."""
    spec = importlib.util.spec_from_file_location("rollout_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--tiny", "--max-new-tokens", "4", *extra])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == out
    assert set(out) == {"speedup_vs_peer", "speedup_vs_peer_32", "engine_vs_raw", "peak_rss_mb",
                        "decode_ms_per_step_g8", "decode_ms_per_step_1row", "wall_min",
                        "stop_rules_decode_steps_saved", "stop_rules_speedup", "engine_vs_llama_cpp",
                        "llama_cpp_decode_ms_per_token", "bandwidth_gb_s_start", "bandwidth_gb_s_end",
                        "speculation_decode_steps_saved", "speculation_speedup", "tokens_per_row_step_g8"}
    text = "\n".join(lines)
    peer = float(re.search(r"\(a\) peer .*?= ([\d.]+) traj/s", text).group(1))
    runs, engine = re.search(r"\(b\) engine G=8: (\d+) runs in [\d.]+s = ([\d.]+) traj/s", text).groups()
    assert int(runs) == 8
    assert out["speedup_vs_peer"] == pytest.approx(float(engine) / peer, rel=2e-3)
    raw, eng = re.search(r"raw generate vs engine, batch 5 .*?: raw ([\d.]+) tok/s, engine ([\d.]+) tok/s", text).groups()
    assert out["engine_vs_raw"] == pytest.approx(float(eng) / float(raw), rel=2e-3)
    reused, total = map(int, re.search(r"reused from the prefix cache (\d+) of (\d+)", text).groups())
    assert 0 < reused < total
    one, g8 = map(float, re.search(r"decode ms/step: 1 row ([\d.]+), .*G=8 rollouts ([\d.]+) at", text).groups())
    assert (out["decode_ms_per_step_1row"], out["decode_ms_per_step_g8"]) == pytest.approx((one, g8), abs=0.051)
    assert out["peak_rss_mb"] == pytest.approx(float(re.search(r"peak RSS (\d+) MB", text).group(1)), abs=1)
    start = float(re.search(r"memory bandwidth \(sum over 256 MB\): ([\d.]+) GB/s", text).group(1))
    end = float(re.search(r"memory bandwidth now ([\d.]+) GB/s", text).group(1))
    assert (out["bandwidth_gb_s_start"], out["bandwidth_gb_s_end"]) == (start, end) and min(start, end) > 0
    off, on = map(int, re.search(r"stop rules G=8: off (\d+) decode steps.* vs on (\d+) decode steps", text).groups())
    assert out["stop_rules_decode_steps_saved"] == round(1 - on / off, 3)
    off, on = map(int, re.search(r"speculation G=8: off (\d+) decode steps.* vs on (\d+) decode steps", text).groups())
    assert out["speculation_decode_steps_saved"] == round(1 - on / off, 3)
    kept, drafted = map(int, re.search(r"drafts kept (\d+) of (\d+), ([\d.]+) tokens per row", text).groups()[:2])
    assert 0 <= kept <= drafted and out["tokens_per_row_step_g8"] >= 1
    from agentflow.nodes import stops

    assert stops.VERIFIER.end is stops.verifier_end  # the rules are back after the stop-rules-off rollout
    return out, text


def test_rollout_benchmark_quick_mode(capsys):
    """No speed is asserted: on a tiny random model speed means nothing (the real run prints it)."""
    out, text = _run_rollout_benchmark(capsys)
    assert out["engine_vs_llama_cpp"] is None and "llama.cpp" not in text
    walls = re.search(r"run walls \[([\d., ]+)\] s, one block before each G=8 repeat", text).group(1)
    assert len(walls.split(",")) == 1  # quick: one peer run


def test_rollout_benchmark_spreads_the_peer_runs_over_the_repeats():
    """The peer's runs go in blocks before the G=8 repeats, as even as the counts allow, so
    a change in the machine's load between phases reaches both sides of the ratio."""
    module = _load_script("rollout_throughput")
    assert module.peer_blocks(3, 3) == [1, 1, 1]
    assert module.peer_blocks(2, 3) == [1, 1, 0]
    assert module.peer_blocks(5, 2) == [3, 2]
    assert module.peer_blocks(1, 1) == [1]


@pytest.mark.skipif(not os.environ.get("AGENTFLOW_LLAMA_SERVER"),
                    reason="needs a llama.cpp llama-server binary in AGENTFLOW_LLAMA_SERVER (built by the user; "
                           "no registry here ships one)")
def test_rollout_benchmark_against_a_real_llama_server(capsys):
    """The batch-5 work also goes to a real llama.cpp server (AGENTFLOW_LLAMA_GGUF, else the Q4_1
    GGUF the embedded model ships as: either has the tiny model's vocabulary), and the printed
    figures are the JSON's."""
    from agentflow.models.loading import _gguf_path

    gguf = os.environ.get("AGENTFLOW_LLAMA_GGUF") or str(_gguf_path())
    out, text = _run_rollout_benchmark(capsys, "--llama-server", os.environ["AGENTFLOW_LLAMA_SERVER"], "--gguf", gguf)
    llama, ratio = map(float, re.search(r"llama.cpp server vs engine, batch 5 .*?: llama.cpp ([\d.]+) tok/s, "
                                        r"engine [\d.]+ tok/s, engine/llama.cpp ([\d.]+)x", text).groups())
    assert llama > 0
    assert out["engine_vs_llama_cpp"] == pytest.approx(ratio, abs=0.0051)
    step = float(re.search(r"llama.cpp single-stream decode ([\d.]+) ms/token", text).group(1))
    assert out["llama_cpp_decode_ms_per_token"] == pytest.approx(step, abs=0.051) and step > 0


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_benchmark_quick_mode(tmp_path, capsys):
    """Every stage of benchmarks/learning.py (evaluate, Flow-GRPO, evaluate, SFT ablation,
    table, plots, JSON) on a random tiny model at tiny sizes."""
    module = _load_script("learning")
    out = module.main(["--quick", "--tiny", "--output", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")])
    for key in ("untrained_acc", "sft_acc", "flowgrpo_acc"):
        assert 0.0 <= out[key] <= 1.0
    assert out["n_test"] == 4 and out["flowgrpo_steps"] == 2
    assert set(out["results"]) == {"untrained", "sft", "flowgrpo"}
    for name in out["plots"]:
        assert (tmp_path / "results" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results" / "learning.json").read_text())
    assert saved["config"]["model"] == "tiny" and saved["n_test"] == 4
    assert [entry["seed"] for entry in saved["seeds"]] == [0] and saved["commits"] == [saved["seeds"][0]["commit"]]
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["n_test"] == 4
    assert any(line.startswith("| accuracy |") for line in lines)
    assert [g["goal"] for g in saved["goals"]][0] == "Flow-GRPO >= +15 points over untrained on every seed"
    assert any(line.startswith("- Flow-GRPO > SFT on every seed: ") for line in lines)


def test_learning_benchmark_seeds_resume_and_merge(tmp_path, capsys):
    """--seeds runs one seed at a time and rewrites learning.json after each, so a second
    invocation keeps the seeds already measured and adds only the missing ones; the
    summary is the mean over seeds with its sd, and other settings are refused."""
    module = _load_script("learning")
    common = ["--quick", "--tiny", "--skip-sft", "--output", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    first = module.main(["--seeds", "1", *common])
    assert [e["seed"] for e in first["seeds"]] == [1]
    capsys.readouterr()

    out = module.main(["--seeds", "1,2", *common])
    printed = capsys.readouterr().out
    assert "seed 1: already in" in printed and "seed 2 untrained" in printed and "seed 1 untrained" not in printed
    assert [e["seed"] for e in out["seeds"]] == [1, 2]
    assert out["seeds"][0] == first["seeds"][0]  # kept as measured, not rerun
    for entry in out["seeds"]:
        for system in ("untrained", "flowgrpo"):
            shares = entry[system]["first_tool_by_type"]
            assert shares and all(sum(tool.values()) == pytest.approx(1.0) for tool in shares.values())
            assert set(entry[system]["accuracy_by_type"]) == set(shares)
    accs = [e["flowgrpo"]["accuracy"] for e in out["seeds"]]
    assert out["flowgrpo_acc"] == pytest.approx(sum(accs) / 2)
    assert out["results"]["flowgrpo"]["accuracy_sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    assert out["results"]["flowgrpo"]["seeds"] == 2 and "sft" not in out["results"]
    assert "learning_tool_choice.png" in out["plots"]
    assert json.loads(printed.strip().splitlines()[-1])["seeds"] == out["seeds"]

    with pytest.raises(SystemExit, match="other settings"):
        module.main(["--seeds", "3", "--n-test", "2", *common])
    assert [e["seed"] for e in json.loads((tmp_path / "results" / "learning.json").read_text())["seeds"]] == [1, 2]


def test_learning_benchmark_resumes_a_seed_after_its_flowgrpo_stage(tmp_path, capsys, monkeypatch):
    """A seed that dies in its SFT stage (as one did, killed for memory) keeps its untrained
    and Flow-GRPO results in a partial file; the rerun trains nothing and finishes the seed."""
    module = _load_script("learning")
    common = ["--quick", "--tiny", "--seeds", "0", "--output", str(tmp_path / "results"),
              "--runs-dir", str(tmp_path / "runs")]

    def killed(*args, **kwargs):
        raise MemoryError("killed in the SFT stage")

    monkeypatch.setattr(module, "collect_successful_turns", killed)
    with pytest.raises(MemoryError):
        module.main(common)
    partial = tmp_path / "results" / "learning.seed0.partial.json"
    saved = json.loads(partial.read_text())["entry"]
    assert {"untrained", "flowgrpo", "run_dir", "train_minutes"} <= set(saved) and "sft" not in saved
    assert not (tmp_path / "results" / "learning.json").exists()
    capsys.readouterr()

    monkeypatch.undo()
    from agentflow.trainer import FlowGRPOTrainer

    monkeypatch.setattr(FlowGRPOTrainer, "train", lambda self: pytest.fail("the resumed seed trained again"))
    out = module.main(common)
    assert "seed 0: resumed after its Flow-GRPO stage" in capsys.readouterr().out
    (entry,) = out["seeds"]
    assert entry["untrained"] == saved["untrained"] and entry["flowgrpo"] == saved["flowgrpo"]
    assert entry["run_dir"] == saved["run_dir"] and "sft" in entry and entry["sft_commit"]
    assert not partial.exists()


def test_learning_benchmark_redoes_the_sft_stage_of_a_measured_seed(tmp_path, capsys, monkeypatch):
    """--redo-sft reruns a measured seed's SFT stage (after a fix to it) and keeps the rest of
    its entry; the other seeds are kept as they are."""
    module = _load_script("learning")
    common = ["--quick", "--tiny", "--output", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    first = module.main([*common, "--seeds", "0,1"])
    capsys.readouterr()
    from agentflow.trainer import FlowGRPOTrainer

    monkeypatch.setattr(FlowGRPOTrainer, "train", lambda self: pytest.fail("--redo-sft trained again"))
    collected = []
    real = module.collect_successful_turns
    monkeypatch.setattr(module, "collect_successful_turns", lambda *a, **k: collected.append(1) or real(*a, **k))
    out = module.main([*common, "--seeds", "0,1", "--redo-sft", "1"])
    assert "seed 1: its SFT stage again" in capsys.readouterr().out and collected == [1]
    (old0, old1), (new0, new1) = first["seeds"], out["seeds"]
    assert new0 == old0
    assert {k: v for k, v in new1.items() if k not in module.SFT_FIELDS} == \
        {k: v for k, v in old1.items() if k not in module.SFT_FIELDS}
    assert "sft" in new1 and new1["sft_commit"]
    with pytest.raises(SystemExit):
        module.main([*common, "--seeds", "0", "--redo-sft", "1"])


def test_learning_benchmark_runs_several_seeds_in_their_own_processes(tmp_path, monkeypatch):
    """Two seeds to measure: each is its own `learning.py --seeds N` process (one seed's memory
    is not all returned before the next); one killed (as for memory, exit 137) ends the run
    with the seed named and the seeds before it kept."""
    import subprocess as sp

    module = _load_script("learning")
    common = ["--quick", "--tiny", "--skip-sft", "--output", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    calls = []
    monkeypatch.setattr(module.subprocess, "run", lambda argv, **kw: calls.append(argv) or sp.CompletedProcess(argv, 137))
    with pytest.raises(SystemExit, match="seed 4: its process ended with exit code 137"):
        module.main(["--seeds", "4,5", *common])
    assert calls[0][1:3] == ["-u", str(SCRIPT.parent / "learning.py")]
    assert calls[0][calls[0].index("--seeds") + 1] == "4" and "--skip-sft" in calls[0]


def test_learning_benchmark_commit_ignores_its_own_results(tmp_path, monkeypatch):
    """A seed records the commit it measured; learning.json and the plots the previous seed
    wrote under benchmarks/results do not make it "-dirty", a change to code does."""
    import subprocess

    module = _load_script("learning")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "learning.json").write_text("{}\n")

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "base")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    clean = module.commit()
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "benchmarks" / "results" / "learning.json").write_text('{"seeds": []}\n')
    assert module.commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert module.commit() == clean + "-dirty"


def test_learning_benchmark_checks_its_goals_per_seed_and_on_the_mean():
    """The result's goals are judged the way the issue states them: the gain on every seed,
    per-type gains and right-first-tool shares on the mean of the seeds, Flow-GRPO above SFT
    on every seed; a goal nothing measured is "not measured", not met."""
    module = _load_script("learning")
    items = [{"type": "lookup", "tool": "local_search"}, {"type": "arithmetic", "tool": "calculator"},
             {"type": "two_step", "tool": "local_search"}, {"type": "two_step", "tool": "calculator"}]
    assert module.right_first_tools(items) == {"arithmetic": "calculator", "lookup": "local_search"}

    def system(acc, lookup, two_step, first_lookup):
        return {"accuracy": acc, "accuracy_by_type": {"lookup": lookup, "two_step": two_step, "arithmetic": 0.5},
                "first_tool_by_type": {"lookup": {"local_search": first_lookup, "calculator": 1 - first_lookup},
                                       "arithmetic": {"calculator": 1.0}}}

    right = {"lookup": "local_search", "arithmetic": "calculator"}
    entries = [
        {"seed": 0, "untrained": system(0.30, 0.2, 0.0, 0.5),
         "flowgrpo": system(0.45, 0.4, 0.05, 0.9), "sft": system(0.40, 0.3, 0.0, 1.0)},  # +15 exactly
        {"seed": 1, "untrained": system(0.28, 0.2, 0.0, 0.5),
         "flowgrpo": system(0.50, 0.3, 0.1, 0.6), "sft": system(0.55, 0.3, 0.0, 1.0)},
    ]
    every, lookup, two_step, right_lookup, right_arithmetic, over_sft = module.goals(entries, right)
    assert every["met"] is True and every["measured"] == {"0": 0.15, "1": 0.22}
    assert lookup["met"] is True and lookup["measured"]["mean"] == pytest.approx(0.15)
    assert two_step["met"] is False and two_step["measured"]["mean"] == pytest.approx(0.075)
    assert "(local_search)" in right_lookup["goal"] and right_lookup["met"] is False
    assert right_lookup["measured"]["mean"] == 0.75 and right_arithmetic["met"] is True
    assert over_sft["goal"] == "Flow-GRPO > SFT on every seed" and over_sft["met"] is False
    assert over_sft["measured"] == {"0": 0.05, "1": -0.05}
    without_sft = [{k: v for k, v in e.items() if k != "sft"} for e in entries]
    assert module.goals(without_sft, right)[-1]["met"] is None
    lines = module.goal_lines(module.goals(entries, right)).splitlines()
    assert lines[0] == "- Flow-GRPO >= +15 points over untrained on every seed: met (seed 0 +15.0 points, seed 1 +22.0 points)"
    assert lines[3].endswith("NOT met (mean 75.0%)")


def test_failures_benchmark_quick_mode(tmp_path, capsys):
    """benchmarks/failures.py runs the system on held-out ToolMix items, writes eval rows the
    report viewer reads, and reading those rows back (--eval-dir) gives the same tables."""
    spec = importlib.util.spec_from_file_location("failures", SCRIPT.parent / "failures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--tiny", "--output", str(tmp_path)])
    (name,) = out
    assert name == "toolmix__untrained__turns2"
    report = out[name]
    assert report["all"]["runs"] == 6 and sum(report[t]["runs"] for t in report if t != "all") == 6
    assert sum(report["all"]["classes"].values()) == report["all"]["failed"]
    rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert all(row["type"] and row["tools_needed"] and isinstance(row["memory"], list) for row in rows)
    assert json.loads((tmp_path / "failures.json").read_text()) == out
    assert "### first tool chosen" in capsys.readouterr().out
    assert module.main(["--eval-dir", str(tmp_path)]) == out


def test_failures_benchmark_reads_a_training_runs_rollouts(tmp_path, capsys):
    """--rollouts classifies the runs a training step logged, restricted to the last steps;
    --checkpoint evaluates the trained planner built as its run was."""
    from trainer_helpers import first_letter_reward, tiny_config

    from agentflow.trainer import build_trainer

    run_dir = build_trainer(tiny_config(tmp_path, max_steps=2), reward_fn=first_letter_reward).train()
    spec = importlib.util.spec_from_file_location("failures", SCRIPT.parent / "failures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--rollouts", str(run_dir), "--last-steps", "1"])
    assert list(out) == ["rollouts steps 2-2"]
    assert out["rollouts steps 2-2"]["all"]["runs"] == 8  # the 8 runs of step 2 only
    assert json.loads((run_dir / "failures.json").read_text()) == out
    trained = module.main(["--quick", "--checkpoint", str(run_dir), "--output", str(tmp_path / "trained")])
    assert trained["toolmix__trained__turns1"]["all"]["runs"] == 6  # built as the run was (tiny model, 1 turn)


def test_parse_rates_benchmark_quick_mode(capsys):
    """benchmarks/parse_rates.py on a random tiny model: its table and its JSON agree, and
    each parse rate is the parsed calls over the calls it recorded (the served systems run
    in tests/test_served.py)."""
    module = _load_script("parse_rates")
    out = module.main(["--n", "2", "--systems", "local", "--quick", "--tiny"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == out
    [local] = out["systems"]
    assert local["n"] == 2 and local["failed_runs"] == 0
    assert local["planner"]["calls"] >= 2  # at least one planner turn per run
    for module_name in ("planner", "executor", "verifier"):
        rates = local[module_name]
        if rates["calls"]:
            assert rates["parse_rate"] == rates["parsed"] / rates["calls"]
    assert local["decode_steps_per_run"] > 0
    assert any(line.startswith("local    float32 ") for line in lines)


def test_parse_rates_benchmark_bf16_modules_keep_the_planner_in_float32(capsys, monkeypatch):
    """--module-dtype bfloat16: the executor, verifier and generator (and the tools' default
    model) decode with a bf16 copy, the planner with float32, as in a Flow-GRPO run."""
    module = _load_script("parse_rates")
    built = {}

    def load_models(specs):
        built.update(real_load_models(specs))
        return built

    real_load_models = module.load_models
    monkeypatch.setattr(module, "load_models", load_models)
    out = module.main(["--n", "1", "--systems", "local", "--quick", "--tiny", "--module-dtype", "bfloat16"])
    dtypes = {role: next(m.engine.model.parameters()).dtype for role, m in built.items()}
    assert dtypes == {"planner": torch.float32, "default": torch.bfloat16, "executor": torch.bfloat16,
                      "verifier": torch.bfloat16, "generator": torch.bfloat16}
    assert out["systems"][0]["module_dtype"] == "bfloat16" and out["systems"][0]["failed_runs"] == 0


def test_update_benchmark_quick_mode(capsys):
    """benchmarks/update_throughput.py runs both sides (our update, TRL's _compute_loss) on a
    tiny random model; the last-line ratio is the ratio of the printed step times and both
    sides computed a finite loss on the same samples. No speed is asserted (tiny model)."""
    spec = importlib.util.spec_from_file_location("update_throughput", SCRIPT.parent / "update_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--tiny"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == out
    assert set(out) == {"update_vs_trl", "ours_tokens_per_s", "trl_tokens_per_s", "update_vs_trl_cpu_time"}
    text = "\n".join(lines)
    ours, trl = map(float, re.search(r"repeat 1/1: ours ([\d.]+)s, TRL ([\d.]+)s", text).groups())
    # one repeat: the ratio is its ratio, within what printing the times to 3 decimals hides
    # (on the tiny model a step takes ~25 ms, so the rounding alone moves the ratio ~2%)
    low, high = (trl - 5e-4) / (ours + 5e-4), (trl + 5e-4) / (ours - 5e-4)
    assert low - 5e-4 <= out["update_vs_trl"] <= high + 5e-4
    loss_ours, loss_trl = map(float, re.search(r"losses: ours (-?[\d.]+), TRL (-?[\d.]+)", text).groups())
    assert loss_ours == pytest.approx(loss_trl, abs=0.01)  # the same objective on the same samples


def test_verifier_probe_quick_mode(capsys, monkeypatch):
    """benchmarks/verifier_probe.py scores the prompt the verifier node really sends (checked
    against a live call of the node), and its counts, log-odds and AUROC agree with each other."""
    from agentflow.factory import TINY_MODEL, ModelSpec, load_chat_model
    from agentflow.models import LocalChatModel
    from agentflow.nodes.modules import make_verifier

    spec = importlib.util.spec_from_file_location("verifier_probe", SCRIPT.parent / "verifier_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.auroc([2.0, 3.0], [1.0]) == 1.0 and module.auroc([1.0], [1.0, 2.0]) == 0.25
    assert module.auroc([], [1.0]) is None

    llm = load_chat_model(ModelSpec(TINY_MODEL, max_new_tokens=2))
    memory = [{"turn": 1, "sub_goal": "Multiply.", "tool_name": "calculator", "command": '{"expression": "2 * 3"}',
               "result": "6", "error": None}]
    sent = []
    encode = LocalChatModel.encode_messages
    monkeypatch.setattr(LocalChatModel, "encode_messages", lambda self, m: sent.append(encode(self, m)) or sent[-1])
    make_verifier(llm)({"query": "What is 2 * 3?", "memory": memory}, {})
    assert sent[0][0] == module.verifier_prompt_ids(llm, "What is 2 * 3?", memory)

    out = module.main(["--quick", "--tiny"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["rows"] == 6 and 0 <= out["agrees_with_oracle"] <= 6 and 0 <= out["prefers_stop"] <= 6
    assert out["auroc"] is None or 0.0 <= out["auroc"] <= 1.0
