"""`plugmem index status|rebuild|compact`: a pack's vector index, seen and maintained by hand.

The app keeps the index by itself (background builds, compaction past a quarter of
tombstones); these commands show what it holds and let a script rebuild or compact it
at a chosen moment, waiting for the background work and saving the cache.
"""
from __future__ import annotations

import time
from pathlib import Path

from engine.cli.common import EXIT_INTERRUPTED, CliError, Output, ProgressBar, StopFlag, add_command, open_memory


def _folder_bytes(folder: Path) -> int:
    """Bytes on disk; a streamed build's key file and the cache file linked to it count once."""
    seen: dict[tuple[int, int], int] = {}
    if folder.is_dir():
        for p in folder.rglob("*"):
            if p.is_file():
                st = p.stat()
                seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def _status(mem) -> dict:
    from engine.memory import index_dir_for

    folder = index_dir_for(mem.pack.path)
    return {"pack": str(mem.pack.path), **mem.index.describe(), "cache": str(folder) if folder.is_dir() else None,
            "cache_bytes": _folder_bytes(folder)}


def _human(d: dict) -> str:
    search = d["search"] + (" (building " + d["planned"] + ")" if d["building"] and d["planned"] != "exact" else "")
    dead = d["tombstones"]
    share = f" ({dead / d['base_rows']:.0%} of the base)" if d["base_rows"] else ""
    lines = [
        f"pack:       {d['pack']}",
        f"entries:    {d['entries']:,} searchable ({d['base_rows']:,} base rows, {d['delta_rows']:,} recent)",
        f"search:     {search}; approximate from {d['approx_threshold']:,} rows, compressed from "
        f"{d['compressed_threshold']:,}",
        f"tombstones: {dead:,}{share}" + ("; compaction due" if d["needs_compaction"] and d["search"] != "exact"
                                          else ""),
        f"cache:      {d['cache'] or '(not saved yet)'}" + (f", {_size(d['cache_bytes'])}" if d["cache"] else ""),
    ]
    return "\n".join(lines)


def _wait(mem, a, out: Output, what: str) -> bool:
    """Wait for the index's background build; Ctrl+C cancels it (the index stays searchable). True when done."""
    if not mem.index.building:
        return True
    bar = ProgressBar(what, enabled=not a.json and not a.quiet)
    t0 = time.perf_counter()
    try:
        with StopFlag() as stop:
            while not mem.index.wait_ready(0.2):
                bar(0.0, f"{what}: {time.perf_counter() - t0:.0f} s")
                if stop():
                    mem.index.cancel_build()
                    mem.index.wait_ready()
                    return False
    finally:
        bar.close()
    return True


def cmd_status(a, out: Output) -> int:
    with open_memory(a.pack, out) as mem:
        if a.wait:
            _wait(mem, a, out, "index build")
        d = _status(mem)
    out.emit(d, lambda: _human(d))
    return 0


def cmd_rebuild(a, out: Output) -> int:
    with open_memory(a.pack, out) as mem:
        bar = ProgressBar("rebuilding", enabled=not a.json and not a.quiet)
        t0 = time.perf_counter()
        try:
            mem.rebuild_index(bar)
        finally:
            bar.close()
        if not _wait(mem, a, out, "building the approximate index"):
            out.info("plugmem: interrupted: the approximate index was not built; search stays exact until the "
                     "next build")
            return EXIT_INTERRUPTED
        if not mem.save_index():
            raise CliError(f"{a.pack}: the rebuilt index could not be saved (see the message above)")
        d = {**_status(mem), "seconds": round(time.perf_counter() - t0, 2)}
    out.emit(d, lambda: f"rebuilt in {d['seconds']:.1f} s\n" + _human(d))
    return 0


def cmd_compact(a, out: Output) -> int:
    with open_memory(a.pack, out) as mem:
        before = mem.index.describe()["tombstones"]
        if not before and not a.force:
            d = {**_status(mem), "dropped": 0}
            out.emit(d, lambda: "nothing to compact: no tombstones\n" + _human(d))
            return 0
        t0 = time.perf_counter()
        mem.index.compact()
        if not _wait(mem, a, out, "compacting"):
            out.info("plugmem: interrupted: the compaction was cancelled; the index is as it was")
            return EXIT_INTERRUPTED
        if not mem.save_index():
            raise CliError(f"{a.pack}: the compacted index could not be saved (see the message above)")
        d = {**_status(mem), "dropped": before - mem.index.describe()["tombstones"],
             "seconds": round(time.perf_counter() - t0, 2)}
    out.emit(d, lambda: f"compacted in {d['seconds']:.1f} s: {d['dropped']:,} tombstones dropped\n" + _human(d))
    return 0


def add_parsers(sub, common) -> None:
    group = sub.add_parser("index", help="a pack's vector index: what it holds, rebuild it, compact it",
                           description="The vector index beside a pack (<pack>.index/): status, rebuild, compact.")
    index_sub = group.add_subparsers(dest="index_cmd", required=True, metavar="COMMAND")
    sp = add_command(index_sub, [common], "status", cmd_status,
                     "entries, tombstones, search path (exact, HNSW, IVF-PQ) and cache size of a pack's index")
    sp.add_argument("pack")
    sp.add_argument("--wait", action="store_true", help="wait for a background build first")
    sp = add_command(index_sub, [common], "rebuild", cmd_rebuild,
                     "rebuild the index from the pack's stored keys, wait for its approximate part, save it")
    sp.add_argument("pack")
    sp = add_command(index_sub, [common], "compact", cmd_compact,
                     "drop tombstoned rows now (it also happens by itself past a quarter of the base)")
    sp.add_argument("pack")
    sp.add_argument("--force", action="store_true", help="rebuild the index even when it has no tombstones")
