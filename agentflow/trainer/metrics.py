"""Per-step metrics: a JSONL file in the run directory (the source of truth: plots and
benchmarks read it), mirrored to accelerate's experiment trackers (TensorBoard, W&B,
MLflow, trackio, ...) when the config asks for them, and `plot_run` to render training
curves as PNG files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

METRICS_FILE = "metrics.jsonl"
TRACKERS_DIR = "trackers"  # under the run directory: where file-based trackers (TensorBoard) write


class MetricsLogger:
    """Appends one JSON object per step to `<run_dir>/metrics.jsonl` and sends its numbers
    to the named accelerate trackers.

    Append mode plus `truncate_after(step)` on resume is what makes a resumed run
    continue the same file: lines logged after the checkpoint being resumed from (a
    run killed between a log and its next save) are dropped, so no step appears twice.

    The trackers are built here, as `Accelerator.init_trackers` builds them, rather than
    through the trainer's `Accelerator(log_with=...)`: that Accelerator exists before the
    run directory they write into does (the run name is broadcast through it), and
    `Accelerator.end_training` would also tear down the process group.
    """

    def __init__(self, run_dir: Path, trackers: Sequence[str] = (), config: dict[str, Any] | None = None) -> None:
        run_dir = Path(run_dir)
        self.path = run_dir / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.trackers = [_start_tracker(name, run_dir, config or {}) for name in trackers]

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
        if self.trackers:
            numbers = {k: v for k, v in record.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            for tracker in self.trackers:
                tracker.log(numbers, step=record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _start_tracker(name: str, run_dir: Path, config: dict[str, Any]) -> GeneralTracker:
    """accelerate's tracker `name` for this run, started, with the run's config as its
    hyper-parameters (lists joined: TensorBoard's hparams take scalars only)."""
    tracker_class = LOGGER_TYPE_TO_CLASS[name]
    if tracker_class.requires_logging_directory:
        tracker = tracker_class(run_dir.name, run_dir / TRACKERS_DIR)
    else:
        tracker = tracker_class(run_dir.name)
    tracker.start()
    tracker.store_init_configuration(
        {k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in config.items()}
    )
    return tracker


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
    "tool_error_rate": ("Tool-call error rate (failed tool calls / tool calls)", ["tool_error_rate"]),
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
