"""Does each module's reply parse when the model serves it? Local (reply started) vs served.

    python benchmarks/parse_rates.py                       # 50 held-out ToolMix items, three systems
    python benchmarks/parse_rates.py --systems local --no-stop-rules   # the local system before the stop rules
    python benchmarks/parse_rates.py --n 4 --systems local,served      # a quick look
    python benchmarks/parse_rates.py --n 1 --systems local --quick --tiny   # seconds, random tiny model (the test)
    python benchmarks/parse_rates.py --n 100 --systems local --module-dtype bfloat16   # bf16 frozen modules

The embedded SmolLM2-135M-Instruct runs every module, built as benchmarks/failures.py
builds it (examples/learning_toolmix.yaml: calculator and local_search, 2 turns, planner
replies up to 32 tokens, the other modules' up to 48), greedily, on the first N items of
ToolMix's held-out split. Three systems, same model, same items:

* `local`: all four modules in this process; their replies are started for them
  (`Sub-Goal:`, `{"arg": "`, `Conclusion:`) and stop by the modules' stop rules.
* `served`: all four modules served by a real `transformers serve` of the same model
  folder, which this script starts on 127.0.0.1 (one thread, as tests/served.py); served
  chat APIs cannot continue a started reply, so the modules get worked exchanges, a format
  reminder and the stop strings instead (docs/design.md §1).
* `mixed`: the planner local, the executor, verifier and generator served: the layout of a
  Flow-GRPO run with served frozen modules.

A module's parse rate is the share of its calls whose reply (cut by its stop rule, as the
node cuts it) the node's parser accepts: the planner's gives a sub-goal and a known tool,
the executor's arguments the tool's schema accepts, the verifier's a `Conclusion: STOP|
CONTINUE`. Also per system: ToolMix accuracy, wall time, completion tokens per run and,
for local models, the engine's decode steps per run. `--no-stop-rules` runs with no stop
strings and no end predicates for the planner, executor and verifier (the generator keeps
its blank-line stop), which is how these modules ran before the stop rules.
`--module-dtype bfloat16` gives the local executor, verifier and generator a bf16 copy of
the model, as a Flow-GRPO run does where bf16 is fast (`frozen_dtype: auto`); the planner
stays in float32, the precision it is trained in. Against the default (float32 everywhere)
on the same items it says what the bf16 frozen modules cost in parse rates and accuracy.

Prints a table; the last line is JSON (also written to --output).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage  # noqa: E402
from langchain_core.outputs import LLMResult  # noqa: E402

from agentflow.evals.datasets import load_benchmark, with_answer_instruction  # noqa: E402
from agentflow.evals.scoring import score  # noqa: E402
from agentflow.evals.toolmix import make_toolmix  # noqa: E402
from agentflow.factory import ModelSpec, ToolSpec, agentflow_graph, load_models  # noqa: E402
from agentflow.models import LocalChatModel, resolve_model_path  # noqa: E402
from agentflow.nodes import stops  # noqa: E402
from agentflow.nodes.parsing import parse_planner, parse_tool_arguments, parse_verifier  # noqa: E402
from agentflow.trainer import FlowGRPOConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "learning_toolmix.yaml"
PARSED = ("planner", "executor", "verifier")
SYSTEMS = {  # system -> the roles that are served
    "local": (),
    "served": ("planner", "executor", "verifier", "generator"),
    "mixed": ("executor", "verifier", "generator"),
}


class ReplyRecorder(BaseCallbackHandler):
    """Every chat-model call of a graph run: its node, its started prefix (a trailing AI
    message), its reply and completion tokens; the tool an executor call wrote for."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._open: dict[UUID, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        chat = messages[0]
        # a served call ends with the user turn; a local one may end with the started reply
        prefix = str(chat[-1].content) if isinstance(chat[-1], AIMessage) else ""
        tool = re.search(r"^Tool: (\S+)", str(chat[0].content), re.M)
        with self._lock:
            self._open[run_id] = {"node": (metadata or {}).get("langgraph_node"), "prefix": prefix,
                                  "tool": tool.group(1) if tool else None}

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._open.pop(run_id, None)
        if call is None:
            return
        message = response.generations[0][0].message
        call["reply"] = call["prefix"] + str(message.content)
        call["tokens"] = (message.usage_metadata or {}).get("output_tokens", 0)
        with self._lock:
            self.calls.append(call)


def parsed(call: dict[str, Any], tools: dict[str, Any], rules: dict[str, stops.StopRule], local: bool) -> bool:
    """Whether the node's parser accepts the reply, cut as the node cuts it."""
    reply = rules[call["node"]].cut(call["reply"], local)
    if call["node"] == "planner":
        return parse_planner(reply, list(tools)).error is None
    if call["node"] == "executor":
        return parse_tool_arguments(reply, tools[call["tool"]]).args is not None
    return parse_verifier(reply)[1]


def run_system(name: str, items: list[dict[str, Any]], config: FlowGRPOConfig, server_url: str | None,
               concurrency: int, corpus: list[str], module_dtype: str = "float32") -> dict[str, Any]:
    served = SYSTEMS[name]
    path = resolve_model_path()
    specs = {}
    for role in ("default", "planner", "executor", "verifier", "generator"):
        tokens = config.max_new_tokens if role == "planner" else config.module_max_new_tokens
        dtype = "float32" if role == "planner" else module_dtype
        spec = ModelSpec(config.model, dtype=dtype, seed=config.seed, max_new_tokens=tokens, temperature=0.0)
        if role in served or (role == "default" and name == "served"):
            spec = replace(spec, model=f"openai:{path}", base_url=server_url, timeout_s=600.0)
        specs[role] = spec
    models = load_models(specs)
    tools = ToolSpec.parse(config.tools, corpus).build(models["default"])
    graph = agentflow_graph(models, tools, max_turns=config.max_turns, max_seconds=config.run_timeout_s)
    recorders = [ReplyRecorder() for _ in items]
    start = time.monotonic()
    states = graph.batch([{"query": with_answer_instruction(item["query"])} for item in items],
                         config=[{"callbacks": [r], "max_concurrency": concurrency} for r in recorders],
                         return_exceptions=True)
    wall = time.monotonic() - start
    failed = [s for s in states if isinstance(s, BaseException)]
    correct = sum(score("toolmix", str(s.get("answer", "")), item)
                  for s, item in zip(states, items) if not isinstance(s, BaseException))
    rules = {"planner": stops.PLANNER, "executor": stops.EXECUTOR, "verifier": stops.VERIFIER}
    by_tool = {t.name: t for t in tools}
    result: dict[str, Any] = {"system": name, "served": list(served), "module_dtype": module_dtype,
                              "n": len(items), "accuracy": correct / len(items),
                              "correct": correct, "failed_runs": len(failed),
                              "errors": sorted({f"{type(e).__name__}: {e}"[:200] for e in failed}),
                              "wall_s": round(wall, 1)}
    calls = [call for r in recorders for call in r.calls]
    for module in PARSED:
        mine = [c for c in calls if c["node"] == module]
        local = module not in served
        ok = sum(parsed(c, by_tool, rules, local) for c in mine)
        result[module] = {"calls": len(mine), "parsed": ok, "parse_rate": ok / len(mine) if mine else None,
                          "tokens_per_call": sum(c["tokens"] for c in mine) / len(mine) if mine else None}
    result["completion_tokens_per_run"] = sum(c["tokens"] for c in calls) / len(items)
    engines = {id(m.engine): m.engine for m in models.values() if isinstance(m, LocalChatModel)}
    result["decode_steps_per_run"] = (sum(e.steps for e in engines.values()) / len(items)) if engines else None
    for engine in engines.values():
        engine.close()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="held-out ToolMix items (the first N)")
    p.add_argument("--systems", default="local,served,mixed", help="comma-separated: local, served, mixed")
    p.add_argument("--concurrency", type=int, default=8, help="graph runs in flight")
    p.add_argument("--no-stop-rules", action="store_true",
                   help="planner, executor and verifier without stop rules (as before them)")
    p.add_argument("--port", type=int, default=None, help="the server's port (default: a free one)")
    p.add_argument("--base-url", default=None,
                   help="a running server of the embedded model's folder to use instead of starting one")
    p.add_argument("--quick", action="store_true", help="short replies (planner 6 tokens, modules 8)")
    p.add_argument("--tiny", action="store_true", help="a random tiny model for the local modules (with --systems local)")
    p.add_argument("--module-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the local executor, verifier and generator's weights (the planner stays float32)")
    p.add_argument("--output", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown system(s) {sorted(unknown)}; choose from {sorted(SYSTEMS)}")
    if args.no_stop_rules:
        for module in PARSED:
            setattr(stops, module.upper(), stops.StopRule())
    config = FlowGRPOConfig.from_yaml(CONFIG)
    if args.quick:
        config = config.model_copy(update={"max_new_tokens": 6, "module_max_new_tokens": 8})
    if args.tiny:
        if any(SYSTEMS[s] for s in systems):
            raise SystemExit("--tiny is for --systems local: a server serves the embedded model")
        config = config.model_copy(update={"model": "tiny"})
    items = [dict(row) for row in load_benchmark("toolmix", split="test", limit=args.n)]
    corpus = make_toolmix().corpus
    server = None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if any(SYSTEMS[s] for s in systems) and args.base_url is None:
                from tests.served import ModelServer

                server = ModelServer(resolve_model_path(), Path(tmp) / "server.log", port=args.port)
                print(f"starting transformers serve on {server.base_url} ...", flush=True)
                server.start()
            for name in systems:
                print(f"running {name} on {len(items)} items ...", flush=True)
                url = args.base_url or (server.base_url if server else None)
                results.append(run_system(name, items, config, url, args.concurrency, corpus, args.module_dtype))
                print(f"  done in {results[-1]['wall_s']:.0f} s: {json.dumps(results[-1])}", flush=True)
        finally:
            if server is not None:
                server.stop()

    print()
    header = f"{'system':<8} {'modules':<8} {'planner':>15} {'executor':>15} {'verifier':>15} {'accuracy':>9} {'wall s':>7} {'tok/run':>8} {'steps/run':>9}"
    print(header)
    for r in results:
        rates = " ".join(
            f"{r[m]['parsed']:>3}/{r[m]['calls']:<3} {100 * r[m]['parse_rate']:5.1f}%" if r[m]["calls"] else f"{'-':>15}"
            for m in PARSED
        )
        steps = f"{r['decode_steps_per_run']:9.1f}" if r["decode_steps_per_run"] is not None else f"{'-':>9}"
        print(f"{r['system']:<8} {r['module_dtype']:<8} {rates} {100 * r['accuracy']:8.1f}% {r['wall_s']:7.0f} "
              f"{r['completion_tokens_per_run']:8.1f} {steps}")
    out = {"benchmark": "toolmix", "split": "test", "n": len(items), "max_turns": config.max_turns,
           "stop_rules": not args.no_stop_rules, "systems": results}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
