"""Check a pack and what is derived from it; repair what can be rebuilt; re-encode keys.

``check_pack`` never raises for a damaged or hostile pack: every finding is one line in
``problems``, every repair one line in ``repaired``, and what a repair cannot fix one
line in ``not_repaired``. The checks, in order (each a small function of a ``_Check``):

1. the file opens as a pack: SQLite, the exact schema PlugMem makes (no triggers, views
   or other code), readable metadata — a hostile schema is refused, never modified;
   damaged metadata is re-derived by repair where it can be (versions, vector dtype);
2. SQLite's own ``quick_check`` — not repairable here (restore a backup);
3. entry, history and entity rows are of the right types — repair restores what can
   be derived (tags from the tag table, versions, texts stored as UTF-8 blobs);
4. the FTS5 index is sound and holds every entry — repair rebuilds (or remakes) it;
5. edits left by an interrupted edit evaluation — repair undoes them;
6. the encoder that made the vectors is the running one — fixed only by ``reencode``;
7. every active entry has a usable, up-to-date, unit-length key, and a sample of keys
   (all with ``full``) matches its text re-encoded — repair encodes them afresh;
8. the vector index cache beside the pack loads, is current and holds exactly the
   active entries, with each entry's stored key — repair rebuilds it from SQLite.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

FTS_TABLE = "entries_fts"
# Measured on the 3,000 demo facts: a key re-encoded from its own text (other batches,
# other padding, float16 storage) has cosine >= 0.9999997 with the stored one; the
# closest pair of distinct facts ("A borders B" / "B borders A") reaches 0.995, p99 0.97.
# 0.999 sits between, with ample room for other hardware's float error (~1e-5).
KEY_MATCH_MIN_COSINE = 0.999
KEY_NORM_TOLERANCE = 0.01  # the encoder's keys are unit length; float16 storage moves it by ~1e-3
KEY_SAMPLE = 256  # keys re-encoded by a plain check (about 1.5 s on 2 cores)


@dataclass
class _Check:
    path: Path
    pack: Any
    repair: bool
    full: bool
    encoder: Any = None
    say: Callable[[str], None] = log.info
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    not_repaired: list[str] = field(default_factory=list)
    rebuild: bool = False  # keys and index to be rebuilt by a Memory at the end
    halt: bool = False  # the checks after this one would only repeat its finding
    keys_usable: bool = True  # False when the pack's keys are another encoder's

    def found(self, problem: str, *, cannot: str | None = None) -> None:
        self.problems.append(problem)
        if self.repair and cannot:
            self.not_repaired.append(cannot)

    def can_write(self) -> bool:
        if self.repair and self.pack.readonly:
            self.not_repaired.append(f"nothing repaired: {self.pack.readonly_reason or 'opened read-only'}")
            self.repair = False
        return self.repair


# ---------------------------------------------------------------------------- the checks
def _check_database(c: _Check) -> None:
    from engine.store.sqlite_guard import connect

    try:
        con = connect(c.path, readonly=True)
        try:
            with con.long_statements():
                rows = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        shown = "; ".join(str(r) for r in rows[:3]) + (f" (and {len(rows) - 3} more)" if len(rows) > 3 else "")
        c.found(f"database: damaged ({shown})",
                cannot="database pages: not repairable here; restore a backup, or export what still reads")


def _check_meta(c: _Check) -> None:
    problems = c.pack.meta_problems()
    for p in problems:
        c.found(f"metadata: {p}")
    if problems and c.can_write():
        c.repaired += c.pack.repair_meta()
        c.rebuild = True
    elif problems:  # versions and dtype that cannot be read: every later check reads them
        c.halt = True


_DAMAGED_ROWS = """
SELECT id, title, text, source, tags, status, created, updated, version FROM entries
WHERE typeof(title) != 'text' OR typeof(text) != 'text' OR typeof(source) != 'text' OR typeof(status) != 'text'
   OR status NOT IN ('active', 'disabled', 'deleted') OR typeof(version) != 'integer'
   OR typeof(created) NOT IN ('integer', 'real') OR typeof(updated) NOT IN ('integer', 'real')
   OR typeof(tags) != 'text'
   OR (CASE WHEN typeof(tags) = 'text' AND json_valid(tags) THEN json_type(tags) END) IS NOT 'array'
   OR (CASE WHEN typeof(tags) = 'text' AND json_valid(tags) AND json_type(tags) = 'array'
            THEN (SELECT count(*) FROM json_each(tags) WHERE type != 'text') END) > 0
ORDER BY id
"""

_DAMAGED_ALIASES = """
SELECT id FROM entities WHERE typeof(aliases) != 'text'
   OR (CASE WHEN typeof(aliases) = 'text' AND json_valid(aliases) THEN json_type(aliases) END) IS NOT 'array'
   OR (CASE WHEN typeof(aliases) = 'text' AND json_valid(aliases) AND json_type(aliases) = 'array'
            THEN (SELECT count(*) FROM json_each(aliases) WHERE type != 'text') END) > 0
ORDER BY id
"""

_DAMAGED_HISTORY = """
SELECT id FROM history WHERE
    (before IS NOT NULL AND (CASE WHEN typeof(before) = 'text' AND json_valid(before) THEN json_type(before) END)
        IS NOT 'object')
 OR (after IS NOT NULL AND (CASE WHEN typeof(after) = 'text' AND json_valid(after) THEN json_type(after) END)
        IS NOT 'object')
ORDER BY id
"""


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _check_rows(c: _Check) -> None:
    from engine.store.pack import entry_row_problem

    con = c.pack.conn
    with con.long_statements():
        rows = con.execute(_DAMAGED_ROWS).fetchall()
        hist = [r[0] for r in con.execute(_DAMAGED_HISTORY)]
        aliases = [r[0] for r in con.execute(_DAMAGED_ALIASES)]
    if rows:
        first = entry_row_problem(rows[0]) or "has a value of the wrong type"
        c.found(f"entries: {len(rows):,} damaged (entry {rows[0][0]} {first}; ids {_ids([r[0] for r in rows])})")
        if c.can_write():
            fixed, left = _repair_rows(c, rows)
            if fixed:
                c.repaired.append(f"restored the damaged fields of {len(fixed):,} entries ({_ids(fixed)})")
                c.rebuild = True
            if left:
                c.not_repaired.append(f"entries {_ids(left)}: their text is not readable as text (not UTF-8); "
                                      "nothing to derive it from")
    if hist:
        c.found(f"history: {len(hist):,} rows hold a state that is not a JSON object (rows {_ids(hist)})",
                cannot=f"history rows {_ids(hist)}: not derivable; undo and redo of their changes stay refused")
    if aliases:
        c.found(f"entities: {len(aliases):,} have aliases that are not a JSON list of strings (ids {_ids(aliases)})",
                cannot=f"entity aliases {_ids(aliases)}: not derivable; import the triples file again")


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None if value is None else str(value)


def _repair_rows(c: _Check, rows: list) -> tuple[list[int], list[int]]:
    """Derive what damaged entry fields can be derived from; (fixed ids, ids left as they are)."""
    import json
    import time

    from engine.store.pack import json_strings

    con, fixed, left = c.pack.conn, [], []
    now = time.time()
    with con:
        for eid, title, text, source, tags, status, created, updated, version in rows:
            text = _as_text(text)
            if text is None:
                left.append(eid)
                continue
            if json_strings(tags) is None:  # the tag table holds the same tags, one row each
                tags = json.dumps([r[0] for r in con.execute("SELECT tag FROM entry_tags WHERE entry_id=? ORDER BY tag",
                                                             (eid,))])
            if not isinstance(version, int):  # above every version its history names, so its key reads stale
                version = 1 + int(con.execute(
                    "SELECT coalesce(max(CAST(json_extract(after, '$.version') AS INTEGER)), 0) FROM history "
                    "WHERE entry_id=? AND typeof(after)='text' AND json_valid(after)", (eid,)).fetchone()[0])
            times = [t if isinstance(t, (int, float)) else now for t in (created, updated)]
            status = status if status in ("active", "disabled", "deleted") else "disabled"
            con.execute("UPDATE entries SET title=?, text=?, source=?, tags=?, status=?, created=?, updated=?, "
                        "version=? WHERE id=?", (_as_text(title) or "", text, _as_text(source) or "", tags, status,
                                                 times[0], times[1], version, eid))
            con.execute("DELETE FROM vectors WHERE entry_id=?", (eid,))
            fixed.append(eid)
    if fixed:
        _rebuild_fts(c.pack)  # the texts it indexed were not the texts now stored
    return fixed, left


def _check_fts(c: _Check) -> None:
    con = c.pack.conn
    problem = None
    try:
        with con.long_statements():
            if c.pack.readonly:  # integrity-check is an INSERT; a query still loads the index's structure
                con.execute(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH 'a*' LIMIT 1").fetchall()
            else:
                con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('integrity-check')")
            # integrity-check (SQLite 3.40) does not compare an external-content index with
            # its table: the docsize table has one row per indexed entry
            missing = con.execute(f"SELECT count(*) FROM entries WHERE id NOT IN "
                                  f"(SELECT id FROM {FTS_TABLE}_docsize)").fetchone()[0]
            extra = con.execute(f"SELECT count(*) FROM {FTS_TABLE}_docsize WHERE id NOT IN "
                                f"(SELECT id FROM entries)").fetchone()[0]
        if missing or extra:
            problem = (f"full-text index: {missing:,} entries missing from it"
                       + (f", {extra:,} rows for entries that do not exist" if extra else ""))
    except sqlite3.DatabaseError as exc:
        problem = f"full-text index: damaged ({exc})"
    if problem:
        c.found(problem)
        if c.can_write():
            c.repaired.append(_rebuild_fts(c.pack))


def _rebuild_fts(pack) -> str:
    """Rebuild the full-text index from the entries; one too damaged for FTS5 to load is remade."""
    con = pack.conn
    try:
        with con.long_statements(), con:
            con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('rebuild')")
        return "full-text index rebuilt"
    except sqlite3.DatabaseError as exc:
        log.info("FTS rebuild failed (%s); remaking its tables", exc)
    # FTS5 cannot even drop a table whose structure record is damaged ("vtable constructor
    # failed"): its shadow tables are set back to what a new index holds, then rebuilt
    blank = _blank_fts_rows()
    with con.long_statements(), _shadow_writes(con), con:
        for table, rows in blank.items():
            con.execute(f"DELETE FROM {table}")
            if rows:
                con.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)
        con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('rebuild')")
    return "full-text index remade and rebuilt (it was too damaged to rebuild in place)"


def _blank_fts_rows() -> dict[str, list[tuple]]:
    """The shadow-table rows of a newly made full-text index of the pack's definition."""
    from engine.store.schema import MIGRATIONS, _statements

    create = next(s for s in _statements(MIGRATIONS[1]) if s.startswith(f"CREATE VIRTUAL TABLE {FTS_TABLE}"))
    mem = sqlite3.connect(":memory:")
    try:
        mem.execute("CREATE TABLE entries(id INTEGER PRIMARY KEY, title TEXT, text TEXT)")
        mem.execute(create)
        return {f"{FTS_TABLE}_{t}": mem.execute(f"SELECT * FROM {FTS_TABLE}_{t}").fetchall()
                for t in ("data", "idx", "docsize", "config")}
    finally:
        mem.close()


@contextlib.contextmanager
def _shadow_writes(con: sqlite3.Connection):
    """SQLITE_DBCONFIG_DEFENSIVE forbids writing shadow tables; lift it for this repair only
    (the schema was checked on open: these are the pack's own FTS5 tables)."""
    if not hasattr(con, "setconfig"):
        yield
        return
    con.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, False)
    try:
        yield
    finally:
        con.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)


def _check_eval_edits(c: _Check) -> None:
    from engine.evaluate.edits import AUTHOR as EVAL_AUTHOR

    left = c.pack.undo_run_by(EVAL_AUTHOR)
    if not left:
        return
    c.found(f"edits: {left} temporary edit(s) of an interrupted edit evaluation are still applied")
    if c.can_write():
        from engine.evaluate.edits import undo_interrupted_evaluation
        from engine.memory import Memory

        c.pack.close()
        with Memory.open(c.path, c.encoder, on_message=c.say) as mem:
            c.repaired.append(f"undid {undo_interrupted_evaluation(mem)} temporary edit(s) of an interrupted "
                              "edit evaluation")
        c.pack = _reopen(c.path)


def _check_encoder(c: _Check) -> None:
    fp = c.encoder.fingerprint
    mine = c.pack.encoder
    if mine is not None and mine != fp:
        c.keys_usable = False
        c.found(f"encoder: pack was encoded with {mine.describe()}, the running encoder is {fp.describe()}",
                cannot=f"keys of another encoder: re-encode them with `plugmem reencode {c.path}`")


def _check_keys(c: _Check) -> None:
    """Keys that are missing, stale, damaged, not unit length, or that do not match their text."""
    if not c.keys_usable:
        return
    pack = c.pack
    stale = pack.stale_vector_ids()
    if stale:
        c.found(f"vectors: {len(stale):,} active entries have no up-to-date key")
        c.rebuild = c.rebuild or c.repair
    damaged: list[int] = []
    off_norm: list[int] = []
    ids_seen: list[np.ndarray] = []
    with pack.conn.long_statements():
        for ids, keys in pack.iter_active_vectors(damaged=damaged):
            norms = np.linalg.norm(keys, axis=1)
            off_norm += ids[np.abs(norms - 1.0) > KEY_NORM_TOLERANCE].tolist()
            ids_seen.append(ids)
    damaged = sorted(set(damaged) - set(stale))  # wrong-size keys are stale already
    if damaged:
        c.found(f"vectors: {len(damaged):,} keys are damaged (not numbers, NaN or Inf: ids {_ids(damaged)})")
    if off_norm:
        c.found(f"vectors: {len(off_norm):,} keys are not unit length, so no encoder made them "
                f"(ids {_ids(off_norm)})")
    held = np.concatenate(ids_seen) if ids_seen else np.zeros(0, np.int64)
    sample = held.tolist() if c.full or len(held) <= KEY_SAMPLE else random.sample(held.tolist(), KEY_SAMPLE)
    mismatched, fresh = _mismatched_keys(c, sorted(set(sample) - set(off_norm)))
    if mismatched:
        scope = "every" if len(sample) == len(held) else f"{len(sample):,} sampled of {len(held):,}"
        hint = "" if scope == "every" else f"; `plugmem check {c.path} --full` checks every key"
        c.found(f"vectors: {len(mismatched):,} keys ({scope} checked) do not match their entry's text "
                f"(cosine below {KEY_MATCH_MIN_COSINE}: ids {_ids(mismatched)}){hint}")
    redo = sorted(set(damaged) | set(off_norm) | set(mismatched))
    if redo and c.can_write():
        entries = {e.id: e for e in pack.get_many(redo)}
        vecs = [fresh[i] for i in mismatched]
        rest = [i for i in redo if i not in fresh and i in entries]
        if rest:
            vecs += list(c.encoder.encode([entries[i].text for i in rest]))
        pack.set_vectors([i for i in mismatched] + rest, np.asarray(vecs, dtype=np.float32))
        c.repaired.append(f"encoded {len(redo):,} keys afresh from their texts")
        c.rebuild = True
        if mismatched and len(sample) < len(held):
            c.not_repaired.append(f"only sampled keys were compared; `plugmem check {c.path} --full --repair` "
                                  "compares and repairs every key")


def _mismatched_keys(c: _Check, ids: list[int]) -> tuple[list[int], dict[int, np.ndarray]]:
    """Ids among ``ids`` whose stored key is not their text's key, and those texts' fresh keys."""
    if not ids:
        return [], {}
    pack = c.pack
    bad, fresh = [], {}
    for start in range(0, len(ids), 512):
        part = ids[start:start + 512]
        entries = pack.get_many(part)
        stored, ok = pack.get_vectors([e.id for e in entries])
        new = np.asarray(c.encoder.encode([e.text for e in entries]), dtype=np.float32)
        norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(new, axis=1)
        cos = (stored * new).sum(axis=1) / np.maximum(norms, 1e-12)
        for e, good, cs, key in zip(entries, ok, cos, new):
            if good and cs < KEY_MATCH_MIN_COSINE:
                bad.append(e.id)
                fresh[e.id] = key
    return bad, fresh


def _check_index(c: _Check) -> None:
    if not c.keys_usable:
        return
    problem = _index_problem(c.pack, c.encoder)
    if problem is None:
        return
    from engine.memory import index_dir_for

    folder = index_dir_for(c.path)
    if folder.exists() and not folder.is_dir():
        c.found(problem)
        if c.can_write():
            aside = _free_name(folder.with_name(folder.name + ".not-an-index"))
            folder.rename(aside)
            c.repaired.append(f"moved the file in the index cache's place aside, to {aside.name}")
            c.rebuild = True
        return
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):  # a sound cache may well be read-only
        c.found(problem, cannot=f"vector index: {folder} is not writable; make it writable (or remove it) "
                                "and repair again")
        return
    c.found(problem)
    c.rebuild = c.rebuild or c.repair


def _free_name(path: Path) -> Path:
    n, cand = 1, path
    while cand.exists():
        n += 1
        cand = path.with_name(f"{path.name}.{n}")
    return cand


def _index_problem(pack, encoder) -> str | None:
    from engine.index import IndexCacheError, VectorIndex
    from engine.memory import _read_stamp, index_dir_for

    folder = index_dir_for(pack.path)
    if folder.exists() and not folder.is_dir():
        return f"vector index: {folder.name} is a file, not the index cache folder"
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


# ---------------------------------------------------------------------------- driver
# Each check reads the pack through ``c.pack``; one that fails on a damaged database is
# reported as a problem of its own, so check itself never raises.
CHECKS: tuple[tuple[str, Callable[[_Check], None]], ...] = (
    ("metadata", _check_meta),
    ("entries", _check_rows),
    ("full-text index", _check_fts),
    ("edits", _check_eval_edits),
    ("encoder", _check_encoder),
    ("vectors", _check_keys),
    ("vector index", _check_index),
)


def _reopen(path: Path):
    from engine.store import Pack

    return Pack.open(path, damaged_ok=True)


def check_pack(path: Path, *, repair: bool = False, full: bool = False, encoder=None,
               on_message: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Return {"ok", "problems", "repaired", "not_repaired", "ok_after_repair"} for the pack at ``path``.

    ``full`` re-encodes every key to compare it with its text (else a random sample of
    ``KEY_SAMPLE``).
    """
    from engine.store import PackError

    say = on_message or log.info
    path = Path(path)

    def report(c: _Check | None, problems: list[str], ok_after=None) -> dict[str, Any]:
        return {"ok": not problems, "problems": problems, "repaired": c.repaired if c else [],
                "not_repaired": c.not_repaired if c else [], "ok_after_repair": ok_after if repair else None}

    if not path.exists():
        return report(None, [f"{path}: no such file"], False)
    try:
        pack = _reopen(path)
    except PackError as exc:
        problems = [str(exc)]
        if "refused" not in problems[0] and "newer PlugMem" not in problems[0]:  # unverified schemas: not read
            problems += [p for p in _db_problems(path) if p not in problems]
        out = report(None, problems, False)
        if repair:
            out["not_repaired"] = [f"{path}: not a pack PlugMem can open, left as it is" if "refused" not in
                                   problems[0] else f"{path}: a pack with a schema PlugMem did not make is never "
                                                    "modified; ask its author for a clean copy"]
        return out
    c = _Check(path, pack, repair, full, say=say)
    try:
        _check_database(c)
        if c.problems:  # damaged pages: the other checks would only read garbage
            return report(c, c.problems, False)
        c.encoder = encoder
        if c.encoder is None:
            from engine.encode import get_default_encoder

            c.encoder = get_default_encoder()
        for name, check in CHECKS:
            try:
                check(c)
            except (sqlite3.DatabaseError, PackError, OSError) as exc:
                c.found(f"{name}: could not be checked ({exc})")
            if c.halt:
                break
        if c.rebuild and c.keys_usable and c.can_write():
            _rebuild_keys_and_index(c)
    finally:
        c.pack.close()
    ok_after = None
    if repair and c.problems:
        again = check_pack(path, repair=False, full=full, encoder=c.encoder)
        ok_after = again["ok"]
        if not ok_after:
            say("still wrong after repair: " + "; ".join(again["problems"]))
    return report(c, c.problems, ok_after)


def _db_problems(path: Path) -> list[str]:
    c = _Check(path, None, False, False)
    _check_database(c)
    return c.problems


def _rebuild_keys_and_index(c: _Check) -> None:
    from engine.memory import Memory

    c.pack.close()
    try:
        with Memory.open(c.path, c.encoder, on_message=c.say) as mem:
            n = mem.ensure_vectors()
            mem.rebuild_index()
        c.repaired.append(f"encoded {n:,} missing keys and rebuilt the vector index")
    except (sqlite3.DatabaseError, OSError) as exc:
        c.not_repaired.append(f"vector index: could not be rebuilt ({exc})")
    c.pack = _reopen(c.path)


def reencode_pack(path: Path, *, encoder=None, progress: Callable[..., None] | None = None, on_message=None) -> dict[str, Any]:
    """Re-encode every entry of a pack with ``encoder`` (default: the running one) and rebuild its index.

    This is the explicit way to adopt a pack made with another encoder, and the way to
    stop trusting keys made elsewhere (a shared pack's keys may have been crafted to be
    retrieved for other questions). Entries, history and undo are untouched; only the
    derived vectors and the index cache change.
    """
    from engine.memory import Memory
    from engine.store import Pack

    if encoder is None:
        from engine.encode import get_default_encoder

        encoder = get_default_encoder()
    with Pack.open(Path(path)) as pack:
        before = pack.encoder
        pack.set_encoder(encoder.fingerprint)
    with Memory.open(path, encoder, on_message=on_message, progress=progress, trust_keys=False) as mem:
        n = int(np.asarray(mem.pack.all_ids_array("active")).size)
    return {
        "pack": str(path),
        "entries": n,
        "encoder": encoder.fingerprint.describe(),
        "previous_encoder": before.describe() if before else None,
    }
