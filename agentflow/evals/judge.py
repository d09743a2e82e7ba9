"""LLM-judge verdicts, paid for once per (judge, question, gold, prediction).

A judge call is the one model call of an eval that costs money on an API model, and the
same answer comes back often: a turn-budget sweep whose budgets end alike, a rerun after a
crash, an item retried on resume. `JudgeCache` keeps every verdict in
`<output>/judge_cache.jsonl` (one JSON object a line, appended as verdicts arrive, so an
interrupted eval keeps what it paid for) and asks the judge only for what it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from agentflow.evals.jsonl import read_jsonl
from agentflow.evals.scoring import judge_score

JUDGE_CACHE_FILE = "judge_cache.jsonl"


class JudgeCache:
    """`judge_score` with memory: call it like the function, minus the model."""

    def __init__(self, path: Path, judge: BaseChatModel, judge_label: str) -> None:
        self.path, self.judge, self.judge_label = Path(path), judge, judge_label
        self._lock = threading.Lock()  # eval items are judged from concurrent threads
        self._verdicts = {row["key"]: float(row["verdict"]) for row in read_jsonl(self.path)} if self.path.is_file() else {}
        self.calls = 0  # judge calls made by this instance (the rest came from the file)

    def _key(self, question: str, prediction: str, gold: str) -> str:
        text = json.dumps([self.judge_label, question, gold, prediction], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __call__(self, question: str, prediction: str, gold: str) -> float:
        key = self._key(question, prediction, gold)
        with self._lock:
            if key in self._verdicts:
                return self._verdicts[key]
        verdict = judge_score(self.judge, question, prediction, gold)  # errors propagate: not a verdict
        with self._lock:
            self.calls += 1
            self._verdicts[key] = verdict
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "judge": self.judge_label, "verdict": verdict}) + "\n")
        return verdict
