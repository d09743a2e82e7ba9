"""The rollout benchmark's quick mode runs end to end on a tiny model (so the script cannot rot)."""

from __future__ import annotations

import importlib.util
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
