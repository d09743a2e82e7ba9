"""The rollout benchmark's quick mode runs end to end on a tiny model (so the script cannot rot)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_throughput.py"


def test_rollout_benchmark_quick_mode(capsys):
    spec = importlib.util.spec_from_file_location("rollout_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    t = time.perf_counter()
    out = module.main(["--quick", "--tiny", "--max-new-tokens", "4"])
    assert time.perf_counter() - t < 60
    assert set(out) == {"speedup_vs_peer", "speedup_vs_peer_32", "engine_vs_raw", "peak_rss_mb"}
    assert out["speedup_vs_peer"] > 0 and out["engine_vs_raw"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")


def test_learning_benchmark_quick_mode(tmp_path, capsys):
    """Every stage of benchmarks/learning.py (evaluate, Flow-GRPO, evaluate, SFT ablation,
    table, plots, JSON) on a random tiny model at tiny sizes."""
    spec = importlib.util.spec_from_file_location("learning", SCRIPT.parent / "learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--tiny", "--output", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")])
    for key in ("untrained_acc", "sft_acc", "flowgrpo_acc"):
        assert 0.0 <= out[key] <= 1.0
    assert out["n_test"] == 4 and out["flowgrpo_steps"] == 2
    assert set(out["results"]) == {"untrained", "sft", "flowgrpo"}
    for name in out["plots"]:
        assert (tmp_path / "results" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results" / "learning.json").read_text())
    assert saved["config"]["model"] == "tiny" and saved["n_test"] == 4
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["n_test"] == 4
    assert any(line.startswith("| accuracy |") for line in lines)
