"""Rollout throughput: AgentFlow graph runs through the `GenerationEngine` vs a plain peer.

    python benchmarks/rollout_throughput.py            # the real embedded SmolLM2-135M
    python benchmarks/rollout_throughput.py --quick    # seconds: fewer runs and tokens
    python benchmarks/rollout_throughput.py --quick --tiny   # random 2-layer model (the test)

(a) the peer: sequential `graph.invoke`s with langchain-huggingface `ChatHuggingFace`
    over a `HuggingFacePipeline` built from the same loaded model and tokenizer, its runs
    spread in blocks before each G=8 repeat (so both sides see the same load);
(b) the engine: `graph.batch([...] * G, max_concurrency=G)` with `LocalChatModel`,
    G = 8 and G = 32.
Same model, dtype, query, max_turns=3, max new tokens per node, temperature 0.7, seed.
Then raw `model.generate` vs the engine alone at batch 5 and 20 (same prompt, same number
of tokens, EOS ignored), the engine's decode ms/step at 1 and 5 rows and at G=8 (and its
ratio to the single-row step), achieved GFLOP/s next to a large matmul, peak RSS (after each
phase too, to tell which one sets it), the whole wall time, memory bandwidth at the start and
the end (a decode step's floor; it shows how much of the machine a neighbour took), and at
G=8 the engine's prefix cache off vs on, its lean forward off vs on, its prompt-lookup speculation
off vs on (decode steps, tokens per row and step, drafts kept), and the stop-condition savings (the
planner, executor and verifier stop rules of agentflow/nodes/stops.py off vs on: decode steps
and completion tokens per rollout). The batch-5/20 lines and the 1- and 5-row decode steps run
without drafts (one token a row and step, as `generate` and llama.cpp's server decode). The
last line is one JSON object.

With `--llama-server BIN --gguf MODEL.gguf`, the batch-5 work also goes to llama.cpp's own
server, the engine a CPU user would pick instead: started here on 127.0.0.1 with 5 slots and
the same thread count, sent the engine's prompt token ids 5 times at once (EOS ignored, the
same number of new tokens, no prompt cache), interleaved with the engine's repetitions; its
single-stream decode ms/token comes from its own timings. Build llama.cpp yourself and
convert the model with its `convert_hf_to_gguf.py --outtype f32` (or bf16, to match the
engine's dtype): nothing here downloads or builds it.
Prints figures; not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402

QUERY = "What is 17 * 23 + 4? Use the calculator."


class Counter(BaseCallbackHandler):
    """Counts chat-model calls and completion tokens (re-tokenised text: same rule for both sides)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls, self.tokens = tokenizer, 0, 0

    def on_llm_end(self, response, **kwargs) -> None:
        for gens in response.generations:
            for g in gens:
                self.calls += 1
                self.tokens += len(self.tokenizer.encode(g.text, add_special_tokens=False))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(dtype: torch.dtype, n: int, reps: int) -> tuple[float, int]:
    """The machine's ceiling for `dtype` from n^3 products. The size grows from 256 up to
    n only while one product stays under a second: bf16 is emulated on CPUs without
    bf16 units (measured 0.13 GFLOP/s here), where a 2048^3 product would take minutes."""
    size = 256
    while True:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        t = time.perf_counter()
        a @ b
        if size >= n or time.perf_counter() - t > 1.0 / 8:  # the next size costs 8x
            break
        size *= 2
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - t) / 1e9, size


def bandwidth_gb_s(mb: int) -> float:
    """GB/s of a sum over `mb` MB of fp32, best of 3: a decode step reads every weight once,
    so this is the machine's floor for one, and it shows what a neighbour takes (a 1 GB
    sum ran at 11-26 GB/s on the same machine from hour to hour)."""
    x = torch.ones(mb << 18)  # mb MB of fp32, every page already written
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return mb / 1024 / best


def load(args):
    from agentflow.models import load_model, tiny_model

    dtype = getattr(torch, args.dtype)
    if args.tiny:
        from transformers import AutoTokenizer

        from agentflow.models.loading import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path())
        model = tiny_model(vocab_size=len(tokenizer)).to(dtype)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return model, tokenizer
    return load_model(dtype=dtype)


def tools():
    from agentflow.tools.calculator import CalculatorTool

    return [CalculatorTool()]


def turns_of(states) -> list[int]:
    return [s.get("turn", 0) for s in states]


def run_peer(model, tokenizer, args, runs: int, seed: int) -> dict:
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import pipeline

    from agentflow import build_agentflow

    pipe = pipeline(
        "text-generation", model=model, tokenizer=tokenizer, max_new_tokens=args.max_new_tokens,
        do_sample=True, temperature=0.7, top_p=1.0, top_k=0, return_full_text=False,
    )
    llm = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe), tokenizer=tokenizer)
    graph = build_agentflow(llm, tools(), max_turns=3)
    counter = Counter(tokenizer)
    torch.manual_seed(seed)
    states, walls = [], []
    for _ in range(runs):
        t = time.perf_counter()
        states.append(graph.invoke({"query": QUERY}, config={"callbacks": [counter]}))
        walls.append(time.perf_counter() - t)
    return {"wall": sum(walls), "walls": walls, "runs": len(states), "turns": turns_of(states),
            "calls": counter.calls, "tokens": counter.tokens}


def peer_blocks(peer_runs: int, repeats: int) -> list[int]:
    """How many peer runs go before each G=8 repeat: as even as the counts allow, earlier first."""
    return [peer_runs // repeats + (i < peer_runs % repeats) for i in range(repeats)]


def merge_peer(parts: list[dict]) -> dict:
    """The peer's blocks of runs as one measurement: walls and counts summed."""
    return {"wall": sum(p["wall"] for p in parts), "walls": [w for p in parts for w in p["walls"]],
            "runs": sum(p["runs"] for p in parts), "turns": [t for p in parts for t in p["turns"]],
            "calls": sum(p["calls"] for p in parts), "tokens": sum(p["tokens"] for p in parts)}


def make_llm(model, tokenizer, args, prefix_cache=True, fast_forward=True, draft_tokens=4):
    from agentflow.models import GenerationEngine, LocalChatModel

    engine = GenerationEngine(model, tokenizer, max_batch_size=32, seed=args.seed, fast_forward=fast_forward,
                              draft_tokens=draft_tokens, **({} if prefix_cache else {"prefix_cache_tokens": 0}))
    return LocalChatModel(engine=engine, model_name="bench", temperature=0.7, max_new_tokens=args.max_new_tokens)


def run_engine(model, tokenizer, args, g: int, prefix_cache=True, fast_forward=True, draft_tokens=4) -> dict:
    from agentflow import build_agentflow

    llm = make_llm(model, tokenizer, args, prefix_cache, fast_forward, draft_tokens)
    graph = build_agentflow(llm, tools(), max_turns=3)
    engine = llm.engine
    graph.batch([{"query": QUERY}] * 2, config={"max_concurrency": 2})  # warm-up (thread, allocator)
    engine._prefixes.clear()  # start cold: the warm-up must not pre-fill the prefix cache
    engine.reseed(args.seed)
    engine.stats.clear()
    steps0, tokens0 = engine.steps, engine.tokens
    counter = Counter(tokenizer)
    t = time.perf_counter()
    states = graph.batch([{"query": QUERY}] * g, config={"max_concurrency": g, "callbacks": [counter]})
    wall = time.perf_counter() - t
    steps = engine.steps - steps0
    s = engine.stats
    engine.close()
    return {
        "wall": wall, "runs": g, "turns": turns_of(states), "calls": counter.calls, "tokens": counter.tokens,
        "engine_tokens": engine.tokens - tokens0, "steps": steps, "mean_rows": s["rows"] / max(steps, 1),
        "prefill_s": s["prefill_s"], "decode_s": s["decode_s"], "sample_s": s["sample_s"],
        "relayout_s": s["relayout_s"], "relayouts": s["relayouts"], "prefills": s["prefills"],
        "prefill_tokens": s["prefill_tokens"], "prefix_tokens_reused": s["prefix_tokens_reused"],
        "decode_ms_per_step": 1000 * s["decode_s"] / max(s["decode_steps"], 1),
        "drafted": s["drafted"], "kept": s["kept"],
        # tokens a decoding row emits per forward pass: 1 without speculation
        "tokens_per_row_step": (s["rows"] + s["kept"]) / max(s["rows"], 1),
    }


def planner_prompt(model, tokenizer, args) -> list[int]:
    """The planner's real first prompt (system + tool cards + query), as the engine sees it."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from agentflow import prompts
    from agentflow.nodes.modules import planner_system_prompt, render_memory

    llm = make_llm(model, tokenizer, args)
    system = planner_system_prompt(tools())
    user = prompts.PLANNER_USER.format(query=QUERY, memory=render_memory([]))
    ids, _ = llm.encode_messages([SystemMessage(system), HumanMessage(user), AIMessage(prompts.PLANNER_PREFIX)])
    return ids


@contextmanager
def llama_server(binary: str, gguf: str, slots: int, ctx_per_slot: int):
    """llama.cpp's server on a free loopback port with `slots` parallel slots and torch's
    thread count; yields its base URL, stops it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-c", str(slots * ctx_per_slot), "-t", str(torch.get_num_threads()), "--no-webui"]
    # its log goes to a file: a pipe nobody reads fills up and blocks the server mid-benchmark
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama-server exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not become healthy in 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def llama_completion(url: str, prompt: list[int], n: int) -> dict:
    """One /completion request: these token ids, exactly `n` new tokens (EOS ignored), no
    prompt cache, the benchmark's sampling (T=0.7, no top-k/top-p/min-p cut)."""
    body = {"prompt": prompt, "n_predict": n, "ignore_eos": True, "cache_prompt": False, "temperature": 0.7,
            "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    req = urllib.request.Request(f"{url}/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def llama_batch_tok_s(url: str, prompt: list[int], batch: int, n: int) -> float:
    """Completion tokens/s of `batch` concurrent requests, end to end (prefill included)."""
    with ThreadPoolExecutor(batch) as pool:
        t = time.perf_counter()
        outs = list(pool.map(lambda _: llama_completion(url, prompt, n), range(batch)))
        wall = time.perf_counter() - t
    return sum(o["tokens_predicted"] for o in outs) / wall


def raw_vs_engine(model, tokenizer, args, batch: int, prompt: list[int], reps: int, llama_url: str | None = None) -> dict:
    """Tokens/s of raw `generate` and of the engine alone: same batch, prompt, length, dtype
    (and of llama.cpp's server given its URL)."""
    from agentflow.models import GenerationEngine, SamplingParams

    n = args.max_new_tokens
    ids = torch.tensor([prompt] * batch)
    mask = torch.ones_like(ids)
    # Without the prefix cache: `generate` prefills every row, so must the engine for an
    # equal comparison (the cached engine, which prefills the shared prompt once, is extra).
    # Without drafts: one token a row and step, as `generate` and llama.cpp's server (no
    # draft model) decode; this line measures the decode step (speculation has its own line).
    engine = GenerationEngine(model, tokenizer, max_batch_size=max(batch, 1), seed=args.seed, prefix_cache_tokens=0,
                              draft_tokens=0)
    cached = GenerationEngine(model, tokenizer, max_batch_size=max(batch, 1), seed=args.seed, draft_tokens=0)
    engine.eos_ids = cached.eos_ids = set()  # every row runs exactly n tokens, as with min_new_tokens=n below
    params = SamplingParams(max_new_tokens=n, temperature=0.7)
    raw, eng, eng_cached, llama = [], [], [], []
    if llama_url:
        llama_batch_tok_s(llama_url, prompt, batch, 2)  # warm-up
    with torch.inference_mode():
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    [f.result() for f in [engine.submit(prompt, params) for _ in range(batch)]]
    for _ in range(reps):  # interleaved, so load changes hit every side alike
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                                 temperature=0.7, top_k=0, pad_token_id=tokenizer.pad_token_id)
        raw.append((out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - t))
        t = time.perf_counter()
        outs = [f.result() for f in [engine.submit(prompt, params) for _ in range(batch)]]
        eng.append(sum(len(o.completion_ids) for o in outs) / (time.perf_counter() - t))
        cached._prefixes.clear()  # each repetition starts cold, as generate does
        t = time.perf_counter()
        outs = [f.result() for f in [cached.submit(prompt, params) for _ in range(batch)]]
        eng_cached.append(sum(len(o.completion_ids) for o in outs) / (time.perf_counter() - t))
        if llama_url:
            llama.append(llama_batch_tok_s(llama_url, prompt, batch, n))
    engine.close()
    cached.close()
    return {"batch": batch, "raw_tok_s": statistics.median(raw), "engine_tok_s": statistics.median(eng),
            "cached_tok_s": statistics.median(eng_cached), "raw_all": raw, "engine_all": eng,
            "llama_tok_s": statistics.median(llama) if llama else None, "llama_all": llama}


def decode_ms_per_step(model, tokenizer, args, prompt: list[int], rows: int, reps: int) -> float:
    """The engine's decode-only ms per step with `rows` rows of `prompt` (EOS ignored,
    `max_new_tokens` each): rows=1 is the single-stream step, the bandwidth floor's
    stand-in on this machine (one pass over the weights for one row)."""
    from agentflow.models import GenerationEngine, SamplingParams

    engine = GenerationEngine(model, tokenizer, max_batch_size=max(rows, 1), seed=args.seed, prefix_cache_tokens=0,
                              draft_tokens=0)  # one token a row and step: the step itself is measured
    engine.eos_ids = set()
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7)
    [f.result() for f in [engine.submit(prompt, params) for _ in range(rows)]]  # warm-up
    best = float("inf")
    for _ in range(reps):  # the least loaded repetition: other processes only add time
        engine.stats.clear()
        [f.result() for f in [engine.submit(prompt, params) for _ in range(rows)]]
        best = min(best, 1000 * engine.stats["decode_s"] / max(engine.stats["decode_steps"], 1))
    engine.close()
    return best


def generate_batch_tok_s(model, tokenizer, prompt, batch, n) -> float | None:
    """transformers' own continuous batching, for the record (docs/design.md §4)."""
    from transformers import GenerationConfig

    try:
        cfg = GenerationConfig(max_new_tokens=n, do_sample=True, temperature=0.7, eos_token_id=-1,
                               pad_token_id=tokenizer.pad_token_id)
        t = time.perf_counter()
        out = model.generate_batch(inputs=[prompt] * batch, generation_config=cfg)
        wall = time.perf_counter() - t
        tokens = sum(len(r.generated_tokens) for r in out.values())
        return tokens / wall
    except Exception as exc:  # API drift: report, do not fail the benchmark
        print(f"generate_batch failed: {type(exc).__name__}: {exc}")
        return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke mode: few runs, few tokens")
    p.add_argument("--tiny", action="store_true", help="a random 2-layer model instead of SmolLM2-135M")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bf16 where the hardware has bf16 matrix units, else fp32 (agentflow.models.fast_dtype)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--peer-runs", type=int, default=None,
                   help="sequential peer runs, spread over the G=8 repeats (default 3, quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help="G=8 rollouts to take the median of (default 3, quick 1)")
    p.add_argument("--compare-generate-batch", action="store_true", help="also time transformers' generate_batch")
    p.add_argument("--llama-server", metavar="BIN", help="llama.cpp's llama-server binary: compare the batch-5 line with it")
    p.add_argument("--gguf", metavar="PATH", help="the same model as GGUF, for --llama-server")
    args = p.parse_args(argv)
    if bool(args.llama_server) != bool(args.gguf):
        p.error("--llama-server and --gguf go together")
    started = time.perf_counter()  # the whole run's wall time counts (compile or pack time included)
    if args.dtype == "auto":
        from agentflow.models import fast_dtype

        args.dtype = str(fast_dtype("cpu")).removeprefix("torch.")
    args.max_new_tokens = args.max_new_tokens or (8 if args.quick else 48)
    args.peer_runs = args.peer_runs or (1 if args.quick else 3)
    args.repeats = args.repeats or (1 if args.quick else 3)
    probe_mb = 256  # far beyond the caches; small beside the run's peak RSS
    bandwidth_start = bandwidth_gb_s(probe_mb)
    print(f"load: {os.getloadavg()}  cpus: {os.cpu_count()}  torch threads: {torch.get_num_threads()}  "
          f"memory bandwidth (sum over {probe_mb} MB): {bandwidth_start:.1f} GB/s")
    model, tokenizer = load(args)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {'tiny' if args.tiny else 'SmolLM2-135M'} {params / 1e6:.1f}M params, {args.dtype}, "
          f"max_new_tokens/node={args.max_new_tokens}, max_turns=3, T=0.7, query={QUERY!r}")

    def show(name, r):
        tps = r["runs"] / r["wall"]
        print(f"{name}: {r['runs']} runs in {r['wall']:.1f}s = {tps:.4g} traj/s; turns/traj {statistics.mean(r['turns']):.2f} "
              f"{r['turns']}; calls/traj {r['calls'] / r['runs']:.1f}; completion tok/s {r['tokens'] / r['wall']:.1f}; "
              f"peak RSS so far {rss_mb():.0f} MB")
        return tps

    # The peer's runs are spread over the G=8 repeats, a block before each, so that the
    # machine's load moving between phases moves both sides of the ratio (it did: the
    # peer's 2 runs, all at the start, took 20.6 s in one quiet run and 34.8 s in another).
    peer_parts, g8_runs = [], []
    for i, n in enumerate(peer_blocks(args.peer_runs, args.repeats)):
        if n:
            peer_parts.append(run_peer(model, tokenizer, args, n, args.seed + i))
        g8_runs.append(run_engine(model, tokenizer, args, 8))
    peer = merge_peer(peer_parts)
    peer_tps = show("(a) peer ChatHuggingFace, sequential", peer)
    print(f"    run walls {[round(w, 1) for w in peer['walls']]} s, one block before each G=8 repeat")
    peer_tok = peer["tokens"] / peer["wall"]
    results = {}
    for g in ([8] if args.quick else [8, 32]):
        # G=8 is repeated: which runs stop early (1-3 turns) depends on thread timing, which
        # moves the wall time by ~10%; the median run is the one reported.
        runs = g8_runs if g == 8 else [run_engine(model, tokenizer, args, g)]
        if len(runs) > 1:
            for i, run in enumerate(runs, start=1):
                show(f"(b) engine G={g}, repeat {i}/{len(runs)}", run)
            print(f"    walls {[round(x['wall'], 1) for x in runs]} s; the median run:")
        r = results[g] = sorted(runs, key=lambda x: x["wall"])[len(runs) // 2]
        tps = show(f"(b) engine G={g}", r)
        print(f"    ratio (b)/(a) traj/s = {tps / peer_tps:.2f}x; tokens/s ratio = {r['tokens'] / r['wall'] / peer_tok:.2f}x; "
              f"engine: {r['steps']} decode steps, mean rows/step {r['mean_rows']:.1f}, prefill (decode fused in) {r['prefill_s']:.1f}s "
              f"({r['prefills']} prefills, {r['prefill_tokens']} tok), decode-only {r['decode_s']:.1f}s "
              f"({r['decode_ms_per_step']:.0f} ms/step), sample {r['sample_s']:.2f}s, "
              f"relayout {r['relayout_s']:.2f}s ({r['relayouts']}); prompt tokens reused from the prefix cache "
              f"{r['prefix_tokens_reused']} of {r['prefix_tokens_reused'] + r['prefill_tokens']}; drafts kept "
              f"{r['kept']} of {r['drafted']}, {r['tokens_per_row_step']:.2f} tokens per row and step")
        # everything the model computed (prefill + decode rows) over the whole graph run
        print(f"    graph end-to-end: {2 * params * (r['prefill_tokens'] + r['engine_tokens']) / r['wall'] / 1e9:.1f} GFLOP/s")
    g8 = results[8]
    off = run_engine(model, tokenizer, args, 8, prefix_cache=False)
    print(f"prefix cache G=8: off {8 / off['wall']:.3f} traj/s (prefill {off['prefill_s']:.1f}s for {off['prefill_tokens']} tok) "
          f"vs on {8 / g8['wall']:.3f} traj/s (prefill {g8['prefill_s']:.1f}s for {g8['prefill_tokens']} tok, "
          f"{g8['prefix_tokens_reused']} reused) -> {off['wall'] / g8['wall']:.2f}x; sampling differs run to run "
          f"(turns off {statistics.mean(off['turns']):.2f}, on {statistics.mean(g8['turns']):.2f}); peak RSS so far {rss_mb():.0f} MB")

    hf = run_engine(model, tokenizer, args, 8, fast_forward=False)
    print(f"lean forward G=8: off (transformers' forward) {8 / hf['wall']:.3f} traj/s (prefill {hf['prefill_s']:.1f}s, "
          f"decode-only {hf['decode_s']:.1f}s = {hf['decode_ms_per_step']:.0f} ms/step at {hf['mean_rows']:.1f} rows) "
          f"vs on {8 / g8['wall']:.3f} traj/s (prefill {g8['prefill_s']:.1f}s, decode-only {g8['decode_s']:.1f}s = "
          f"{g8['decode_ms_per_step']:.0f} ms/step at {g8['mean_rows']:.1f} rows) -> {hf['wall'] / g8['wall']:.2f}x; "
          f"peak RSS so far {rss_mb():.0f} MB")

    # The same G=8 rollout decoding one token a row and step (no prompt-lookup drafts).
    plain = run_engine(model, tokenizer, args, 8, draft_tokens=0)
    print(f"speculation G=8: off {plain['steps']} decode steps ({plain['decode_ms_per_step']:.0f} ms/step), "
          f"{8 / plain['wall']:.3f} traj/s vs on {g8['steps']} decode steps ({g8['decode_ms_per_step']:.0f} ms/step, "
          f"{g8['tokens_per_row_step']:.2f} tokens per row and step, {g8['kept']} of {g8['drafted']} drafts kept), "
          f"{8 / g8['wall']:.3f} traj/s -> {1 - g8['steps'] / plain['steps']:.0%} fewer decode steps, "
          f"{plain['wall'] / g8['wall']:.2f}x; sampling differs run to run (turns off {statistics.mean(plain['turns']):.2f}, "
          f"on {statistics.mean(g8['turns']):.2f})")

    from agentflow.nodes import stops

    # The same G=8 rollout with the planner/executor/verifier stop rules replaced by none
    # (the generator keeps its "\n\n", as benchmarks/parse_rates.py --no-stop-rules does):
    # each module then writes until max_new_tokens or EOS.
    with patch.multiple(stops, **{rule: stops.StopRule() for rule in ("PLANNER", "EXECUTOR", "VERIFIER")}):
        free = run_engine(model, tokenizer, args, 8)
    print(f"stop rules G=8: off {free['steps']} decode steps, {free['tokens'] / 8:.1f} completion tok/rollout, "
          f"{8 / free['wall']:.3f} traj/s vs on {g8['steps']} decode steps, {g8['tokens'] / 8:.1f} completion tok/rollout, "
          f"{8 / g8['wall']:.3f} traj/s -> {1 - g8['steps'] / free['steps']:.0%} fewer decode steps, "
          f"{free['wall'] / g8['wall']:.2f}x; sampling differs run to run (turns off {statistics.mean(free['turns']):.2f}, "
          f"on {statistics.mean(g8['turns']):.2f})")

    prompt = planner_prompt(model, tokenizer, args)
    # Fixed at 5 rows (not the rollouts' mean batch, which moves with the sampled turns), so
    # runs compare; EOS ignored, max_new_tokens a row (48 by default).
    batch = 5
    reps = 1 if args.quick else 3
    llama_step_ms = None
    if args.llama_server:
        with llama_server(args.llama_server, args.gguf, batch, len(prompt) + args.max_new_tokens + 16) as url:
            cmp8 = raw_vs_engine(model, tokenizer, args, batch, prompt, reps, llama_url=url)
            llama_step_ms = min(llama_completion(url, prompt, args.max_new_tokens)["timings"]["predicted_per_token_ms"]
                                for _ in range(reps))
    else:
        cmp8 = raw_vs_engine(model, tokenizer, args, batch, prompt, reps)
    print(f"raw generate vs engine, batch {batch} (fixed; EOS ignored), prompt {len(prompt)} tok, "
          f"{args.max_new_tokens} new: raw {cmp8['raw_tok_s']:.1f} tok/s, engine {cmp8['engine_tok_s']:.1f} tok/s, "
          f"engine/raw {cmp8['engine_tok_s'] / cmp8['raw_tok_s']:.2f}x (runs raw {[round(x) for x in cmp8['raw_all']]}, "
          f"engine {[round(x) for x in cmp8['engine_all']]}); engine with prefix cache {cmp8['cached_tok_s']:.1f} tok/s; "
          f"peak RSS so far {rss_mb():.0f} MB")
    if cmp8["llama_tok_s"]:
        print(f"llama.cpp server vs engine, batch {batch} (same prompt ids, EOS ignored, {args.max_new_tokens} new, "
              f"no prompt cache; {Path(args.gguf).name}): llama.cpp {cmp8['llama_tok_s']:.1f} tok/s, engine "
              f"{cmp8['engine_tok_s']:.1f} tok/s, engine/llama.cpp {cmp8['engine_tok_s'] / cmp8['llama_tok_s']:.2f}x "
              f"(runs llama.cpp {[round(x) for x in cmp8['llama_all']]}); llama.cpp single-stream decode "
              f"{llama_step_ms:.1f} ms/token")
    print(f"engine end-to-end in the graph, G=8: {g8['engine_tokens'] / g8['wall']:.1f} tok/s")
    single = decode_ms_per_step(model, tokenizer, args, prompt, 1, reps=1 if args.quick else 2)
    five = decode_ms_per_step(model, tokenizer, args, prompt, 5, reps=1 if args.quick else 2)
    print(f"decode ms/step: 1 row {single:.1f}, 5 rows {five:.1f} ({five / single:.2f}x the single-row step), "
          f"G=8 rollouts {g8['decode_ms_per_step']:.1f} at {g8['mean_rows']:.1f} rows ({g8['decode_ms_per_step'] / single:.2f}x)")
    cmp32 = None
    if not args.quick:
        b32 = 20  # fixed, as batch 5 above
        cmp32 = raw_vs_engine(model, tokenizer, args, b32, prompt, reps=2)
        print(f"raw generate vs engine, batch {b32} (fixed; EOS ignored): raw {cmp32['raw_tok_s']:.1f}, engine {cmp32['engine_tok_s']:.1f}, "
              f"engine/raw {cmp32['engine_tok_s'] / cmp32['raw_tok_s']:.2f}x; peak RSS so far {rss_mb():.0f} MB")
        if args.compare_generate_batch:
            gb = generate_batch_tok_s(model, tokenizer, prompt, 32, args.max_new_tokens)
            print(f"transformers generate_batch, 32 requests: {gb and round(gb, 1)} tok/s")
    n = 1024 if args.quick else 2048
    (bf16, n_bf16), (fp32, n_fp32) = matmul_gflops(torch.bfloat16, n, 3), matmul_gflops(torch.float32, n, 3)
    best = max(cmp8["engine_tok_s"], (cmp32 or cmp8)["engine_tok_s"])
    achieved = 2 * params * best / 1e9
    print(f"achieved (engine decode, 2*params*tok/s): {achieved:.1f} GFLOP/s; ceiling: matmul bf16 {n_bf16}^3 {bf16:.1f} GFLOP/s, "
          f"fp32 {n_fp32}^3 {fp32:.0f} GFLOP/s -> {achieved / (bf16 if args.dtype == 'bfloat16' else fp32) * 100:.1f}% of the {args.dtype} ceiling")
    total = time.perf_counter() - started
    peak = rss_mb()  # before the probe's buffer could add to it
    bandwidth_end = bandwidth_gb_s(probe_mb)
    print(f"peak RSS {peak:.0f} MB; whole benchmark wall {total / 60:.1f} min; load now {os.getloadavg()}; "
          f"memory bandwidth now {bandwidth_end:.1f} GB/s")
    out = {
        "speedup_vs_peer": round((8 / g8["wall"]) / peer_tps, 3),
        "speedup_vs_peer_32": round((32 / results[32]["wall"]) / peer_tps, 3) if 32 in results else None,
        "engine_vs_raw": round(cmp8["engine_tok_s"] / cmp8["raw_tok_s"], 3),
        "peak_rss_mb": round(peak, 1),
        "decode_ms_per_step_g8": round(g8["decode_ms_per_step"], 1),
        "decode_ms_per_step_1row": round(single, 1),
        "stop_rules_decode_steps_saved": round(1 - g8["steps"] / free["steps"], 3),
        "stop_rules_speedup": round(free["wall"] / g8["wall"], 3),
        "speculation_decode_steps_saved": round(1 - g8["steps"] / plain["steps"], 3),
        "speculation_speedup": round(plain["wall"] / g8["wall"], 3),
        "tokens_per_row_step_g8": round(g8["tokens_per_row_step"], 3),
        "engine_vs_llama_cpp": round(cmp8["engine_tok_s"] / cmp8["llama_tok_s"], 3) if cmp8["llama_tok_s"] else None,
        "llama_cpp_decode_ms_per_token": round(llama_step_ms, 1) if llama_step_ms else None,
        "wall_min": round(total / 60, 2),
        "bandwidth_gb_s_start": round(bandwidth_start, 1),
        "bandwidth_gb_s_end": round(bandwidth_end, 1),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
