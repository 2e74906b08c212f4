"""On-disk form of a VectorIndex: a folder of .npy files + the faiss graph + stamp.json.

Files (shapes): ``base_ids.npy`` int64 [Nb], ``base_keys.npy`` float32 [Nb, dim] and
``base_keys16.npy`` float16 [Nb, dim] (both memory-mapped on load, so opening a 1M index
costs milliseconds), ``base_order.npy`` int64 [Nb] (argsort of ids), ``dead.npy`` uint8
[ceil(Nb/8)] (packed tombstones), ``delta_ids.npy`` [Nd], ``delta_keys.npy`` [Nd, dim],
``ann.faiss`` (HNSW or IVF-PQ over the base rows, optional), ``ann_trained.faiss`` (the
trained, empty IVF-PQ: a rebuild after a kill or a compaction skips the training).

Every file is written to a temporary name of its own (pid + random: two writers never
share one) and moved into place with ``os.replace``; ``stamp.json`` is removed first and
written LAST with each file's size and sha256 (for big files: of the first and last
MiB), so an interrupted save reads as corrupt or missing, never as valid. Base files are
rewritten only when the base changed since the folder was written (edits touch only the
small delta/tombstone files); the ann files only when the ann changed (a background build
finished). A save during a background build writes the ann in place, if any; a load that
finds none starts a background build.

Several processes may open one pack (the app, a CLI command, an import): a save and a
load each hold the folder's lock (``.lock``, ``flock``), so a cache is never a mix of
two writers' files and a load never reads a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from filelock import FileLock, Timeout

from engine.processes import pid_alive
from engine.index.errors import IndexCorruptError, IndexMissingError, IndexStaleError

log = logging.getLogger(__name__)

FORMAT = 1
STAMP = "stamp.json"
FULL_HASH_LIMIT = 64 << 20
EDGE = 1 << 20
BASE_FILES = ("base_ids.npy", "base_keys.npy", "base_keys16.npy", "base_order.npy")
ANN, TRAINED = "ann.faiss", "ann_trained.faiss"
LOCK = ".lock"
LOCK_TIMEOUT_S = 120.0  # a save of a 1M-entry cache takes seconds; past this the cache is skipped


def _checksum(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            while block := f.read(1 << 20):
                h.update(block)
        else:  # big files: size + both ends catch truncation and header damage cheaply
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()


def _normal(stamp: dict) -> Any:
    return json.loads(json.dumps(stamp, sort_keys=True, default=str))


@contextmanager
def _locked(folder: Path, *, required: bool) -> Iterator[None]:
    """Hold the cache folder's lock for the block (``required=False``: go on without it
    where it cannot be made, as on read-only media, where nobody writes the cache either)."""
    lock = FileLock(str(folder / LOCK), timeout=LOCK_TIMEOUT_S, thread_local=False, preserve_lock_file=True)
    held = True
    try:
        lock.acquire()
    except OSError as exc:
        if required or isinstance(exc, Timeout):
            raise
        held = False
        log.debug("index cache %s: no lock (%s); reading it unlocked", folder, exc)
    try:
        yield
    finally:
        if held:
            lock.release()


def _tmp(folder: Path, name: str) -> Path:
    return folder / f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _write_npy(folder: Path, name: str, arr: np.ndarray) -> None:
    tmp = _tmp(folder, name)
    # No fsync: the cache is derived data, and a torn write is caught by stamp.json's
    # sizes and checksums, which costs a rebuild, never a wrong answer.
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))
    os.replace(tmp, folder / name)


def _spill_in_use(path: Path) -> bool:
    """Whether ``path`` is a streamed build's key file (``.spill-<pid>-…``) of a running process."""
    parts = path.name.split("-")
    if not path.name.startswith(".spill-") or len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid == os.getpid() or pid_alive(pid)


def _write_keys(folder: Path, name: str, arr, dtype) -> np.ndarray | None:
    """Write base keys as ``name`` in ``dtype`` without holding them all in RAM when they are
    memory-mapped: a streamed build's own file is hard-linked into place (no copy), another
    map is copied chunk by chunk. Returns the written file, memory-mapped, when it was made
    from a map (so the base can use it), else None."""
    from engine.index import keyfile

    dtype = np.dtype(dtype)
    if not isinstance(arr, np.memmap):
        _write_npy(folder, name, np.asarray(arr).astype(dtype, copy=False))
        return None
    tmp = _tmp(folder, name)
    linked = False
    if keyfile.is_spill(arr) and arr.dtype == dtype and Path(arr.filename).parent == folder:
        try:
            os.link(arr.filename, tmp)
            linked = True
        except OSError:  # a file system without hard links: copy
            pass
    if not linked:
        keyfile.write_streamed(tmp, (c.astype(dtype, copy=False) for _, c in keyfile.iter_chunks(arr)),
                               arr.shape[1], dtype)
    os.replace(tmp, folder / name)
    with _NPY_HEADER_LOCK:
        return np.load(folder / name, mmap_mode="r", allow_pickle=False)


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_index(index, folder: Path, stamp: dict) -> None:
    if not isinstance(stamp, dict):
        raise TypeError(f"save: stamp must be a dict, got {type(stamp).__name__}")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder, required=True):
        # Under the lock no other save runs: temporary files left here are a killed writer's,
        # except the key files of a streamed build in a live process (named by its pid).
        for stray in folder.glob(".*.tmp"):
            if not _spill_in_use(stray):
                stray.unlink(missing_ok=True)
        _save_locked(index, folder, stamp)


def _save_locked(index, folder: Path, stamp: dict) -> None:
    import faiss

    old = _read_meta(folder)
    old_files = (old or {}).get("files", {}) if isinstance(old, dict) else {}

    def intact(names) -> bool:
        return all((folder / n).is_file() and (folder / n).stat().st_size == old_files[n]["size"]
                   for n in old_files if n in names)

    reuse = isinstance(old, dict) and old.get("base_uid") == index._base_uid and intact(BASE_FILES)
    # the ann's labels are base rows: it is kept only with the base it was made for
    ann_same = reuse and old.get("ann_uid") == index._ann_uid and intact((ANN,)) and (
        (index._ann is not None) == (ANN in old_files))
    trained_same = isinstance(old, dict) and old.get("trained_uid") == index._trained_uid and intact((TRAINED,)) and (
        (index._trained is not None) == (TRAINED in old_files))
    (folder / STAMP).unlink(missing_ok=True)
    files: dict[str, dict] = {}
    if reuse:
        files.update({n: v for n, v in old_files.items() if n in BASE_FILES})
    else:
        # The key files are replaced, not removed first: the base may be memory-mapped from them.
        for n in ("base_ids.npy", "base_order.npy"):
            (folder / n).unlink(missing_ok=True)
        keys = index._keys
        if index._keys16 is None and not isinstance(keys, np.memmap):
            index._keys16 = np.asarray(keys).astype(np.float16)
        _write_npy(folder, "base_ids.npy", index._ids)
        _write_keys(folder, "base_keys.npy", keys, np.float32)
        made16 = _write_keys(folder, "base_keys16.npy", keys if index._keys16 is None else index._keys16,
                             np.float16)
        if index._keys16 is None:  # converted from the map chunk by chunk: use that file
            index._keys16 = made16
        _write_npy(folder, "base_order.npy", index._order)
    for name, obj, same in ((ANN, index._ann, ann_same), (TRAINED, index._trained, trained_same)):
        if same:
            if name in old_files:
                files[name] = old_files[name]
            continue
        (folder / name).unlink(missing_ok=True)
        if obj is not None:
            if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(obj).__name__:
                obj = faiss.index_gpu_to_cpu(obj)
            tmp = _tmp(folder, name)
            faiss.write_index(obj, str(tmp))
            os.replace(tmp, folder / name)
    _write_npy(folder, "dead.npy", np.packbits(index._dead, bitorder="little"))
    _write_npy(folder, "delta_ids.npy", index._d_ids)
    _write_npy(folder, "delta_keys.npy", index._d_keys)
    for n in ("dead.npy", "delta_ids.npy", "delta_keys.npy", ANN, TRAINED) + (() if reuse else BASE_FILES):
        p = folder / n
        if p.is_file() and n not in files:
            files[n] = {"size": p.stat().st_size, "sha256": _checksum(p)}
    meta = {
        "format": FORMAT,
        "stamp": _normal(stamp),
        "dim": index.dim,
        "n_base": len(index._ids),
        "n_delta": len(index._d_ids),
        "base_uid": index._base_uid,
        "ann_uid": index._ann_uid if ANN in files else None,
        "trained_uid": index._trained_uid if TRAINED in files else None,
        "approx_threshold": index.approx_threshold,
        "compressed_threshold": index.compressed_threshold,
        "hnsw": {"M": index.hnsw_m, "efConstruction": index.ef_construction, "efSearch": index.ef_search},
        "ivf": {"nprobe": index.nprobe, "rerank": index.rerank},
        "files": files,
    }
    tmp = _tmp(folder, STAMP)
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, folder / STAMP)


# numpy parses .npy headers with ast.literal_eval, which CPython 3.11 can break when two
# threads parse at the same moment ("SystemError: AST constructor recursion depth
# mismatch", cpython gh-106905): two packs opened by two threads then fail at random.
# The arrays are read (or memory-mapped) outside Python's parser, so the lock costs little.
_NPY_HEADER_LOCK = threading.Lock()


def _corrupt(folder: Path, msg: str) -> IndexCorruptError:
    return IndexCorruptError(f"index cache {folder}: {msg}")


def load_index(cls, folder: Path, stamp: dict, *, device=None, approx_threshold=None):
    if not (folder / STAMP).is_file():
        raise IndexMissingError(f"no index cache at {folder}")
    try:
        with _locked(folder, required=False):
            return _load_locked(cls, folder, stamp, device=device, approx_threshold=approx_threshold)
    except Timeout:
        raise _corrupt(folder, f"another process has been writing it for over {LOCK_TIMEOUT_S:.0f} s") from None
    except OSError as exc:  # a file gone or unreadable mid-load: rebuilt like any damage
        raise _corrupt(folder, f"unreadable ({exc})") from exc


def _load_locked(cls, folder: Path, stamp: dict, *, device=None, approx_threshold=None):
    meta = _read_meta(folder)
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise _corrupt(folder, f"{STAMP} is unreadable")
    if meta.get("format") != FORMAT:
        raise IndexStaleError(f"index cache {folder} has format {meta.get('format')!r}, expected {FORMAT}")
    if meta.get("stamp") != _normal(stamp):
        raise IndexStaleError(f"index cache {folder} was saved for {meta.get('stamp')!r}, not {_normal(stamp)!r}")
    files = meta["files"]
    try:
        dim, nb, nd = int(meta["dim"]), int(meta["n_base"]), int(meta["n_delta"])
        for name, info in files.items():
            p = folder / name
            if not p.is_file():
                raise _corrupt(folder, f"{name} is missing")
            if p.stat().st_size != int(info["size"]):
                raise _corrupt(folder, f"{name} has {p.stat().st_size} bytes, expected {info['size']} (truncated?)")
            if _checksum(p) != info["sha256"]:
                raise _corrupt(folder, f"{name} does not match its checksum")
        need = {"base_ids.npy", "base_keys.npy", "base_keys16.npy", "base_order.npy", "dead.npy", "delta_ids.npy", "delta_keys.npy"}
        if need - set(files):
            raise _corrupt(folder, f"{STAMP} lists no {sorted(need - set(files))}")

        def arr(name: str, dtype, shape, mmap: bool = False) -> np.ndarray:
            try:
                with _NPY_HEADER_LOCK:
                    a = np.load(folder / name, mmap_mode="c" if mmap else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise _corrupt(folder, f"{name} is unreadable: {exc}") from exc
            if a.dtype != np.dtype(dtype) or a.shape != shape:
                raise _corrupt(folder, f"{name} is {a.dtype}{list(a.shape)}, expected {np.dtype(dtype)}{list(shape)}")
            return a

        ids = arr("base_ids.npy", np.int64, (nb,))
        keys = arr("base_keys.npy", np.float32, (nb, dim), mmap=True)
        keys16 = arr("base_keys16.npy", np.float16, (nb, dim), mmap=True)
        order = arr("base_order.npy", np.int64, (nb,))
        dead = np.unpackbits(arr("dead.npy", np.uint8, ((nb + 7) // 8,)), count=nb, bitorder="little").astype(bool)
        d_ids = arr("delta_ids.npy", np.int64, (nd,))
        d_keys = arr("delta_keys.npy", np.float32, (nd, dim))
        if nb and (order.min() < 0 or order.max() >= nb or np.any(np.diff(ids[order]) < 0)):
            raise _corrupt(folder, "base_order.npy does not sort base_ids.npy")
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(folder, f"{STAMP} is inconsistent: {exc}") from exc

    hn = meta.get("hnsw") or {}
    iv = meta.get("ivf") or {}
    index = cls(
        dim,
        approx_threshold=int(approx_threshold if approx_threshold is not None else meta.get("approx_threshold", 0)),
        device=device,
        hnsw_m=int(hn.get("M", 32)),
        ef_construction=int(hn.get("efConstruction", 40)),
        ef_search=None if hn.get("efSearch") is None else int(hn["efSearch"]),
        **({} if meta.get("compressed_threshold") is None else {"compressed_threshold": int(meta["compressed_threshold"])}),
        nprobe=None if iv.get("nprobe") is None else int(iv["nprobe"]),
        rerank=None if iv.get("rerank") is None else int(iv["rerank"]),
    )
    index._set_base(ids, keys, keys16, order, dead)
    index._base_uid = str(meta["base_uid"])
    if os.access(folder, os.W_OK):  # a compaction's key files go beside these, published by a link
        index.spill_dir = folder
    index._set_delta(d_ids, d_keys)
    if len(index._d_pos) != nd or (nd and (index._base_rows(d_ids) >= 0).any()):
        raise _corrupt(folder, "delta ids repeat or are also live in the base")
    if TRAINED in files:  # small (codebooks + centroids): read now
        try:
            import faiss

            index._trained = faiss.read_index(str(folder / TRAINED))
            index._trained_uid = meta.get("trained_uid") or uuid.uuid4().hex
        except Exception as exc:  # noqa: BLE001 - only costs a training run
            log.warning("index cache %s: %s unusable (%s); the next build trains again", folder, TRAINED, exc)
    if ANN in files:
        # Opened under the lock: a save that replaces the ann afterwards cannot hand this
        # base another base's ann.
        _load_ann_async(index, open(folder / ANN, "rb"), nb, meta.get("ann_uid"))
    elif nb >= index.approx_threshold:
        log.info("index cache %s has no ann; building one in the background (exact search meanwhile)", folder)
        with index._lock:
            index._start_ann()
    return index


def _load_ann_async(index, f, nb: int, ann_uid) -> None:
    """Read the ann from the open file ``f`` in a thread; search is exact until it is ready.
    An unreadable or inconsistent one is rebuilt in the background."""
    import faiss

    stop = threading.Event()
    index._build_stop = stop  # a build() or compact() meanwhile supersedes this load
    index._ann_ready.clear()
    lineage = index._lineage
    path = f.name

    def work() -> None:
        rebuild = False
        try:
            with f:
                ann = faiss.read_index(faiss.PyCallbackIOReader(f.read))
            if ann.ntotal != nb or ann.d != index.dim:
                raise ValueError(f"it holds {ann.ntotal} vectors of {ann.d} dimensions, the base {nb} of {index.dim}")
            from engine.index.ann import kind_of, maybe_to_gpu

            if kind_of(ann) == "hnsw":
                ann = maybe_to_gpu(ann)
            with index._lock:
                if not stop.is_set() and index._lineage == lineage:
                    index._install(ann, None, nb, None, None)
                    index._ann_uid = ann_uid or index._ann_uid
        except Exception as exc:  # noqa: BLE001 - a bad ann only costs speed
            log.warning("index ann %s unusable (%s); rebuilding it in the background", path, exc)
            rebuild = True
        finally:
            with index._lock:
                if index._build_stop is stop:
                    index._build_stop = None
                    if rebuild:  # ready stays clear from this load through the rebuild
                        index._start_ann()
                    if index._build_stop is None:
                        index._ann_ready.set()

    threading.Thread(target=work, name="ann-load", daemon=True).start()
