"""Does the verifier read the result? Its STOP-vs-CONTINUE preference against an oracle.

    python benchmarks/verifier_probe.py                   # the committed untrained failure rows
    python benchmarks/verifier_probe.py --rows DIR/toolmix__trained__turns2.jsonl
    python benchmarks/verifier_probe.py --quick --tiny    # seconds, random tiny model (the test)

For every eval row written by `benchmarks/failures.py` with at least one step, the verifier's
prompt after the first step is rebuilt exactly as the verifier node builds it (system prompt,
question, memory of that one step, the reply started with "Conclusion:") and the model's
log-probability of each verdict as the reply's continuation is computed in one forward pass
each. The oracle says STOP when the first step's result states the gold answer
(`agentflow.evals.failures.contains_gold`). Reported: how often the model's preferred verdict
agrees with the oracle, the mean log-odds log P(STOP) - log P(CONTINUE) for the two oracle
classes, and their AUROC (the chance that a should-stop prompt gets higher STOP log-odds than a
should-continue one: 0.5 means the verdict carries no information about the result, whatever
its bias). Prompt wording moves the bias; only a model that reads the result moves the AUROC.
Written to benchmarks/results/verifier_probe.json; the last line is the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402

from agentflow import prompts  # noqa: E402
from agentflow.evals.failures import contains_gold  # noqa: E402
from agentflow.evals.viewer import read_jsonl  # noqa: E402
from agentflow.factory import TINY_MODEL, ModelSpec, load_chat_model  # noqa: E402
from agentflow.models import LocalChatModel, fast_dtype  # noqa: E402
from agentflow.nodes.modules import verifier_user  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = ROOT / "benchmarks" / "results" / "failures" / "toolmix__untrained__turns2.jsonl"
VERDICTS = (" STOP", " CONTINUE")


def verifier_prompt_ids(llm: LocalChatModel, query: str, memory: list[dict[str, Any]]) -> list[int]:
    """The token ids the verifier node sends a local model, its reply started (the test
    checks them against a live verifier call)."""
    ids, _ = llm.encode_messages([SystemMessage(prompts.VERIFIER_SYSTEM), HumanMessage(verifier_user(query, memory)),
                                  AIMessage(prompts.VERIFIER_PREFIX)])
    return ids


def verdict_log_odds(llm: LocalChatModel, query: str, memory: list[dict[str, Any]]) -> float:
    """log P(" STOP") - log P(" CONTINUE") as the continuation of the verifier's started reply."""
    ids = verifier_prompt_ids(llm, query, memory)
    model = llm.engine.model
    logps = []
    for verdict in VERDICTS:
        cont = llm.tokenizer.encode(verdict, add_special_tokens=False)
        with torch.inference_mode():
            logits = model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1].float()
        logps.append(logits.log_softmax(-1).gather(1, torch.tensor(cont)[:, None]).sum().item())
    return logps[0] - logps[1]


def auroc(positive: list[float], negative: list[float]) -> float | None:
    """P(a positive scores above a negative), ties count half (the Mann-Whitney statistic)."""
    if not positive or not negative:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=str(DEFAULT_ROWS), help="eval rows written by benchmarks/failures.py")
    p.add_argument("--model", default="smollm2-135m-instruct", help="the verifier's model")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "verifier_probe.json"),
                   help="where the JSON goes (not written with --quick)")
    p.add_argument("--quick", action="store_true", help="the first 6 rows only")
    p.add_argument("--tiny", action="store_true", help="a random tiny model instead of SmolLM2-135M")
    args = p.parse_args(argv)

    rows = [row for row in read_jsonl(Path(args.rows)) if row.get("memory")]
    if args.quick:
        rows = rows[:6]
    if not rows:
        raise SystemExit(f"{args.rows}: no rows with a step in memory")
    # the dtype the trainer's frozen modules decode in (benchmarks/learning.py's verifier)
    dtype = str(fast_dtype()).removeprefix("torch.")
    llm = load_chat_model(ModelSpec(TINY_MODEL if args.tiny else args.model, dtype=dtype))
    scored = []
    for row in rows:
        first = row["memory"][:1]
        oracle_stop = contains_gold(first[0].get("result") or "", row["gold"])
        scored.append((oracle_stop, verdict_log_odds(llm, row["query"], first)))

    stop = [x for o, x in scored if o]
    cont = [x for o, x in scored if not o]
    result = {
        "rows": len(scored),
        "oracle_stop": len(stop),
        "prefers_stop": sum(x > 0 for _, x in scored),
        "agrees_with_oracle": sum((x > 0) == o for o, x in scored),
        "mean_log_odds_oracle_stop": round(statistics.fmean(stop), 3) if stop else None,
        "mean_log_odds_oracle_continue": round(statistics.fmean(cont), 3) if cont else None,
        "auroc": None if (a := auroc(stop, cont)) is None else round(a, 3),
    }
    print(f"{result['rows']} first steps from {args.rows}; the oracle says STOP for {result['oracle_stop']}")
    print(f"verifier prefers STOP for {result['prefers_stop']}, agrees with the oracle on {result['agrees_with_oracle']}")
    print(f"mean log P(STOP) - log P(CONTINUE): oracle STOP {result['mean_log_odds_oracle_stop']}, "
          f"oracle CONTINUE {result['mean_log_odds_oracle_continue']}; AUROC {result['auroc']} (0.5 = no information)")
    if not args.quick:
        Path(args.output).write_text(json.dumps({"rows_file": os.path.relpath(args.rows, ROOT),
                                                 **result}, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
