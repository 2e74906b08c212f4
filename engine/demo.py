"""The bundled demo workspace: one memory pack per demo domain, built once from resources/demo.

Building encodes a few thousand short facts (about 20-40 s on two CPU cores); after
that the packs open at once. An interrupted build resumes (it is a normal import).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from engine.resources import demo_dir, user_data_dir

log = logging.getLogger(__name__)


def demo_domains() -> list[str]:
    """Names of the bundled demo domains (folders of resources/demo with a facts.jsonl)."""
    root = demo_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/facts.jsonl"))


def ensure_demo_workspace(progress: Callable[[float, str], None] | None = None, folder: Path | None = None) -> dict:
    """Build (once) and return the demo workspace: {"folder", "packs": [paths], "probes": {domain: path}}."""
    from engine.jobs.build_memory import build_memory
    from engine.jobs.progress import wrap_progress

    progress = progress or (lambda f, m="": None)
    folder = Path(folder) if folder else user_data_dir() / "demo-workspace"
    folder.mkdir(parents=True, exist_ok=True)
    domains = demo_domains()
    if not domains:
        raise FileNotFoundError(f"no demo data found under {demo_dir()} (is the installation complete?)")
    packs, probes = [], {}
    for n, domain in enumerate(domains):
        src = demo_dir() / domain / "facts.jsonl"
        pack = folder / f"{domain}.plugmem"
        build_memory(
            {"pack": str(pack), "inputs": [str(src)], "name": domain, "author": "demo"},
            progress=wrap_progress(progress, n / len(domains), (n + 1) / len(domains)),
            should_stop=lambda: False,
        )
        packs.append(str(pack))
        held = demo_dir() / domain / "probes_heldout.jsonl"
        if held.exists():
            probes[domain] = str(held)
    return {"folder": str(folder), "packs": packs, "probes": probes}
