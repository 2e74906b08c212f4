#!/usr/bin/env bash
# Install (if needed) and start PlugMem Studio on its embedded default (the bundled demo workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/plugmem demo "$@"
