"""Per-step metrics: a JSONL file in the run directory (the source of truth), an optional
TensorBoard mirror, and `plot_run` to render training curves as PNG files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Appends one JSON object per step to `<run_dir>/metrics.jsonl`.

    Append mode plus `truncate_after(step)` on resume is what makes a resumed run
    continue the same file: lines logged after the checkpoint being resumed from (a
    run killed between a log and its next save) are dropped, so no step appears twice.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = _tensorboard_writer(Path(run_dir) / "tensorboard") if tensorboard else None

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in read_metrics(self.path.parent) if line.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(record)) + "\n")
            f.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(path: Path):
    try:
        import tensorboard  # noqa: F401 - SummaryWriter imports but fails later without it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: store them as null (a skipped update's loss is NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_PANELS: dict[str, tuple[str, list[str]]] = {
    "reward": ("Mean reward", ["reward_mean"]),
    "accuracy": ("Accuracy", ["accuracy", "eval_accuracy"]),
    "tool_error_rate": ("Tool-call error rate (tool_errors / turns)", ["tool_error_rate"]),
    "kl": ("KL to reference (k3)", ["kl"]),
}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Render reward, accuracy, tool-call error rate, KL and tool usage curves to PNGs.

    Returns the written files (`<run_dir>/plots/*.png`); a metric never logged is skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    panels = dict(_PANELS)
    usage = sorted({k for r in records for k in r if k.startswith("tool_usage/")})
    if usage:
        panels["tool_usage"] = ("Tool usage (share of calls)", usage)
    for name, (title, keys) in panels.items():
        series = {k: [(r["step"], r[k]) for r in records if r.get(k) is not None] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, points in series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, label=key.removeprefix("tool_usage/"))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
