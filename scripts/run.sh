#!/usr/bin/env bash
# Install (if needed) and start PlugMem Studio, the desktop app. The first start builds the
# bundled demo workspace in the background (about 1.5 minutes on 2 cores); later starts open the
# last workspace. Arguments go to the app: --workspace DIR, --screenshot FILE.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/plugmem-studio "$@"
