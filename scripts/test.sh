#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: import contracts, then pytest
# (engine tests first, app tests after), then the packaging smoke test (builds the
# PyInstaller bundle, ~5 min; skip it with PLUGMEM_SKIP_BUNDLE=1).
# Extra arguments go to pytest and replace the two default stages.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --scale  # the Ray import's tests run on a local Ray instance
export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/lint-imports
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest -m "not bundle"
if [ "${PLUGMEM_SKIP_BUNDLE:-0}" != "1" ]; then
    .venv/bin/python -m pytest -m bundle
fi
