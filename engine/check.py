"""Check a pack and what is derived from it; repair what can be rebuilt; re-encode keys.

What is checked, in order (each failure is one line in ``problems``):
1. the file opens as a pack (SQLite, schema, metadata) — not repairable here;
2. SQLite's own ``quick_check`` — not repairable here (restore a backup or export);
3. the FTS5 index agrees with the entries — repair rebuilds it;
4. the encoder that made the vectors is the running one — fixed only by ``reencode``;
5. every active entry has an up-to-date vector — repair encodes the missing ones;
6. the vector index cache beside the pack loads, is current and holds exactly the
   active entries, with each entry's stored key — repair rebuilds it from SQLite.
"""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

FTS_TABLE = "entries_fts"


def _quick_check(path: Path) -> list[str]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return [f"database: {exc}"]
    return [] if rows == ["ok"] else [f"database: {r}" for r in rows[:10]]


def _fts_problem(pack) -> str | None:
    con: sqlite3.Connection = pack.db.conn
    try:
        con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('integrity-check')")
    except sqlite3.DatabaseError as exc:
        return f"full-text index: {exc}"
    return None


def _rebuild_fts(pack) -> None:
    con: sqlite3.Connection = pack.db.conn
    with con:
        con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('rebuild')")


def _index_problem(pack, encoder) -> str | None:
    from engine.index import IndexCacheError, VectorIndex
    from engine.memory import _read_stamp, index_dir_for

    folder = index_dir_for(pack.path)
    if not folder.exists():
        return "vector index: cache missing" if pack.count("active") else None
    stamp = _read_stamp(folder)
    if stamp is None:
        return "vector index: cache unreadable (no valid stamp)"
    if stamp.get("encoder") != (pack.encoder.to_dict() if pack.encoder else None):
        return "vector index: made with another encoder"
    try:
        index = VectorIndex.load(folder, stamp)
    except IndexCacheError as exc:
        return f"vector index: {exc}"
    if int(stamp.get("content_version", -1)) != int(pack.content_version):
        return f"vector index: stale (made at content version {stamp.get('content_version')}, pack is at {pack.content_version})"
    active = pack.all_ids_array("active")
    if len(index) != len(active) or not all(int(i) in index for i in active[:: max(1, len(active) // 1000)]):
        return f"vector index: holds {len(index):,} keys but the pack has {len(active):,} active entries"
    return _index_keys_problem(pack, index, active)


KEYS_COMPARED = 50_000  # up to this many active entries every key is compared (0.7 s on 2 cores), else a sample


def _index_keys_problem(pack, index, active: np.ndarray) -> str | None:
    """Compare the cache's keys with the entries' stored keys: a cache stamped current
    but holding an entry's old key serves the entry for its old text at score 1.0."""
    from engine.memory import index_key_mismatches

    if len(active) <= KEYS_COMPARED:
        ids = active.tolist()
    else:  # recently changed entries are where a writer that missed changes leaves old keys
        half = KEYS_COMPARED // 2
        spread = active[:: max(1, len(active) // half)].tolist()
        ids = list(dict.fromkeys(pack.recently_changed_ids(half) + spread))
    differ = index_key_mismatches(pack, index, ids)
    if not differ:
        return None
    shown = ", ".join(map(str, differ[:5])) + (" ..." if len(differ) > 5 else "")
    return (f"vector index: {len(differ):,} of {len(ids):,} keys compared differ from the entries' "
            f"stored keys (entries {shown}); the cache is stale")


def check_pack(path: Path, *, repair: bool = False, encoder=None, on_message: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Return {"ok", "problems", "repaired", "ok_after_repair"} for the pack at ``path``."""
    from engine.store import Pack, PackError

    say = on_message or log.info
    path = Path(path)
    problems: list[str] = []
    repaired: list[str] = []
    if not path.exists():
        return {"ok": False, "problems": [f"{path}: no such file"], "repaired": [], "ok_after_repair": False}
    try:
        pack = Pack.open(path)
    except PackError as exc:
        return {"ok": False, "problems": [str(exc)], "repaired": [], "ok_after_repair": False}
    try:
        problems += _quick_check(path)
        fts = _fts_problem(pack)
        if fts:
            problems.append(fts)
            if repair:
                _rebuild_fts(pack)
                repaired.append("full-text index rebuilt")
        from engine.evaluate.edits import AUTHOR as EVAL_AUTHOR

        left = pack.undo_run_by(EVAL_AUTHOR)
        if left:
            problems.append(f"edits: {left} temporary edit(s) of an interrupted edit evaluation are still applied")
        if encoder is None:
            from engine.encode import get_default_encoder

            encoder = get_default_encoder()
        fp = encoder.fingerprint
        foreign = pack.encoder is not None and pack.encoder != fp
        if foreign:
            problems.append(
                f"encoder: pack was encoded with {pack.encoder.describe()}, the running encoder is {fp.describe()} "
                f"(run `plugmem reencode {path}`)"
            )
        else:
            stale = len(pack.stale_vector_ids())
            if stale:
                problems.append(f"vectors: {stale:,} active entries have no up-to-date vector")
            idx = _index_problem(pack, encoder)
            if idx:
                problems.append(idx)
            if repair and (stale or idx):
                pack.close()
                from engine.memory import Memory

                with Memory.open(path, encoder, on_message=say) as mem:
                    n = mem.ensure_vectors()
                    mem.rebuild_index()
                repaired.append(f"encoded {n:,} vectors and rebuilt the vector index")
                pack = Pack.open(path)
        if repair and left:
            pack.close()
            from engine.evaluate.edits import undo_interrupted_evaluation
            from engine.memory import Memory

            with Memory.open(path, encoder, on_message=say) as mem:
                repaired.append(f"undid {undo_interrupted_evaluation(mem)} temporary edit(s) of an interrupted edit evaluation")
            pack = Pack.open(path)
    finally:
        pack.close()
    ok_after = None
    if repair and problems:
        again = check_pack(path, repair=False, encoder=encoder)
        ok_after = again["ok"]
        if not ok_after:
            say("still wrong after repair: " + "; ".join(again["problems"]))
    return {"ok": not problems, "problems": problems, "repaired": repaired, "ok_after_repair": ok_after if repair else None}


def reencode_pack(path: Path, *, encoder=None, progress: Callable[..., None] | None = None, on_message=None) -> dict[str, Any]:
    """Re-encode every entry of a pack with ``encoder`` (default: the running one) and rebuild its index.

    This is the explicit way to adopt a pack made with another encoder. Entries, history
    and undo are untouched; only the derived vectors change.
    """
    from engine.memory import Memory
    from engine.store import Pack

    if encoder is None:
        from engine.encode import get_default_encoder

        encoder = get_default_encoder()
    with Pack.open(Path(path)) as pack:
        before = pack.encoder
        pack.set_encoder(encoder.fingerprint)
    with Memory.open(path, encoder, on_message=on_message, progress=progress) as mem:  # rebuilds: encoder changed
        n = int(np.asarray(mem.pack.all_ids_array("active")).size)
    return {
        "pack": str(path),
        "entries": n,
        "encoder": encoder.fingerprint.describe(),
        "previous_encoder": before.describe() if before else None,
    }
