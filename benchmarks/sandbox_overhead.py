"""Start-up cost of one `python` tool call: the namespace launcher vs the one before it.

    python benchmarks/sandbox_overhead.py             # 30 rounds
    python benchmarks/sandbox_overhead.py --rounds 5

Each round times, in turn: the bare interpreter (`python -s -B -c pass` with
the PYTHONPATH the sandbox gives it: the floor), one sandboxed no-op through
the fallback launcher, which is the launcher the sandbox had before
namespaces (selected with AGENTFLOW_SANDBOX_NAMESPACES=0), and one through
the bubblewrap namespace launcher. Interleaving the three keeps a busy
machine's drift out of the comparison; medians are printed as ms per call,
with after/before as the ratio. Prints figures; not a timed test.

Not as root, the fallback launcher passes no PYTHONPATH: where the agent's
packages come from PYTHONPATH, its child starts without them, and cheaper.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentflow.tools.python_sandbox import (  # noqa: E402
    NAMESPACES_ENV,
    SandboxLimits,
    run_sandboxed,
    sandbox_protections,
    sandbox_warning,
)
from agentflow.tools.sandbox_namespaces import child_python_path  # noqa: E402


def _interpreter() -> None:
    """The interpreter as the namespace launcher starts it: same flags, same PYTHONPATH."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if python_path := child_python_path():
        env["PYTHONPATH"] = python_path
    subprocess.run([sys.executable, "-s", "-B", "-c", "pass"], env=env, check=True)


def _sandboxed(namespaces: bool) -> None:
    """One no-op call; the launcher is chosen by the environment variable the sandbox reads."""
    previous = os.environ.get(NAMESPACES_ENV)
    if namespaces:
        os.environ.pop(NAMESPACES_ENV, None)
    else:
        os.environ[NAMESPACES_ENV] = "0"
    try:
        result = run_sandboxed("pass", SandboxLimits(timeout_s=30.0))
    finally:
        if previous is None:
            os.environ.pop(NAMESPACES_ENV, None)
        else:
            os.environ[NAMESPACES_ENV] = previous
    if result.returncode != 0:
        raise RuntimeError(f"sandboxed no-op failed: {result.stderr.strip()}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if warning := sandbox_warning():
        print(f"warning: {warning}; 'after' is the fallback launcher too")
    print(f"protections: {sandbox_protections()}  (uid {os.geteuid()})")
    cases = {
        "interpreter_ms": _interpreter,
        "before_ms": lambda: _sandboxed(namespaces=False),
        "after_ms": lambda: _sandboxed(namespaces=True),
    }
    for case in cases.values():  # warm the page cache and the probes
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            times[name].append((time.perf_counter() - started) * 1000)
    figures = {name: statistics.median(values) for name, values in times.items()}
    figures["ratio"] = figures["after_ms"] / figures["before_ms"]
    floor = figures["interpreter_ms"]
    print(f"{'':34}{'ms per call':>12}{'over bare python':>18}")
    print(f"{'bare interpreter':34}{floor:12.1f}{'':>18}")
    print(f"{'before: fallback launcher':34}{figures['before_ms']:12.1f}{figures['before_ms'] - floor:18.1f}")
    print(f"{'after: bwrap namespace launcher':34}{figures['after_ms']:12.1f}{figures['after_ms'] - floor:18.1f}")
    print(f"ratio after/before: {figures['ratio']:.2f}  (median of {args.rounds} interleaved rounds)")
    return figures


if __name__ == "__main__":
    main()
