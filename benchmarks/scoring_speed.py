"""How fast the deterministic parts of an eval are: ToolMix generation and math scoring.

    python benchmarks/scoring_speed.py

An eval or a Flow-GRPO step scores every run and a training config regenerates ToolMix at
start, so neither may cost more than a model call. Prints figures; not a timed test.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentflow.evals import make_toolmix, score  # noqa: E402

PREDICTIONS = ["33", "<answer>34</answer>", r"\boxed{\frac{66}{2}}", "garbage " * 200, "x" * 5000]


def timed(fn, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls."""
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def main() -> dict:
    score("amc23", r"\frac{1}{2}", {"answer": "0.5"})  # imports sympy / math_verify once
    toolmix_s = timed(lambda: make_toolmix(seed=0, n_train=1000, n_test=200))
    per_kind = {
        label: timed(lambda p=p: score("aime24", p, {"answer": 33})) * 1e3
        for label, p in zip(["plain", "tagged", "boxed", "garbage x200", "5000 chars"], PREDICTIONS)
    }
    print(f"ToolMix 1000 train + 200 test items: {toolmix_s * 1e3:.0f} ms")
    for label, ms in per_kind.items():
        print(f"math score, {label} prediction: {ms:.2f} ms")
    out = {"toolmix_1200_ms": round(toolmix_s * 1e3, 1), "math_score_max_ms": round(max(per_kind.values()), 2)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
