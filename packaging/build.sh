#!/usr/bin/env bash
# Build the one-folder desktop bundle: dist/plugmem-studio/plugmem-studio
# Uses the repo's .venv (made by scripts/install.sh). About 4-6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
data=$(realpath -m "${PLUGMEM_BUNDLE_DATA:-build/bundle-data}")
export PLUGMEM_BUNDLE_DATA="$data"
t0=$(date +%s)
.venv/bin/python packaging/prepare_models.py "$data"
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/plugmem-studio.spec
cp packaging/plugmem-studio.desktop resources/icons/plugmem-studio.svg dist/plugmem-studio/
echo "built dist/plugmem-studio/plugmem-studio in $(( $(date +%s) - t0 )) s; size $(du -sh dist/plugmem-studio | cut -f1)"
