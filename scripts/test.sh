#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: import contracts, then pytest
# (engine tests first, app tests after). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
