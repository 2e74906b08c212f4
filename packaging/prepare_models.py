"""Prepare what the bundle carries besides code: the converted reader and prebuilt demo packs.

    .venv/bin/python packaging/prepare_models.py build/bundle-data

Writes ``OUT/models/reader`` (the default reader converted to safetensors, with its
GGUF digest in bundle.json, so the bundle needs neither the GGUF nor the converter)
and ``OUT/demo-packs`` (the demo domains built into packs with their index caches, so
the first start of the installed app copies them instead of encoding for a minute).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    from engine.demo import ensure_demo_workspace
    from engine.reader.reader import write_bundle

    t0 = time.perf_counter()
    reader = write_bundle(a.out / "models" / "reader")
    print(f"reader: {reader} ({sum(f.stat().st_size for f in reader.iterdir()) / 1e6:.0f} MB)")
    packs = a.out / "demo-packs"
    packs.mkdir(parents=True, exist_ok=True)
    ws = ensure_demo_workspace(folder=packs)
    for extra in packs.iterdir():  # only packs and their index caches travel
        if extra.suffix not in (".plugmem", ".index") and not extra.name.endswith(".plugmem.index"):
            print(f"not bundled: {extra.name}")
    print(f"demo packs: {', '.join(Path(x).name for x in ws['packs'])} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
