"""VectorIndex: ids (int64) + unit keys (float32) -> top-k by inner product.

Layout (all row numbers are positions in the *base*):

* base  -- ``ids [Nb]``, ``keys [Nb, dim]`` float32 (memory-mapped after ``load``), an
  fp16 copy ``keys16 [Nb, dim]`` used to shortlist candidates for one query on the CPU
  (torch's fp16 mat-vec reads half the bytes: ~24 ms at 1M on 2 cores, against ~75 ms
  for fp32 numpy and ~130 ms for faiss IndexFlatIP), ``order`` = argsort(ids) so an id
  is found by binary search, and ``dead [Nb]`` tombstones.
* delta -- rows upserted since the base was made: small, searched exactly.
* ann   -- faiss HNSW over the base rows once ``Nb >= approx_threshold``; past
  ``compressed_threshold`` IVF-PQ codes instead, whose shortlist is re-scored exactly
  from the (memory-mapped) float32 keys, so resident memory is ~48 B per key, not ~1.8 KB.

The ann is made in a background thread (``build``, ``compact``, a load without one):
until it is ready single queries are answered exactly, or by the previous ann while a
compaction runs, and a newer base cancels an older build. Rows folded into the base
while a build runs are added to the new ann when it is installed.

Edits never rewrite the base: an upsert tombstones the old row and writes the delta,
a removal tombstones (or drops a delta row). When the delta grows past a limit it is
folded into the base (appended rows, added to the ann); ``compact()`` drops tombstoned
rows and rebuilds the ann (the only full rebuild; an IVF-PQ keeps its training), and
starts by itself once a quarter of the base rows are tombstones.

Exact results: candidates shortlisted in fp16 are re-scored in float32, so returned
scores are float32 inner products and the ranking equals brute force unless two
scores differ by less than the fp16 error beyond the shortlist margin.
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import torch

from engine.device import pick_device
from engine.index import ann as ann_mod
from engine.index import exact_backend, keyfile

log = logging.getLogger(__name__)

DEFAULT_APPROX_THRESHOLD = 50_000
# Past this many base rows the ann is IVF-PQ rather than HNSW (bench/RESULTS.md, "Ten million").
DEFAULT_COMPRESSED_THRESHOLD = 1_000_000
FP16_MIN_ROWS = 65_536  # below this the float32 scan is already fast (<3 ms)
DELTA_FOLD_ROWS = 4_096
BATCH_MIN = 8  # this many queries or more -> exact torch matmul (training batches)
CHUNK_ROWS = 131_072


def _as_ids(ids, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what}: ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what}: ids must be >= 0 (-1 marks 'no result'), got {int(arr.min())}")
    return arr


def _as_keys(keys, dim: int, n: int | None, what: str) -> np.ndarray:
    arr = np.asarray(keys, dtype=np.float32)
    if arr.ndim == 1 and n == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what}: keys must have shape [n, {dim}], got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what}: {n} ids but {arr.shape[0]} keys")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{what}: key row {bad} contains NaN or infinity")
    return np.ascontiguousarray(arr)


def _dupes(ids: np.ndarray) -> np.ndarray:
    s = np.sort(ids)
    return np.unique(s[1:][s[1:] == s[:-1]])


class VectorIndex:
    """Inner-product top-k over (id, key) pairs; see the module docstring for the layout.

    ``search(queries, k)``: queries ``[n, dim]`` (or ``[dim]``, treated as n = 1) ->
    ``(ids int64 [n, k], scores float32 [n, k])``, best first, padded with -1 / -inf.
    """

    def __init__(
        self,
        dim: int,
        *,
        approx_threshold: int = DEFAULT_APPROX_THRESHOLD,
        device: str | torch.device | None = None,
        hnsw_m: int = ann_mod.HNSW_M,
        ef_construction: int = ann_mod.EF_CONSTRUCTION,
        ef_search: int | None = None,
        compressed_threshold: int = DEFAULT_COMPRESSED_THRESHOLD,
        nprobe: int | None = None,
        rerank: int | None = None,
        background: bool = True,
    ) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.approx_threshold = int(approx_threshold)
        self.device = pick_device(device)
        self.hnsw_m, self.ef_construction = int(hnsw_m), int(ef_construction)
        #: HNSW beam width; None = chosen from the graph size (``ann.auto_ef_search``).
        self.ef_search: int | None = None if ef_search is None else int(ef_search)
        self.compressed_threshold = int(compressed_threshold)
        #: IVF lists scanned / shortlist rows re-scored; None = chosen from the size (ann.py).
        self.nprobe: int | None = None if nprobe is None else int(nprobe)
        self.rerank: int | None = None if rerank is None else int(rerank)
        #: False: build() and compact() make the ann in the caller's thread (benchmarks, tools).
        self.background = bool(background)
        #: Called (from the build thread) when a new ann is installed: the owner saves the cache.
        self.on_ann_ready = None
        #: Why the last background build failed, or None.
        self.last_build_error: str | None = None
        #: Where streamed builds and compactions write the base's key files (None: the temp
        #: folder). The owner sets the cache folder, so saving publishes them without a copy.
        self.spill_dir: Path | None = None
        self._lock = threading.RLock()
        self._set_base(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32), None, None, None)
        self._lineage = uuid.uuid4().hex  # changes when the base is replaced (not when rows are folded in)
        self._ann = None
        self._ann_uid: str | None = None
        self._trained = None  # trained, empty IVF-PQ: compaction and rebuilds reuse it
        self._trained_uid: str | None = None
        self._build_stop: threading.Event | None = None
        self._ann_ready = threading.Event()
        self._ann_ready.set()

    # ------------------------------------------------------------------ internal state
    def _set_base(self, ids, keys, keys16, order, dead) -> None:
        self._ids = ids  # [Nb] int64
        self._keys = keys  # [Nb, dim] float32
        self._keys16 = keys16  # [Nb, dim] float16 or None (made on demand)
        self._dead = np.zeros(len(ids), bool) if dead is None else dead  # [Nb]
        # After a fold an id may sit in several rows, all but one tombstoned: sort by
        # (id, dead) so the binary search lands on the live row first.  [Nb]
        self._order = np.lexsort((self._dead, ids)) if order is None else order
        self._sorted_ids = self._ids[self._order]  # [Nb]
        self._n_dead = int(self._dead.sum())
        self._bitmap = np.packbits(~self._dead, bitorder="little") if len(ids) else np.zeros(0, np.uint8)
        self._dead_rows: np.ndarray | None = None
        self._keys_file = None  # opened on first re-scoring from a memory-mapped keys file
        self._dev_keys: torch.Tensor | None = None
        self._base_uid = uuid.uuid4().hex
        self._set_delta(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))

    def _set_delta(self, ids: np.ndarray, keys: np.ndarray) -> None:
        """Delta rows live in buffers with spare capacity (amortised O(1) appends);
        ``_d_ids [Nd]`` and ``_d_keys [Nd, dim]`` are views of their used part."""
        cap = max(64, 2 * len(ids))
        self._d_ids_buf = np.empty(cap, np.int64)
        self._d_keys_buf = np.empty((cap, self.dim), np.float32)
        self._d_ids_buf[: len(ids)] = ids
        self._d_keys_buf[: len(ids)] = keys
        self._d_n = len(ids)
        self._d_views()
        self._d_pos: dict[int, int] = {int(i): r for r, i in enumerate(self._d_ids.tolist())}

    def _d_views(self) -> None:
        self._d_ids = self._d_ids_buf[: self._d_n]
        self._d_keys = self._d_keys_buf[: self._d_n]

    def _delta_append(self, ids: list[int], keys: np.ndarray) -> None:
        need = self._d_n + len(ids)
        if need > len(self._d_ids_buf):
            cap = max(need, 2 * len(self._d_ids_buf))
            ib, kb = np.empty(cap, np.int64), np.empty((cap, self.dim), np.float32)
            ib[: self._d_n] = self._d_ids
            kb[: self._d_n] = self._d_keys
            self._d_ids_buf, self._d_keys_buf = ib, kb
        self._d_ids_buf[self._d_n : need] = ids
        self._d_keys_buf[self._d_n : need] = keys
        for off, i in enumerate(ids):
            self._d_pos[i] = self._d_n + off
        self._d_n = need
        self._d_views()

    def _delta_drop(self, i: int) -> bool:
        """Remove id ``i`` from the delta by moving the last row into its place."""
        r = self._d_pos.pop(i, None)
        if r is None:
            return False
        last = self._d_n - 1
        if r != last:
            moved = int(self._d_ids_buf[last])
            self._d_ids_buf[r] = moved
            self._d_keys_buf[r] = self._d_keys_buf[last]
            self._d_pos[moved] = r
        self._d_n = last
        self._d_views()
        return True

    def _base_rows(self, ids: np.ndarray) -> np.ndarray:
        """Base row of each id, or -1 when absent or tombstoned."""
        if not len(self._sorted_ids) or not len(ids):
            return np.full(len(ids), -1, np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, len(self._sorted_ids) - 1)
        hit = self._sorted_ids[pos] == ids
        rows = np.where(hit, self._order[pos], -1)
        live = rows >= 0
        live[live] = ~self._dead[rows[live]]
        return np.where(live, rows, -1)

    def _tombstone(self, rows: np.ndarray) -> None:
        rows = rows[rows >= 0]
        if not len(rows):
            return
        self._dead[rows] = True
        np.bitwise_and.at(self._bitmap, rows >> 3, ~(1 << (rows & 7)).astype(np.uint8))
        self._n_dead = int(self._dead.sum()) if len(rows) > 64 else self._n_dead + len(rows)
        self._dead_rows = None

    def _dead_list(self) -> np.ndarray:
        if self._dead_rows is None:
            self._dead_rows = np.flatnonzero(self._dead)
        return self._dead_rows

    # ------------------------------------------------------------------ building and edits
    def build(self, ids, keys) -> None:
        """Replace the whole content. ``ids`` int64 [n] (distinct), ``keys`` float32 [n, dim]."""
        ids = _as_ids(ids, "build")
        keys = _as_keys(keys, self.dim, len(ids), "build")
        d = _dupes(ids)
        if len(d):
            raise ValueError(f"build: duplicate ids {d[:10].tolist()}")
        with self._lock:
            self._set_base(ids.copy(), keys.copy(), None, None, None)
            self._lineage = uuid.uuid4().hex
            self._ann, self._ann_uid = None, None
            self._start_ann()

    def build_streamed(self, chunks, should_stop=None) -> int:
        """Replace the whole content from ``chunks``, an iterable of (ids int64 [m], keys float32
        [m, dim]), without holding every key in RAM: each chunk is checked and written to key
        files (float32 and float16) that then serve, memory-mapped, as the base. Peak memory is
        one chunk plus 8 B per id. Returns the row count.

        Bad input (a NaN key, a wrong shape, a repeated id) or ``should_stop()`` turning true
        removes the files and raises (``ValueError`` naming the chunk and row, or
        ``ann.BuildCancelled``) with the index as it was: its base, ann and cache untouched.
        """
        w32 = keyfile.KeyFileWriter(keyfile.spill_path(self.spill_dir, "keys"), self.dim, np.float32)
        w16 = keyfile.KeyFileWriter(keyfile.spill_path(self.spill_dir, "keys16"), self.dim, np.float16)
        id_parts: list[np.ndarray] = []
        try:
            for c, (ids, keys) in enumerate(chunks):
                if should_stop is not None and should_stop():
                    raise ann_mod.BuildCancelled
                ids = _as_ids(ids, f"build_streamed (chunk {c}, rows from {w32.rows})")
                keys = _as_keys(keys, self.dim, len(ids), f"build_streamed (chunk {c}, rows from {w32.rows})")
                id_parts.append(ids.copy())
                w32.append(keys)
                w16.append(keys.astype(np.float16))
            ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
            d = _dupes(ids)
            if len(d):
                raise ValueError(f"build_streamed: duplicate ids {d[:10].tolist()}")
            keys32, keys16 = keyfile.open_spill(w32.close()), keyfile.open_spill(w16.close())
        except BaseException:
            w32.abort()
            w16.abort()
            raise
        with self._lock:
            self._set_base(ids, keys32, keys16, None, None)
            self._lineage = uuid.uuid4().hex
            self._ann, self._ann_uid = None, None
            self._start_ann()
        return len(ids)

    # ------------------------------------------------------------------ the ann, made in the background
    def _make_ann(self, keys: np.ndarray, trained, should_stop):
        """(ann over ``keys`` [n, dim], trained IVF-PQ or None): HNSW, or IVF-PQ past the threshold."""
        n = len(keys)
        if n >= self.compressed_threshold:
            if not ann_mod.trained_fits(trained, n, self.dim):
                trained = ann_mod.train_ivfpq(keys, ann_mod.ivf_nlist(n))
            if should_stop():
                raise ann_mod.BuildCancelled
            ann = ann_mod.empty_like(trained)
            ann_mod.add_chunked(ann, keys, should_stop)
            return ann, trained
        return ann_mod.build_hnsw(keys, self.hnsw_m, self.ef_construction, should_stop), trained

    def _start_ann(self, *, compact: bool = False) -> None:
        """(Re)make the ann for the current base (under the lock); ``compact``: for its live rows only.

        Runs in a thread of its own unless ``background`` is False; a build already running is
        cancelled (its result would be for an older base). Queries meanwhile use the ann in place
        (during a compaction) or the exact scan.
        """
        self._stop_build()
        keep = np.flatnonzero(~self._dead) if compact else None
        n = len(self._ids) if keep is None else len(keep)
        if n == 0 or n < self.approx_threshold:
            if compact:
                self._install(None, self._trained, len(self._ids), keep, np.asarray(self._keys)[keep])
            else:
                self._ann, self._ann_uid = None, None
            return
        stop = threading.Event()
        lineage, n0, keys0, trained = self._lineage, len(self._ids), self._keys, self._trained
        self._build_stop = stop
        self._ann_ready.clear()

        def work() -> None:
            try:
                if keep is None:
                    keys = keys0
                elif isinstance(keys0, np.memmap):  # streamed: the live rows go to new key files
                    keys = self._spill_rows(keys0, keep, stop.is_set)
                else:
                    keys = np.asarray(keys0)[keep]  # [n, dim]
                ann, tr = self._make_ann(keys, trained, stop.is_set)
                with self._lock:
                    if stop.is_set() or self._lineage != lineage:
                        return
                    self._install(ann, tr, n0, keep, keys if keep is not None else None)
                    self.last_build_error = None
                log.info("index: %s over %d rows ready", ann_mod.kind_of(ann), len(keys))
                hook = self.on_ann_ready
                if hook is not None:
                    hook()
            except ann_mod.BuildCancelled:
                log.info("index: a background build was cancelled; the index keeps what it had")
            except Exception as exc:  # noqa: BLE001 - a failed build costs speed, never answers
                if stop.is_set():  # superseded: its files may be gone already
                    return
                self.last_build_error = f"{type(exc).__name__}: {exc}"
                log.warning("index: background build failed (%s); searching as before", self.last_build_error)
            finally:
                with self._lock:
                    if self._build_stop is stop:
                        self._build_stop = None
                        self._ann_ready.set()

        if self.background:
            threading.Thread(target=work, name="index-build", daemon=True).start()
        else:
            work()

    def _spill_rows(self, keys: np.ndarray, keep: np.ndarray, should_stop) -> np.memmap:
        """``keys[keep]`` (ascending rows) written chunk by chunk to new key files: the float32
        map is returned, its float16 twin hangs on it as ``keys16`` for ``_install``."""
        mask = np.zeros(len(keys), bool)
        mask[keep] = True
        w32 = keyfile.KeyFileWriter(keyfile.spill_path(self.spill_dir, "keys"), self.dim, np.float32)
        w16 = keyfile.KeyFileWriter(keyfile.spill_path(self.spill_dir, "keys16"), self.dim, np.float16)
        try:
            for lo, rows in keyfile.iter_chunks(keys):
                if should_stop():
                    raise ann_mod.BuildCancelled
                live = rows[mask[lo : lo + len(rows)]]
                w32.append(live)
                w16.append(live.astype(np.float16))
            out = keyfile.open_spill(w32.close())
            out.keys16 = keyfile.open_spill(w16.close())
        except BaseException:
            w32.abort()
            w16.abort()
            raise
        return out

    def _install(self, ann, trained, n0: int, keep: np.ndarray | None, kept_keys: np.ndarray | None) -> None:
        """Put a finished ann in place (under the lock). It covers the first ``n0`` base rows
        (``keep``: only those of a compaction); rows folded in since are added to it."""
        extra = np.asarray(self._keys[n0:])  # [Nb - n0, dim] rows folded in while it was built
        if keep is not None:
            d_ids, d_keys = self._d_ids.copy(), self._d_keys.copy()
            keys16 = getattr(kept_keys, "keys16", None)
            if keys16 is not None and len(extra):  # streamed: the folded rows go to the files too
                kept_keys, keys16 = self._spill_concat(kept_keys, keys16, extra)
            elif keys16 is None:
                kept_keys = np.concatenate([kept_keys, extra])
            self._set_base(
                np.concatenate([self._ids[keep], self._ids[n0:]]),
                kept_keys,
                keys16,
                None,
                np.concatenate([self._dead[keep], self._dead[n0:]]),
            )
            self._set_delta(d_ids, d_keys)
        if ann is not None and len(extra):
            ann.add(np.ascontiguousarray(extra, dtype=np.float32))
        self._ann, self._ann_uid = ann, (uuid.uuid4().hex if ann is not None else None)
        if trained is not None and trained is not self._trained:
            self._trained, self._trained_uid = trained, uuid.uuid4().hex

    def _spill_concat(self, keys: np.ndarray, keys16: np.ndarray, extra: np.ndarray):
        """New key files holding ``keys`` then ``extra`` rows: (float32 map, float16 map)."""
        out = []
        for src, dt, what in ((keys, np.float32, "keys"), (keys16, np.float16, "keys16")):
            path = keyfile.spill_path(self.spill_dir, what)
            parts = (c for part in (keyfile.iter_chunks(src), [(0, extra)]) for _, c in part)
            keyfile.write_streamed(path, parts, self.dim, dt)
            out.append(keyfile.open_spill(path))
        return out[0], out[1]

    def _stop_build(self) -> None:
        if self._build_stop is not None:
            self._build_stop.set()
            self._build_stop = None
            self._ann_ready.set()

    def cancel_build(self) -> bool:
        """Stop a background build or compaction (within a chunk of work); True when one ran.
        The index keeps the ann it had (or none: exact search)."""
        with self._lock:
            running = self._build_stop is not None
            self._stop_build()
            return running

    @property
    def building(self) -> bool:
        """Whether a background build, compaction or ann load is in progress."""
        return not self._ann_ready.is_set()

    @property
    def ann_kind(self) -> str | None:
        """'hnsw', 'ivfpq', or None (exact search only)."""
        ann = self._ann
        return None if ann is None else ann_mod.kind_of(ann)

    def describe(self) -> dict:
        """What the index holds and how it searches, for ``plugmem index status``."""
        with self._lock:
            kind = self.ann_kind
            wanted = ("ivfpq" if len(self._ids) >= self.compressed_threshold else "hnsw") \
                if len(self._ids) >= self.approx_threshold else None
            return {
                "dim": self.dim,
                "entries": len(self),
                "base_rows": int(len(self._ids)),
                "tombstones": int(self._n_dead),
                "delta_rows": int(len(self._d_ids)),
                "search": kind or "exact",
                "planned": wanted or "exact",  # what a finished build gives at this size
                "building": self.building,
                "needs_compaction": self.needs_compaction,
                "approx_threshold": self.approx_threshold,
                "compressed_threshold": self.compressed_threshold,
            }

    def upsert(self, ids, keys) -> None:
        """Insert or replace: an id already present gets the new key."""
        ids = _as_ids(ids, "upsert")
        keys = _as_keys(keys, self.dim, len(ids), "upsert")
        d = _dupes(ids)
        if len(d):
            raise ValueError(f"upsert: duplicate ids in one call {d[:10].tolist()}")
        if not len(ids):
            return
        with self._lock:
            self._tombstone(self._base_rows(ids))
            new_ids, new_rows = [], []
            for j, i in enumerate(ids.tolist()):
                r = self._d_pos.get(i)
                if r is None:
                    new_ids.append(i)
                    new_rows.append(j)
                else:
                    self._d_keys[r] = keys[j]
            if new_ids:
                self._delta_append(new_ids, keys[new_rows])
            self._maybe_fold()
            self._maybe_compact()

    def remove(self, ids) -> int:
        """Remove these ids (unknown ids are ignored); returns how many were present."""
        ids = _as_ids(ids, "remove")
        with self._lock:
            rows = self._base_rows(ids)
            self._tombstone(rows)
            n = int((rows >= 0).sum())
            n += sum(self._delta_drop(i) for i in ids.tolist())
            if self._ann is None and not self.building and self._n_dead > 1024 and self._n_dead * 2 > len(self._ids):
                self.compact()
            else:
                self._maybe_compact()
            return n

    def _maybe_compact(self) -> None:
        """Past the tombstone threshold, compact in the background (never twice at once)."""
        if self.needs_compaction and self._ann is not None and not self.building:
            log.info("index: %d of %d base rows are tombstones; compacting in the background",
                     self._n_dead, len(self._ids))
            self._start_ann(compact=True)

    def _maybe_fold(self) -> None:
        nd, nb = len(self._d_ids), len(self._ids)
        # With a graph the delta is scanned exactly on every query: keep it small.
        limit = DELTA_FOLD_ROWS if self._ann is not None else max(DELTA_FOLD_ROWS, nb // 32)
        if nd > limit:
            self._fold()

    def _fold(self) -> None:
        """Append the delta rows to the base (and to the ann); keep tombstones. A build in
        progress adds them to its ann when it is installed."""
        ann = self._ann
        d_ids, d_keys = self._d_ids.copy(), self._d_keys.copy()
        keys16 = None
        if self._keys16 is not None:
            keys16 = np.concatenate([np.asarray(self._keys16), d_keys.astype(np.float16)])
        self._set_base(
            np.concatenate([self._ids, d_ids]),
            np.concatenate([self._keys, d_keys]),
            keys16,
            None,
            np.concatenate([self._dead, np.zeros(len(d_ids), bool)]),
        )
        if ann is not None:
            ann.add(d_keys)
            self._ann, self._ann_uid = ann, uuid.uuid4().hex
        elif len(self._ids) >= self.approx_threshold and not self.building:
            self._start_ann()
        log.debug("folded %d delta rows into the base (%d rows)", len(d_ids), len(self._ids))

    def compact(self) -> None:
        """Drop tombstoned rows and rebuild the ann over the rest.

        Small indexes (no ann) are compacted at once, delta folded in. With an ann the
        compaction runs in the background (``background``): queries keep using the current
        ann, and edits made meanwhile are carried over when the new one is installed.
        """
        with self._lock:
            if self._ann is None and not self.building:
                alive = ~self._dead
                ids = np.concatenate([self._ids[alive], self._d_ids])
                keys = np.concatenate([np.asarray(self._keys)[alive], self._d_keys])
                self._set_base(ids, keys, None, None, None)
                self._lineage = uuid.uuid4().hex
                self._start_ann()
                return
            self._start_ann(compact=True)

    @property
    def needs_compaction(self) -> bool:
        """True when over a quarter of the base rows are tombstones (HNSW recall and memory suffer)."""
        return self._n_dead * 4 > len(self._ids) and self._n_dead > 0

    def __len__(self) -> int:
        return len(self._ids) - self._n_dead + len(self._d_ids)

    def __contains__(self, item: object) -> bool:
        try:
            i = int(item)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        with self._lock:
            return i in self._d_pos or bool(self._base_rows(np.asarray([i], np.int64))[0] >= 0)

    def ids(self) -> np.ndarray:
        """All live ids (int64), in no particular order."""
        with self._lock:
            return np.concatenate([self._ids[~self._dead], self._d_ids])

    def get_keys(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """The key held for each id: ``(keys float32 [n, dim], found bool [n])``, zeros where absent."""
        ids = _as_ids(ids, "get_keys")
        keys = np.zeros((len(ids), self.dim), np.float32)  # [n, dim]
        with self._lock:
            rows = self._base_rows(ids)
            found = rows >= 0
            if found.any():
                keys[found] = np.asarray(self._keys)[rows[found]]
            for n, i in enumerate(ids.tolist()):
                r = self._d_pos.get(i)
                if r is not None:
                    keys[n], found[n] = self._d_keys[r], True
        return keys, found

    @property
    def approximate(self) -> bool:
        """Whether single queries go through an ann (HNSW or IVF-PQ; built and loaded)."""
        return self._ann is not None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for a background build, compaction or ann load; True when none is running."""
        return self._ann_ready.wait(timeout)

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(ids int64 [n, k], scores float32 [n, k])``.

        ``exact=None``: on the CPU, fewer than ``BATCH_MIN`` queries go through the HNSW
        graph when it is built and loaded; batches (training) and GPU searches run the
        exact chunked ``Q @ X.T`` + topk. ``True`` / ``False`` force a path.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"search: queries must have shape [n, {self.dim}] or [{self.dim}], got {np.shape(queries)}")
        if not np.isfinite(q).all():
            raise ValueError("search: queries contain NaN or infinity")
        k = int(k)
        if k < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        q = np.ascontiguousarray(q)
        with self._lock:
            # On a GPU the exact torch scan is about as fast as the graph, so it stays exact.
            small = len(q) < BATCH_MIN and self.device.type == "cpu"
            use_ann = self.approximate and exact is not True and (exact is False or small)
            if use_ann:
                b_scores, b_rows = self._search_ann(q, k)
            else:
                b_scores, b_rows = self._search_base_exact(q, k)
            b_ids = np.where(b_rows >= 0, self._ids[np.maximum(b_rows, 0)] if len(self._ids) else -1, -1)
            if len(self._d_ids):
                ds = q @ self._d_keys.T  # [n, Nd]
                kd = min(k, ds.shape[1])
                top = np.argpartition(-ds, kd - 1, axis=1)[:, :kd]
                b_scores = np.concatenate([b_scores, np.take_along_axis(ds, top, 1)], axis=1)
                b_ids = np.concatenate([b_ids, self._d_ids[top]], axis=1)
        return _topk_merge(b_ids, b_scores, k)

    def _search_ann(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        bitmap = self._bitmap if self._n_dead else None
        if ann_mod.kind_of(self._ann) == "ivfpq":
            return self._search_compressed(q, k, bitmap)
        ef = self.ef_search if self.ef_search is not None else ann_mod.auto_ef_search(len(self._ids))
        scores, rows = ann_mod.search_hnsw(self._ann, q, k, ef, bitmap)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return scores, rows.astype(np.int64)

    def _search_compressed(self, q: np.ndarray, k: int, bitmap) -> tuple[np.ndarray, np.ndarray]:
        """IVF-PQ shortlist, re-scored exactly from the float32 keys: (scores [n, r], rows [n, r])."""
        nprobe = self.nprobe if self.nprobe is not None else ann_mod.ivf_nprobe(int(self._ann.nlist))
        r = max(k, self.rerank if self.rerank is not None else ann_mod.rerank_for(int(self._ann.ntotal), k))
        rows = ann_mod.search_ivfpq(self._ann, q, r, nprobe, bitmap).astype(np.int64)  # [n, r]
        scores = np.full(rows.shape, -np.inf, np.float32)
        for i in range(len(q)):
            ok = rows[i] >= 0
            got = np.sort(rows[i][ok])  # ascending rows: the memory-mapped keys are read in order
            rows[i, : len(got)], rows[i, len(got) :] = got, -1
            scores[i, : len(got)] = self._key_rows(got) @ q[i]  # [r] exact float32
        return scores, rows

    def _key_rows(self, rows: np.ndarray) -> np.ndarray:
        """Float32 keys of ``rows`` (ascending) [r, dim]. From a memory-mapped file they are read
        with pread: indexing the map made the kernel map ~1 MiB of page cache per row touched
        (large folios), and after 200 queries at 1M the whole keys file counted as resident."""
        keys = self._keys
        name = getattr(keys, "filename", None)
        if name is None or not hasattr(os, "pread") or not isinstance(keys, np.memmap):
            return np.asarray(keys[rows])
        f = self._keys_file
        if f is None or f.name != name:
            f = self._keys_file = open(name, "rb")  # noqa: SIM115 - kept open with the base
        return keyfile.take_rows(keys, rows, f)

    def _search_base_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nb = len(self._ids)
        n = len(q)
        if nb == 0:
            return np.full((n, 0), -np.inf, np.float32), np.full((n, 0), -1, np.int64)
        dead = self._dead_list()
        with torch.inference_mode():
            if self.device.type == "cpu" and n == 1 and nb >= FP16_MIN_ROWS:
                if exact_backend.choose(self.dim) == "numpy32":
                    return self._exact_one_numpy(q[0], k, dead)
                return self._exact_one_fp16(q[0], k, dead)
            if self.device.type == "cpu" and nb < FP16_MIN_ROWS:
                s = q @ np.asarray(self._keys).T  # [n, Nb]
                if len(dead):
                    s[:, dead] = -np.inf
                kk = min(k, nb)
                top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                return np.take_along_axis(s, top, 1).astype(np.float32), top.astype(np.int64)
            return self._exact_torch(q, k, dead)

    def _exact_one_numpy(self, q: np.ndarray, k: int, dead: np.ndarray):
        s = exact_backend.score_numpy32(self._keys, q)  # [Nb] float32
        if len(dead):
            s[dead] = -np.inf
        kk = min(k, len(s))
        top = np.argpartition(-s, kk - 1)[:kk]
        return s[top][None].astype(np.float32), top[None].astype(np.int64)

    def _exact_one_fp16(self, q: np.ndarray, k: int, dead: np.ndarray):
        if self._keys16 is None:
            self._keys16 = np.asarray(self._keys).astype(np.float16)
        s16 = exact_backend.score_torch16(self._keys16, q)  # [Nb] fp16 shortlist scores
        if len(dead):
            s16[torch.from_numpy(dead)] = float("-inf")
        kc = min(len(self._ids), 2 * k + 64)
        cand = torch.topk(s16, kc).indices.numpy()  # [kc] rows
        cand = cand[~self._dead[cand]]
        exact = np.asarray(self._keys)[np.sort(cand)] @ q  # [kc] float32 re-score
        rows = np.sort(cand)
        kk = min(k, len(rows))
        if kk == 0:
            return np.full((1, 0), -np.inf, np.float32), np.full((1, 0), -1, np.int64)
        top = np.argpartition(-exact, kk - 1)[:kk]
        return exact[top][None].astype(np.float32), rows[top][None].astype(np.int64)

    def _exact_torch(self, q: np.ndarray, k: int, dead: np.ndarray):
        """Chunked ``Q @ X.T`` + topk (batches; and every search on a GPU)."""
        if self._dev_keys is None:
            x = torch.from_numpy(np.asarray(self._keys))
            self._dev_keys = x.to(self.device) if self.device.type != "cpu" else x
        x = self._dev_keys  # [Nb, dim]
        qt = torch.from_numpy(q).to(self.device)  # [n, dim]
        dead_t = torch.from_numpy(dead).to(self.device)
        parts_s, parts_r = [], []
        for start in range(0, len(self._ids), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(self._ids))
            s = qt @ x[start:stop].T  # [n, chunk]
            if len(dead):
                sel = dead_t[(dead_t >= start) & (dead_t < stop)] - start
                if len(sel):
                    s[:, sel] = float("-inf")
            top = torch.topk(s, min(k, stop - start), dim=1)
            parts_s.append(top.values)
            parts_r.append(top.indices + start)
        s = torch.cat(parts_s, 1)
        r = torch.cat(parts_r, 1)
        return s.float().cpu().numpy(), r.cpu().numpy().astype(np.int64)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path, stamp: dict) -> None:
        """Write the index to ``folder`` (see ``engine.index.cache``); ``stamp`` identifies its source state."""
        from engine.index.cache import save_index

        with self._lock:
            save_index(self, Path(folder), stamp)

    @classmethod
    def load(
        cls, folder: str | Path, stamp: dict, *, device: str | torch.device | None = None, approx_threshold: int | None = None
    ) -> "VectorIndex":
        """Open a saved index (keys memory-mapped; HNSW read in the background).

        Raises ``IndexMissingError``, ``IndexStaleError`` (stamp differs) or
        ``IndexCorruptError`` (unreadable, truncated, inconsistent).
        """
        from engine.index.cache import load_index

        return load_index(cls, Path(folder), stamp, device=device, approx_threshold=approx_threshold)


def _topk_merge(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of candidate columns, sorted; pads with -1 / -inf.  [n, c] -> [n, k]."""
    n, c = scores.shape
    out_i = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    if c == 0:
        return out_i, out_s
    scores = np.where(ids >= 0, scores, -np.inf)
    kk = min(k, c)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    s = np.take_along_axis(scores, order, 1)
    i = np.take_along_axis(ids, order, 1)
    valid = np.isfinite(s)
    out_s[:, :kk] = np.where(valid, s, -np.inf)
    out_i[:, :kk] = np.where(valid, i, -1)
    return out_i, out_s
