"""A memory = a pack (source of truth) + the key encoder + the vector index, kept in sync.

This is the one write path for a pack's knowledge: every mutation goes through the
pack (which records history and the inverse for undo), then only the touched entries
are re-encoded and updated in the index in place. Disabled and deleted entries leave
the index at once, so search never returns them.

The index is a cache stored beside the pack (``<pack>.index/``) stamped with the
pack's content version and encoder. On open it is loaded and caught up from the
pack's change log when it is behind, or rebuilt from SQLite when it is missing,
unreadable or made by another encoder; each case is reported through ``on_message``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from engine.fingerprint import EncoderFingerprint
from engine.store import Change, Entry, Pack

log = logging.getLogger(__name__)

MessageFn = Callable[[str], None]


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
    ) -> "Memory":
        """Open (or with ``create`` make) the pack at ``path`` with its index ready.

        ``encoder`` is a KeyEncoder; the default one is used when omitted. A pack made
        by another encoder raises ``EncoderMismatchError`` naming both.
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
            mem.index = mem._load_or_rebuild_index(progress)
        except BaseException:
            pack.close()
            raise
        return mem

    def _stamp(self) -> dict[str, Any]:
        return {"content_version": int(self.pack.content_version), "encoder": self.pack.encoder.to_dict() if self.pack.encoder else None}

    def _new_index(self):
        from engine.index import VectorIndex

        return VectorIndex(self.encoder.dim)

    def _load_or_rebuild_index(self, progress=None):
        from engine.index import IndexCacheError, VectorIndex

        folder = index_dir_for(self.pack.path)
        want = self._stamp()
        old = _read_stamp(folder)
        if old is not None and old.get("encoder") == want["encoder"] and old.get("content_version") is not None:
            try:
                index = VectorIndex.load(folder, old)
            except IndexCacheError as exc:
                self._say(f"Index cache of {self.pack.path.name} is unreadable ({exc}); rebuilding it from the pack.")
                return self.rebuild_index(progress)
            behind = int(old["content_version"])
            if behind != want["content_version"]:
                if behind > want["content_version"]:
                    self._say(f"Index cache of {self.pack.path.name} is newer than the pack; rebuilding it.")
                    return self.rebuild_index(progress)
                self.index = index
                n = self._catch_up(behind)
                self._say(f"Index of {self.pack.path.name} caught up with {n} changed entries.")
                self.save_index()
            return index
        if folder.exists():
            self._say(f"Index cache of {self.pack.path.name} is stale or unreadable; rebuilding it from the pack.")
        elif self.pack.count() > 0:
            self._say(f"No index cache for {self.pack.path.name}; building it from the pack.")
        return self.rebuild_index(progress)

    def _catch_up(self, since_cv: int) -> int:
        upsert, remove = self.pack.changes_since(since_cv)
        if len(remove):
            self.index.remove(np.asarray(remove, dtype=np.int64))
        self._index_entries(list(map(int, upsert)))
        return len(upsert) + len(remove)

    def rebuild_index(self, progress: Callable[[float, str], None] | None = None):
        """Rebuild the index from SQLite (encoding entries whose vectors are missing or stale)."""
        self.ensure_vectors(progress)
        index = self._new_index()
        ids_parts, key_parts = [], []
        for ids, keys in self.pack.iter_active_vectors():
            ids_parts.append(ids)
            key_parts.append(keys)
        if ids_parts:
            index.build(np.concatenate(ids_parts), np.concatenate(key_parts))
        else:
            index.build(np.zeros(0, dtype=np.int64), np.zeros((0, self.encoder.dim), dtype=np.float32))
        self.index = index
        self.save_index()
        return index

    def ensure_vectors(self, progress: Callable[[float, str], None] | None = None, batch: int = 512) -> int:
        """Encode every active entry without an up-to-date vector. Returns how many."""
        stale = self.pack.stale_vector_ids()
        total = len(stale)
        for start in range(0, total, batch):
            ids = stale[start : start + batch]
            entries = self.pack.get_many(ids)
            vecs = self.encoder.encode([e.text for e in entries])
            self.pack.set_vectors([e.id for e in entries], vecs)
            if progress:
                progress(min(1.0, (start + len(ids)) / total), f"encoded {start + len(ids):,} of {total:,}")
        return total

    def save_index(self) -> None:
        if self.index is not None:
            self.index.save(index_dir_for(self.pack.path), self._stamp())
            self._index_dirty = False

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
                self.pack.set_vectors([active[i].id for i in missing], fresh)
                vecs = np.array(vecs, dtype=np.float32, copy=True)
                vecs[missing] = fresh
            self.index.upsert(np.asarray([e.id for e in active], dtype=np.int64), np.asarray(vecs, dtype=np.float32))
        self._index_dirty = True

    def apply(self, change: Change | None) -> Change | None:
        """Update the index for a change made on the pack (also used after undo/redo)."""
        if change is not None and change.ids:
            self._index_entries(list(change.ids))
        return change

    # ------------------------------------------------------------------ mutations
    def add(self, text: str, **fields: Any) -> Change:
        vec = self.encoder.encode([text])[0]
        return self.apply(self.pack.add(text, vector=vec, **fields))

    def add_many(self, records: Iterable[dict], **kw: Any) -> Change:
        records = list(records)
        vecs = self.encoder.encode([r["text"] for r in records]) if records else None
        return self.add_encoded(records, vecs, **kw)

    def add_encoded(self, records: Sequence[dict], vectors: np.ndarray | None, **kw: Any) -> Change:
        """Add entries whose keys were computed elsewhere (Ray workers) by this pack's encoder;
        the caller has checked the encoder's fingerprint. Same transaction and index update as add_many."""
        return self.apply(self.pack.add_many(records, vectors=vectors, **kw))

    def edit(self, entry_id: int, **fields: Any) -> Change:
        text = fields.get("text")
        if text is not None and "vector" not in fields:
            before = self.pack.get(entry_id)
            if text != before.text and text.strip():
                fields["vector"] = self.encoder.encode([text])[0]
        return self.apply(self.pack.edit(entry_id, **fields))

    def set_status(self, ids: Sequence[int], status: str, **kw: Any) -> Change:
        return self.apply(self.pack.set_status(ids, status, **kw))

    def delete(self, ids: Sequence[int], **kw: Any) -> Change:
        return self.apply(self.pack.delete(ids, **kw))

    def undo(self) -> Change | None:
        return self.apply(self.pack.undo())

    def redo(self) -> Change | None:
        return self.apply(self.pack.redo())

    def end_redo(self) -> int:
        """Drop the redo stack (temporary changes undone by their maker must not be redone)."""
        return self.pack.end_redo()

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Semantic search: top-k active entries by inner product with the query's key."""
        q = self.encoder.encode([query])
        return self.search_vectors(q, k)[0]

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k for each query key; only active entries are returned."""
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


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    """The stamp of an index cache folder, or None when missing or unreadable."""
    try:
        data = json.loads((folder / "stamp.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stamp = data.get("stamp", data) if isinstance(data, dict) else None
    return stamp if isinstance(stamp, dict) else None
