"""A memory = a pack (source of truth) + the key encoder + the vector index, kept in sync.

This is the one write path for a pack's knowledge: every mutation goes through the
pack (which records history and the inverse for undo), then only the touched entries
are re-encoded and updated in the index in place. Disabled and deleted entries leave
the index at once, so search never returns them.

The index is a cache stored beside the pack (``<pack>.index/``) stamped with the
encoder and the content version up to which it holds every entry's state. That is not
always the pack's version: another process (a CLI edit while the app has the pack
open) changes entries this index has not seen, so a Memory keeps the version it has
folded in, catches up from the pack whenever the pack has moved past it (before a
search, on its own next change) and stamps a saved cache with it. On open the cache is
loaded and caught up when it is behind, or rebuilt from SQLite when it is missing,
unreadable, made by another encoder or found holding old keys for recently changed
entries; each case is reported through ``on_message``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from engine.fingerprint import EncoderFingerprint
from engine.store import Change, Entry, Pack, PackError
from engine.store.pack import check_unicode, clean_records, validate_fields

log = logging.getLogger(__name__)

MessageFn = Callable[[str], None]
RECENT_KEYS_CHECKED = 64  # on open, the most recently changed entries' keys are compared (about 1 ms)
KEY_TOLERANCE = 1e-3
# From this many entries a rebuild streams the keys to files instead of gathering them in RAM.
STREAM_BUILD_ROWS = 65_536


@dataclass
class Hit:
    """One search result: the entry and its score (inner product, or bm25 for full text)."""

    entry: Entry
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.entry.id,
            "title": self.entry.title,
            "text": self.entry.text,
            "source": self.entry.source,
            "score": round(float(self.score), 6),
        }


def index_dir_for(pack_path: str | Path) -> Path:
    """The cache folder of a pack's vector index: ``<pack file>.index``."""
    p = Path(pack_path)
    return p.with_name(p.name + ".index")


class Memory:
    """Pack + encoder + index. Create with :meth:`open`; close with :meth:`close`."""

    def __init__(self, pack: Pack, encoder, index, on_message: MessageFn | None = None) -> None:
        self.pack = pack
        self.encoder = encoder
        self.index = index
        self._say = on_message or (lambda m: log.info(m))
        self._index_dirty = False
        self._synced_cv = 0  # the index holds every entry's state up to this content version

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        encoder=None,
        *,
        create: bool = False,
        name: str | None = None,
        on_message: MessageFn | None = None,
        progress: Callable[[float, str], None] | None = None,
        trust_keys: bool = True,
    ) -> "Memory":
        """Open (or with ``create`` make) the pack at ``path`` with its index ready.

        ``encoder`` is a KeyEncoder; the default one is used when omitted. A pack made
        by another encoder raises ``EncoderMismatchError`` naming both. With
        ``trust_keys=False`` (a pack from elsewhere: its keys may have been crafted to be
        retrieved for other questions) no stored key or index cache is used: every active
        entry is encoded from its text, and the keys are stored when the pack is writable.
        """
        from engine.encode import get_default_encoder

        encoder = encoder or get_default_encoder()
        fp: EncoderFingerprint = encoder.fingerprint
        path = Path(path)
        if create and not path.exists():
            pack = Pack.create(path, name=name, encoder=fp)
        else:
            pack = Pack.open(path, encoder=fp)
        mem = cls(pack, encoder, None, on_message)
        try:
            if trust_keys:
                mem.index = mem._load_or_rebuild_index(progress)
            else:
                mem._say(f"Encoding every key of {pack.path.name} afresh (its stored keys are not trusted).")
                mem.ensure_vectors(progress, every=True)
                mem.index = mem.rebuild_index()
        except BaseException:
            pack.close()
            raise
        return mem

    def _stamp(self) -> dict[str, Any]:
        """What a saved cache holds: the content version folded in (not the pack's) and the encoder."""
        return {"content_version": int(self._synced_cv), "encoder": self._encoder_dict()}

    def _encoder_dict(self) -> dict[str, Any] | None:
        return self.pack.encoder.to_dict() if self.pack.encoder else None

    def _new_index(self):
        from engine.index import VectorIndex

        return VectorIndex(self.encoder.dim)

    def _load_or_rebuild_index(self, progress=None):
        from engine.index import IndexCacheError, VectorIndex

        folder = index_dir_for(self.pack.path)
        name = self.pack.path.name
        pack_cv = int(self.pack.content_version)
        old = _read_stamp(folder)
        if old is not None and old.get("encoder") == self._encoder_dict() and old.get("content_version") is not None:
            try:
                index = VectorIndex.load(folder, old)
            except IndexCacheError as exc:
                self._say(f"Index cache of {name} is unreadable ({exc}); rebuilding it from the pack.")
                return self.rebuild_index(progress)
            behind = int(old["content_version"])
            if behind > pack_cv:
                self._say(f"Index cache of {name} is newer than the pack; rebuilding it.")
                return self.rebuild_index(progress)
            self.index, self._synced_cv = index, behind
            self._watch(index)
            if behind != pack_cv:
                n = self._catch_up()
                self._say(f"Index of {name} caught up with {n} changed entries.")
            differ = index_key_mismatches(self.pack, index, self.pack.recently_changed_ids(RECENT_KEYS_CHECKED))
            if differ:  # a cache stamped newer than it is (saved by an older PlugMem that had missed changes)
                self._say(f"Index cache of {name} holds old keys for {len(differ)} recently changed "
                          f"entries (e.g. entry {differ[0]}); rebuilding it from the pack.")
                return self.rebuild_index(progress)
            if behind != pack_cv:
                self.save_index()
            return index
        if folder.exists():
            self._say(f"Index cache of {self.pack.path.name} is stale or unreadable; rebuilding it from the pack.")
        elif self.pack.count() > 0:
            self._say(f"No index cache for {self.pack.path.name}; building it from the pack.")
        return self.rebuild_index(progress)

    def _catch_up(self) -> int:
        """Fold in every entry changed since ``_synced_cv``, by this process or any other."""
        # Read the version first: a change committed after it is folded in again next time
        # (harmless), never counted as folded in without being so.
        now = int(self.pack.content_version)
        upsert, remove = self.pack.changes_since(self._synced_cv)
        if len(remove):
            self.index.remove(np.asarray(remove, dtype=np.int64))
        self._index_entries(list(map(int, upsert)))
        if now != self._synced_cv:
            self._synced_cv = now
            self._index_dirty = True
        return len(upsert) + len(remove)

    def refresh(self) -> int:
        """Catch the index up with changes other processes made to the pack (one cheap
        metadata read when there are none); returns how many entries were updated."""
        if int(self.pack.content_version) == self._synced_cv:
            return 0
        n = self._catch_up()
        log.info("index of %s caught up with %d entries changed elsewhere", self.pack.path.name, n)
        return n

    def rebuild_index(self, progress: Callable[[float, str], None] | None = None):
        """Rebuild the index from SQLite (encoding entries whose vectors are missing or stale).

        Past ``STREAM_BUILD_ROWS`` entries the keys are streamed from SQLite into key files in
        the cache folder (``VectorIndex.build_streamed``) instead of being gathered in RAM:
        15.4 GB of float32 at 10M entries, against one batch of 65,536 (docs/SCALE.md).
        """
        cv = int(self.pack.content_version)  # read first, as in _catch_up: later changes are caught up later
        self.ensure_vectors(progress)
        index = self._new_index()
        damaged: list[int] = []

        def chunks():
            yield from self.pack.iter_active_vectors(damaged=damaged)
            if damaged:  # NaN/Inf keys: derived data, so encoded again from the texts
                entries = self.pack.get_many(damaged)
                fresh = self.encoder.encode([e.text for e in entries])
                if not self.pack.readonly:
                    self.pack.set_vectors([e.id for e in entries], fresh)
                self._say(f"{self.pack.path.name}: {len(entries):,} damaged keys encoded again from their texts.")
                yield np.asarray([e.id for e in entries], dtype=np.int64), fresh

        if self.pack.count("active") >= STREAM_BUILD_ROWS:
            index.spill_dir = self._spill_dir()
            index.build_streamed(chunks())
        else:
            ids_parts, key_parts = [], []
            for ids, keys in chunks():
                ids_parts.append(ids)
                key_parts.append(keys)
            if ids_parts:
                index.build(np.concatenate(ids_parts), np.concatenate(key_parts))
            else:
                index.build(np.zeros(0, dtype=np.int64), np.zeros((0, self.encoder.dim), dtype=np.float32))
        self.index, self._synced_cv = index, cv
        self._watch(index)
        self.save_index()
        return index

    def _spill_dir(self) -> Path | None:
        """The cache folder, where a streamed build's key files become the cache's without a copy;
        None (the temp folder) when it cannot be made (read-only media)."""
        folder = index_dir_for(self.pack.path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return folder if os.access(folder, os.W_OK) else None

    def _watch(self, index) -> None:
        """A background index build that finishes marks the cache for saving (at close)."""
        def ready() -> None:
            self._index_dirty = True
        index.on_ann_ready = ready

    def ensure_vectors(self, progress: Callable[[float, str], None] | None = None, batch: int = 512,
                       *, every: bool = False) -> int:
        """Encode every active entry without an up-to-date vector (``every``: all of them). Returns how many."""
        stale = self.pack.all_ids_array("active").tolist() if every else self.pack.stale_vector_ids()
        total = len(stale)
        if total and self.pack.readonly:  # said before any encoding: the keys could not be kept
            raise PackError(f"{self.pack.path}: opened read-only ({self.pack.readonly_reason or 'as asked'}), so the "
                            f"{total:,} keys to encode for semantic search cannot be stored; copy the pack somewhere "
                            "writable, or search its text with --text")
        for start in range(0, total, batch):
            ids = stale[start : start + batch]
            entries = self.pack.get_many(ids)
            vecs = self.encoder.encode([e.text for e in entries])
            self.pack.set_vectors([e.id for e in entries], vecs, [e.version for e in entries])
            if progress:
                progress(min(1.0, (start + len(ids)) / total), f"encoded {start + len(ids):,} of {total:,}")
        return total

    def save_index(self) -> bool:
        """Write the index cache beside the pack; True when written.

        A failure (a full disk, a folder that cannot be written, a lock held too long) is
        said and never raised: the cache is derived, and the edit or search that led here
        has already succeeded. The next open catches up or rebuilds from the pack.
        """
        if self.index is None:
            return False
        try:
            self.index.save(index_dir_for(self.pack.path), self._stamp())
        except (OSError, RuntimeError) as exc:  # RuntimeError: faiss's own I/O errors
            self._say(f"Index cache of {self.pack.path.name} not saved ({exc}); "
                      "it is caught up or rebuilt from the pack next time.")
            return False
        self._index_dirty = False
        return True

    # ------------------------------------------------------------------ sync
    def _index_entries(self, ids: Sequence[int]) -> None:
        """Bring the index in line with these entries: upsert active ones, remove the rest."""
        if not ids:
            return
        entries = self.pack.get_many(list(ids))
        active = [e for e in entries if e.status == "active"]
        gone = [e.id for e in entries if e.status != "active"]
        if gone:
            self.index.remove(np.asarray(gone, dtype=np.int64))
        if active:
            vecs, ok = self.pack.get_vectors([e.id for e in active])
            missing = [i for i, good in enumerate(ok) if not good]
            if missing:
                fresh = self.encoder.encode([active[i].text for i in missing])
                self.pack.set_vectors([active[i].id for i in missing], fresh, [active[i].version for i in missing])
                vecs = np.array(vecs, dtype=np.float32, copy=True)
                vecs[missing] = fresh
            self.index.upsert(np.asarray([e.id for e in active], dtype=np.int64), np.asarray(vecs, dtype=np.float32))
        self._index_dirty = True

    def apply(self, change: Change | None) -> Change | None:
        """Update the index for a change made on the pack (also used after undo/redo)."""
        if change is None or not change.ids:
            return change
        if change.content_version == self._synced_cv + 1:
            self._index_entries(list(change.ids))
            self._synced_cv = change.content_version
        else:  # another process changed the pack since the index last caught up: fold that in too
            self._catch_up()
        return change

    # ------------------------------------------------------------------ mutations
    # Fields are validated before encoding: the encoder would spend a minute and gigabytes on a
    # 50 MB text (or fail on a lone surrogate) before the pack refused it. Keys are made from
    # the text as stored (normalised), not as given.
    def add(self, text: str, **fields: Any) -> Change:
        clean = validate_fields({"text": text}, require_text=True)["text"]
        vec = self.encoder.encode([clean])[0]
        return self.apply(self.pack.add(text, vector=vec, **fields))

    def add_many(self, records: Iterable[dict], **kw: Any) -> Change:
        clean = clean_records(records)
        vecs = self.encoder.encode([r["text"] for r in clean]) if clean else None
        return self.add_encoded(clean, vecs, **kw)

    def add_encoded(self, records: Sequence[dict], vectors: np.ndarray | None, **kw: Any) -> Change:
        """Add entries whose keys were computed elsewhere (Ray workers) by this pack's encoder;
        the caller has checked the encoder's fingerprint. Same transaction and index update as add_many."""
        return self.apply(self.pack.add_many(records, vectors=vectors, **kw))

    def edit(self, entry_id: int, **fields: Any) -> Change:
        text = fields.get("text")
        if text is not None and "vector" not in fields:
            clean = validate_fields({"text": text}, require_text=True)["text"]
            if clean != self.pack.get(entry_id).text:
                fields["vector"] = self.encoder.encode([clean])[0]
        return self.apply(self.pack.edit(entry_id, **fields))

    def set_status(self, ids: Sequence[int], status: str, **kw: Any) -> Change:
        return self.apply(self.pack.set_status(ids, status, **kw))

    def delete(self, ids: Sequence[int], **kw: Any) -> Change:
        return self.apply(self.pack.delete(ids, **kw))

    def undo(self, author: str | None = None) -> Change | None:
        return self.apply(self.pack.undo(author=author))

    def redo(self, author: str | None = None) -> Change | None:
        return self.apply(self.pack.redo(author=author))

    def end_redo(self) -> int:
        """Drop the redo stack (temporary changes undone by their maker must not be redone)."""
        return self.pack.end_redo()

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Semantic search: top-k active entries by inner product with the query's key."""
        check_unicode(query, "the query")
        q = self.encoder.encode([query])
        return self.search_vectors(q, k)[0]

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k for each query key; only active entries are returned."""
        self.refresh()
        # The index pads its answer to k columns: a k past its size would only allocate padding.
        k = max(1, min(int(k), len(self.index)))
        ids, scores = self.index.search(np.asarray(queries, dtype=np.float32), k)
        out: list[list[Hit]] = []
        wanted = sorted({int(i) for i in np.asarray(ids).ravel() if i >= 0})
        by_id = {e.id: e for e in self.pack.get_many(wanted)} if wanted else {}
        for row_ids, row_scores in zip(ids, scores):
            hits = []
            for i, s in zip(row_ids, row_scores):
                e = by_id.get(int(i))
                if e is not None and e.status == "active":  # defence in depth: never a stale hit
                    hits.append(Hit(e, float(s)))
            out.append(hits)
        return out

    def text_search(self, query: str, k: int = 10) -> list[Hit]:
        """Full-text (FTS5, bm25) search over title and text of active entries."""
        ranked = self.pack.fts(query, limit=k)
        entries = {e.id: e for e in self.pack.get_many([i for i, _ in ranked])}
        return [Hit(entries[i], s) for i, s in ranked if i in entries]

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        try:
            if self._index_dirty:
                self.save_index()
        finally:
            self.pack.close()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def index_key_mismatches(pack: Pack, index, ids: Sequence[int]) -> list[int]:
    """Ids among ``ids`` (active entries) whose key in ``index`` is not the entry's stored
    key, or that have a current stored key but are absent from ``index``."""
    ids = [int(i) for i in ids]
    if not ids:
        return []
    stored, ok = pack.get_vectors(ids)
    cached, found = index.get_keys(ids)
    # float16 packs round keys (error < 3e-4 on unit vectors); another text's key differs far more
    differ = ok & (~found | (np.abs(cached - stored).max(axis=1) > KEY_TOLERANCE))
    return [i for i, bad in zip(ids, differ) if bad]


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    """The stamp of an index cache folder, or None when missing or unreadable."""
    try:
        data = json.loads((folder / "stamp.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stamp = data.get("stamp", data) if isinstance(data, dict) else None
    return stamp if isinstance(stamp, dict) else None
