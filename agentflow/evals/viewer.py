"""One self-contained HTML page per eval or training run: see what the agent did, item by item.

`write_html_report([run_dir])` (and `agentflow view RUN_DIR [OTHER_RUN_DIR]`) reads what
the eval harness and the trainer wrote and writes `RUN_DIR/report.html`:

- an eval output folder: every `<run>.jsonl` (one row per item; `<run>` names the
  benchmark, system and turn budget, read from the `<run>.summary.json` beside it, else
  from the file name) and its PNG plots;
- a training run directory: `metrics.jsonl` (the curves are drawn from it in the page)
  and, when present, `rollouts.jsonl` (one graph run per line: step, query, gold,
  reward, answer, turns), whose trajectories can be browsed step by step.

Why one static file: it opens anywhere (a laptop, a CI artefact, an e-mail) without a
server or network, so the page carries its own CSS/JS (the template `viewer.html`) and
embeds the plots as data URIs and the items as one JSON document, rendered lazily by
the page (cards in chunks as you scroll, an item's turns only when expanded) so runs of
thousands of items still open in about a second.

Model output, tool results and queries are untrusted text: the page builds its DOM with
`textContent` only, and the JSON is embedded with every `<` written as `\\u003c`, so no
string can close the `<script>` element that holds it (see `embed_json`).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from agentflow.evals.jsonl import read_jsonl

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
TEMPLATE = "viewer.html"
DATA_SLOT = "__AGENTFLOW_REPORT_DATA__"
# One tool result can be a whole web page; cut each text so that a run of thousands of
# items stays a page a browser opens quickly (the .jsonl keeps the full text).
MAX_TEXT = 20_000
# `<benchmark>__<system>__turns<N>` (the harness's run name) or `<benchmark>-<system>-T<N>`.
_RUN_NAMES = (
    re.compile(r"^(?P<benchmark>.+)__(?P<system>[^_]+)__turns(?P<turns>\d+)$"),
    re.compile(r"^(?P<benchmark>.+)-(?P<system>[^-]+)-T(?P<turns>\d+)$"),
)


# --------------------------------------------------------------------------- reading runs


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text`, cut to `limit` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [{len(text) - limit} more characters in the .jsonl]"


def as_text(value: Any) -> str:
    """A field as display text: strings as they are, None as "", anything else as JSON (gold aliases)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return clip(text)


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def parse_run_name(stem: str) -> tuple[str, str, int | None]:
    """(benchmark, system, max_turns) from a results file's stem; unknown parts as the stem, "?" and None."""
    for pattern in _RUN_NAMES:
        match = pattern.match(stem)
        if match:
            return match["benchmark"], match["system"], int(match["turns"])
    return stem, "?", None


def normalize_turn(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    """One memory record (eval rows: `tool_name`; rollouts: `tool`, and a per-turn verdict)."""
    return {
        "turn": record.get("turn", index + 1),
        "sub_goal": as_text(record.get("sub_goal")),
        "tool": as_text(record.get("tool_name", record.get("tool"))),
        "command": as_text(record.get("command")),
        "result": as_text(record.get("result")),
        "error": as_text(record.get("error")) or None,
        "verdict": as_text(record.get("verdict")) or None,
    }


def _item(row: Mapping[str, Any], variant: int, benchmark: str, memory_key: str) -> dict[str, Any]:
    """The fields the page shows for one graph run, whatever file it came from."""
    raw_memory = row.get(memory_key)
    memory = [normalize_turn(r, i) for i, r in enumerate(raw_memory)] if isinstance(raw_memory, list) else []
    tools = row.get("tool_calls")
    tools = [as_text(t) for t in tools] if isinstance(tools, list) else [t["tool"] or "(none)" for t in memory]
    turns = row.get("turns")
    n_turns = turns if isinstance(turns, int) else int(row.get("n_turns") or len(memory))
    tool_errors = row.get("tool_errors")
    return {
        "v": variant,
        "benchmark": benchmark,
        "pid": as_text(row.get("pid", row.get("id", ""))),
        "query": as_text(row.get("query", row.get("question"))),
        "gold": as_text(row.get("gold")),
        "prediction": as_text(row.get("prediction", row.get("response"))),
        "answer": as_text(row.get("answer")),
        "score": _number(row.get("score", row.get("reward"))),
        "latency_s": _number(row.get("latency_s")),
        "turns": n_turns,
        "verdict": as_text(row.get("verdict")) or None,
        "memory": memory,
        "tools": tools,
        "tool_errors": int(tool_errors) if isinstance(tool_errors, (int, float)) else sum(t["error"] is not None for t in memory),
        "error": as_text(row.get("error")) or None,
        "traceback": as_text(row.get("traceback")) or None,
    }


def _eval_files(run_dir: Path) -> list[Path]:
    return [p for p in sorted(run_dir.glob("*.jsonl")) if p.name not in (METRICS_FILE, ROLLOUTS_FILE)]


def _summary(path: Path) -> dict[str, Any]:
    summary_path = path.with_name(f"{path.stem}.summary.json")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _png(path: Path) -> dict[str, str]:
    return {"name": path.name, "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")}


class _Collector:
    """Gathers runs, variants and items over one or more run directories.

    A variant is one system at one turn budget in one run directory (the rows of one
    "system" across benchmarks); two variants holding the same (benchmark, pid) are what
    the page puts side by side.
    """

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.variants: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self._variant_ids: dict[tuple[int, str, int | None, str], int] = {}

    def variant(self, run: int, system: str, max_turns: int | None, kind: str, config: Any = None) -> int:
        key = (run, system, max_turns, kind)
        if key not in self._variant_ids:
            self._variant_ids[key] = len(self.variants)
            self.variants.append({"run": run, "system": system, "max_turns": max_turns, "kind": kind,
                                  "config": config if isinstance(config, dict) else None})
        return self._variant_ids[key]

    def add_run(self, run_dir: Path, label: str) -> None:
        run = len(self.runs)
        metrics_path, rollouts_path = run_dir / METRICS_FILE, run_dir / ROLLOUTS_FILE
        config_path = run_dir / "config.yaml"
        entry: dict[str, Any] = {
            "label": label,
            "path": str(run_dir.resolve()),
            "metrics": read_jsonl(metrics_path) if metrics_path.is_file() else [],
            "config_text": clip(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None,
            "plots": [_png(p) for p in sorted(run_dir.glob("*.png"))],
        }
        self.runs.append(entry)
        for path in _eval_files(run_dir):
            summary = _summary(path)
            benchmark, system, max_turns = parse_run_name(path.stem)
            benchmark = str(summary.get("benchmark", benchmark))
            system = str(summary.get("system", system))
            max_turns = summary.get("max_turns", max_turns)
            variant = self.variant(run, system, max_turns, "eval", summary.get("config"))
            latest: dict[str, dict[str, Any]] = {}  # a resumed run appends a retried item again: the last row wins
            for row in read_jsonl(path):
                latest[str(row.get("pid", row.get("id", len(latest))))] = row
            self.items += [_item(row, variant, benchmark, "memory") for row in latest.values()]
        if rollouts_path.is_file():
            variant = self.variant(run, "rollouts", None, "rollouts")
            for index, row in enumerate(read_jsonl(rollouts_path)):
                item = _item(row, variant, as_text(row.get("benchmark")) or "rollouts", "turns")
                item["pid"] = item["pid"] or as_text(row.get("query_index", index))
                step = row.get("step")
                item["step"] = int(step) if isinstance(step, (int, float)) else None
                self.items.append(item)
        if not entry["metrics"] and not entry["plots"] and not any(v["run"] == run for v in self.variants):
            raise ValueError(
                f"{run_dir}: nothing to show (no eval .jsonl rows, {METRICS_FILE}, {ROLLOUTS_FILE} or plots)"
            )


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names, with their parent where two runs share a name (runs/a/eval vs runs/b/eval)."""
    names = [p.resolve().name or str(p) for p in run_dirs]
    return [
        f"{p.resolve().parent.name}/{name}" if names.count(name) > 1 else name
        for p, name in zip(run_dirs, names)
    ]


def collect(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """The page's data: runs (metrics, plots, config), variants and items of every run dir.

    Raises FileNotFoundError for a missing folder and ValueError for one with nothing to show.
    """
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("no run directory given")
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a directory")
    collector = _Collector()
    labels = _labels(paths)
    for path, label in zip(paths, labels):
        collector.add_run(path, label)
    return {
        "title": "AgentFlow report: " + " vs ".join(labels),
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": collector.runs,
        "variants": collector.variants,
        "items": collector.items,
    }


# --------------------------------------------------------------------------- writing the page


def embed_json(data: Any) -> str:
    """`data` as JSON that can sit inside a `<script>` element of an HTML page.

    The HTML parser ends a script element at the first `</script` and treats `<!--`
    specially inside it, whatever the script's type; JSON never needs a raw `<` outside
    strings, so writing every `<` as the JSON escape `\\u003c` rules out both without
    changing the parsed value.
    """
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str).replace("<", "\\u003c")


def template() -> str:
    """The page's HTML/CSS/JS, shipped as package data beside this module."""
    return resources.files("agentflow.evals").joinpath(TEMPLATE).read_text(encoding="utf-8")


def render_html(data: Mapping[str, Any]) -> str:
    """The whole page: the template with `data` embedded in its one data slot."""
    page = template()
    if page.count(DATA_SLOT) != 1:
        raise RuntimeError(f"{TEMPLATE} must hold exactly one {DATA_SLOT}")
    return page.replace(DATA_SLOT, embed_json(data))


def write_html_report(run_dirs: Iterable[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of `run_dirs` (one run, or two to compare) and return its path.

    `out` defaults to `<first run dir>/report.html`. Raises FileNotFoundError/ValueError
    as `collect` does.
    """
    dirs = [Path(p) for p in run_dirs]
    data = collect(dirs)
    path = Path(out) if out is not None else dirs[0] / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(data), encoding="utf-8")
    tmp.replace(path)  # a page open in a browser never sees a half-written file
    return path
