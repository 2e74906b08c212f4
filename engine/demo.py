"""The bundled demo workspace: one memory pack per demo domain, built once from resources/demo
(its facts as entries, its triples as the pack's entities).

Building encodes 5,724 short facts (about 1.5 minutes on two idle CPU cores); after
that the packs open at once. An interrupted build resumes (it is a normal import).
A packaged install ships the packs prebuilt (``resources/demo-packs/``, made by
``packaging/prepare_models.py``): they are copied on first start instead of built.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

from engine.resources import demo_dir, resources_dir, user_data_dir

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
    from engine.progress import wrap_progress

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
        _copy_prebuilt(domain, pack)
        build_memory(
            {"pack": str(pack), "inputs": [str(src)], "name": domain, "author": "demo"},
            progress=wrap_progress(progress, n / len(domains), (n + 1) / len(domains)),
            should_stop=lambda: False,
        )
        _import_demo_triples(domain, pack)
        packs.append(str(pack))
        held = demo_dir() / domain / "probes_heldout.jsonl"
        if held.exists():
            probes[domain] = str(held)
    return {"folder": str(folder), "packs": packs, "probes": probes}


def _import_demo_triples(domain: str, pack: Path) -> int:
    """Import the domain's bundled triples (its entities, their aliases and relations) into
    its demo pack while the pack has no entities, so the Entities tab and map-tuning work
    on the demo without a manual import (~0.1 s). Returns how many triples were added."""
    src = demo_dir() / domain / "triples.jsonl"
    if not src.is_file():
        return 0
    from engine.mechanisms.plugins.entities import import_triples
    from engine.mechanisms.plugins.errors import TriplesError
    from engine.store.errors import PackError
    from engine.store.pack import Pack

    try:
        with Pack.open(pack) as p:
            if p.entities():
                return 0
            res = import_triples(p, [src])
    except (TriplesError, PackError) as exc:  # the entries matter more: the demo opens without its entities
        log.warning("demo pack %s: its entities were not imported: %s", domain, exc)
        return 0
    log.info("demo pack %s: %d entities, %d triples imported from %s", domain, res.entities_added,
             res.triples_added, src)
    return res.triples_added


def prebuilt_dir() -> Path:
    return resources_dir() / "demo-packs"


def _copy_prebuilt(domain: str, pack: Path) -> bool:
    """Copy the shipped prebuilt pack (and its index cache) when the user has none yet."""
    src = prebuilt_dir() / f"{domain}.plugmem"
    if pack.exists() or not src.is_file():
        return False
    tmp = pack.with_name(pack.name + ".copying")
    shutil.copyfile(src, tmp)
    index = src.with_name(src.name + ".index")
    if index.is_dir():
        dest = pack.with_name(pack.name + ".index")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(index, dest)
    tmp.replace(pack)  # the pack appears whole or not at all
    log.info("demo pack %s copied from %s", domain, src)
    return True
