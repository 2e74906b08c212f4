#!/usr/bin/env bash
# One short job for a machine with an NVIDIA GPU (never part of CI): checks that the
# engine's CUDA paths give the CPU's results, then measures them against the CPU.
#   1. tests/engine/test_devices.py on CUDA (index, encoder, reader, PKM, weight patch)
#   2. bench/bench_devices.py: encoding, exact search at 1M and 10M rows, the reader,
#      a one-fact weight patch and a PKM training step, CPU and CUDA in the same run
#   3. with faiss-gpu installed (scripts/install.sh --gpu): the compressed index at 1M
# Figures print as Markdown; PLUGMEM_APPEND=1 appends them to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=.venv/bin/python
append=(); [ "${PLUGMEM_APPEND:-0}" = "1" ] && append=(--append)
$PY - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device here (CPU wheel, or no driver); nothing to check")
print("gpu_check:", torch.cuda.get_device_name(), "torch", torch.__version__)
PY
$PY -m pytest -q -p no:cacheprovider tests/engine/test_devices.py
$PY bench/bench_devices.py --sizes 1000000 10000000 "${append[@]}"
if $PY -c "import faiss, sys; sys.exit(0 if hasattr(faiss, 'StandardGpuResources') else 1)"; then
    $PY bench/bench_index_scale.py --sizes 1000000 "${append[@]}"
else
    echo "gpu_check: faiss has no GPU support here (scripts/install.sh --gpu installs it); index bench skipped"
fi
