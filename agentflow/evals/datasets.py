"""Load benchmarks as Hugging Face `datasets.Dataset`s with uniform fields.

Sources: the shipped JSON files (`<benchmarks_dir>/<name>.json`), the generated ToolMix
suite, any user `.json`/`.jsonl` file, and the Hub for GAIA and GPQA (gated or not
redistributable in plain text, so never shipped). Every row gets `query` (str),
`answer` (str) and `pid` (str) next to its original fields (options, question, ...).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from datasets import Dataset

from agentflow.evals.toolmix import make_toolmix
from agentflow.prompts import ANSWER_INSTRUCTION

SHIPPED_BENCHMARKS: tuple[str, ...] = (
    "bamboogle", "2wiki", "hotpotqa", "musique", "aime24", "amc23", "gameof24", "medqa",
)
# name -> (Hub id, config, split holding public answers)
HUB_BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "gaia": ("gaia-benchmark/GAIA", "2023_all", "validation"),
    "gpqa": ("Idavidrein/gpqa", "gpqa_diamond", "train"),
}
BENCHMARKS: tuple[str, ...] = (*SHIPPED_BENCHMARKS, *HUB_BENCHMARKS, "toolmix")

BENCHMARKS_DIR_ENV = "AGENTFLOW_BENCHMARKS_DIR"


def benchmarks_dir() -> Path:
    """`$AGENTFLOW_BENCHMARKS_DIR`, else `shared/benchmarks` beside the repository checkout."""
    override = os.environ.get(BENCHMARKS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"


def with_answer_instruction(query: str) -> str:
    """`query` ending with ANSWER_INSTRUCTION, added only where missing.

    Only three shipped sets carry it; applying this to every query gives all benchmarks
    the same answer contract (the generator's last `<answer>` tag is what gets scored).
    """
    if ANSWER_INSTRUCTION in query:
        return query
    return f"{query.rstrip()} {ANSWER_INSTRUCTION}"


def load_benchmark(name_or_path: str, split: str = "test", limit: int | None = None) -> Dataset:
    """A benchmark by name (see BENCHMARKS) or a `.json`/`.jsonl` file path.

    `split` matters for ToolMix ("train"/"test"); the shipped files are test sets and
    the Hub sets use their one split with public answers. `limit` keeps the first rows.
    Queries are returned as shipped; use `with_answer_instruction` to add the answer
    format instruction.
    """
    if name_or_path == "toolmix":
        if split not in ("train", "test"):
            raise ValueError(f"toolmix has splits 'train' and 'test', not {split!r}")
        suite = make_toolmix()
        records, source = (suite.train if split == "train" else suite.test), "toolmix"
    elif name_or_path in HUB_BENCHMARKS:
        records, source = _hub_records(name_or_path), HUB_BENCHMARKS[name_or_path][0]
    elif name_or_path in SHIPPED_BENCHMARKS:
        if split != "test":
            raise ValueError(f"{name_or_path} ships only a 'test' split, not {split!r}")
        path = benchmarks_dir() / f"{name_or_path}.json"
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} not found; set ${BENCHMARKS_DIR_ENV} to its folder")
        records, source = _read_records(path), str(path)
    elif name_or_path.endswith((".json", ".jsonl")):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} not found")
        records, source = _read_records(path), str(path)
    else:
        raise ValueError(
            f"unknown benchmark {name_or_path!r}; known: {', '.join(BENCHMARKS)} (or a .json/.jsonl path)"
        )
    if limit is not None:
        records = records[:limit]
    return _to_dataset([_normalise(r, i, source) for i, r in enumerate(records)], source)


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON array file or a JSON-lines file, with the failing line named.

    Read with `json` rather than `datasets.load_dataset("json")`, which infers one Arrow
    type per column from the raw values and fails on columns whose type varies by row
    (an `answer` int in one record and str in another); `_to_dataset` handles those.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"malformed JSON in {path}: line {e.lineno}, column {e.colno}: {e.msg}") from e
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"malformed JSON in {path}: line {lineno}: {e.msg}") from e
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON array of records or one JSON object per line")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is a {type(record).__name__}, not a JSON object")
    return records


def _answer_text(answer: Any) -> str:
    """A str gold. Lists become their Python literal ("['james madison']", the published
    format), which the scorer parses back into aliases; numbers their decimal text."""
    return answer if isinstance(answer, str) else str(answer)


def _normalise(record: dict[str, Any], index: int, source: str) -> dict[str, Any]:
    """Add `query`/`answer`/`pid` as str; a record without `query` may use `question`."""
    row = dict(record)
    query = row.get("query", row.get("question"))
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{source}: record {index} has no 'query' (or 'question') text")
    if row.get("answer") is None:
        raise ValueError(f"{source}: record {index} has no 'answer' field")
    row["query"] = query
    row["answer"] = _answer_text(row["answer"])
    row["pid"] = str(row.get("pid", index))
    return row


def _to_dataset(rows: list[dict[str, Any]], source: str) -> Dataset:
    """Rows -> Dataset, fixing what Arrow cannot store.

    - Duplicate pids (medqa ships pids 0..99 then 0..199) would merge results of
      different questions; such files get the row index as `pid`, the original in `source_pid`.
    - Arrow needs one type per column: a column mixing types (other than int/float) is
      stored as text, JSON-encoded for non-strings, so nothing is lost.
    - `Dataset.from_list` only keeps the first row's keys; the union is filled with None.
    """
    pids = [row["pid"] for row in rows]
    if len(set(pids)) != len(pids):
        for index, row in enumerate(rows):
            row["source_pid"], row["pid"] = row["pid"], str(index)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    for key in keys:
        types = {type(row.get(key)) for row in rows} - {type(None)}
        if len(types) > 1 and not types <= {int, float}:
            for row in rows:
                value = row.get(key)
                if value is not None and not isinstance(value, str):
                    row[key] = json.dumps(value, ensure_ascii=False)
    try:
        return Dataset.from_list([{key: row.get(key) for key in keys} for row in rows])
    except Exception as e:  # pyarrow raises several error types for unstorable values
        raise ValueError(f"{source}: records cannot be stored as a dataset: {e}") from e


def _hub_records(name: str) -> list[dict[str, Any]]:
    """GAIA / GPQA from the Hub (needs network and, for GAIA, accepted terms and a token)."""
    from datasets import load_dataset

    repo, config, split = HUB_BENCHMARKS[name]
    rows = load_dataset(repo, config, split=split)
    if name == "gaia":
        return [gaia_record(row) for row in rows if not row.get("file_name")]
    return [gpqa_record(row, index) for index, row in enumerate(rows)]


def gaia_record(row: dict[str, Any]) -> dict[str, Any]:
    """A GAIA row as a QA item. Only text-only tasks are kept (no attached file), as
    attachments need file tools the agent does not have."""
    return {
        "pid": row["task_id"],
        "query": row["Question"],
        "answer": row["Final answer"],
        "level": str(row.get("Level", "")),
    }


def gpqa_record(row: dict[str, Any], index: int) -> dict[str, Any]:
    """A GPQA row as a medqa-style multiple-choice item.

    The Hub rows list the correct answer first; options are shuffled with a seed derived
    from the row index, so the letter carries no signal and the order is reproducible.
    """
    correct = row["Correct Answer"].strip()
    choices = [correct] + [row[f"Incorrect Answer {k}"].strip() for k in (1, 2, 3)]
    random.Random(index).shuffle(choices)
    options = [f"{chr(ord('A') + k)}. {text}" for k, text in enumerate(choices)]
    return {
        "pid": row.get("Record ID", str(index)),
        "query": row["Question"].strip() + "\n" + "\n".join(options) + "\nChoose the correct option.",
        "options": options,
        "answer": correct,
    }
