"""Key files written and read in chunks, so that no step needs every key in RAM at once.

A streamed build writes the keys (float32, and the float16 copy the exact path shortlists
with) into ``.npy`` files of unknown length as chunks arrive, then memory-maps them as the
base. Reading them back (k-means sample, adding codes, compaction, saving) goes through
``read()``/``pread`` rather than the map: pages touched through a map count in the process's
resident set (and the kernel maps ~1 MiB around each touched row, see ``_key_rows`` in
vector_index.py), while pages read into a buffer only sit in the page cache, which the
kernel reclaims. So a build's peak resident memory is one chunk plus the index codes.
"""
from __future__ import annotations

import os
import uuid
import weakref
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

HEADER_BYTES = 128  # fixed: the header is rewritten in place with the final row count
READ_CHUNK = 65_536  # rows per read: 96 MiB of float32 keys at 384-d


class KeyFileWriter:
    """Append rows [n, dim] of one dtype to an .npy file whose row count is fixed at ``close``."""

    def __init__(self, path: Path, dim: int, dtype) -> None:
        self.path, self.dim, self.dtype = Path(path), int(dim), np.dtype(dtype)
        self.rows = 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._f.write(self._header(0))

    def _header(self, n: int) -> bytes:
        d = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (int(n), self.dim)})
        body = d.encode("latin1")
        pad = HEADER_BYTES - 10 - len(body) - 1
        if pad < 0:
            raise ValueError(f"key file header for {n} rows does not fit {HEADER_BYTES} bytes")
        return b"\x93NUMPY\x01\x00" + (HEADER_BYTES - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"{self.path.name}: rows must have shape [n, {self.dim}], got {rows.shape}")
        self._f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> Path:
        self._f.seek(0)
        self._f.write(self._header(self.rows))
        self._f.close()
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)


def spill_path(folder: Path | None, what: str) -> Path:
    """A fresh file name for a streamed base in ``folder`` (the cache folder; else the temp dir).
    The ``.tmp`` suffix makes a killed build's file a stray that the next save removes."""
    import tempfile

    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".spill-{os.getpid()}-{uuid.uuid4().hex[:8]}.{what}.npy.tmp"


def open_spill(path: Path) -> np.memmap:
    """Memory-map a finished spill file read-only; the file is deleted once the map is
    unreferenced, unless it was published into the cache first (then it is gone already)."""
    mm = np.load(path, mmap_mode="r", allow_pickle=False)
    weakref.finalize(mm, _unlink_quietly, str(path))
    return mm


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def is_spill(keys) -> bool:
    name = getattr(keys, "filename", None)
    return isinstance(keys, np.memmap) and name is not None and Path(name).name.startswith(".spill-")


def _mm_file(keys) -> tuple[str, int] | None:
    """(file name, byte offset of row 0) when ``keys`` is a C-contiguous view of a whole-row map."""
    base = keys
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    name = getattr(keys, "filename", None) or getattr(base, "filename", None)
    if name is None or not isinstance(keys, np.ndarray) or not keys.flags.c_contiguous or keys.ndim != 2:
        return None
    root = keys
    while isinstance(getattr(root, "base", None), np.ndarray):
        root = root.base
    # offset of keys[0] within the file = map offset + distance from the map's first byte
    mm = keys if isinstance(keys, np.memmap) else base
    if mm is None:
        return None
    start = keys.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return str(name), int(getattr(mm, "offset", 0)) + int(start)


def iter_chunks(keys, chunk: int = READ_CHUNK, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows [m, dim]) over ``keys[start:]``; a memory-mapped file is read with
    ``read()``, not through the map (see the module docstring)."""
    n = len(keys)
    where = _mm_file(keys) if isinstance(keys, np.memmap) else None
    if where is None:
        for lo in range(start, n, chunk):
            yield lo, np.ascontiguousarray(keys[lo : lo + chunk])
        return
    name, off = where
    dim, dt = keys.shape[1], keys.dtype
    row = dim * dt.itemsize
    with open(name, "rb") as f:
        for lo in range(start, n, chunk):
            m = min(chunk, n - lo)
            f.seek(off + lo * row)
            buf = np.fromfile(f, dtype=dt, count=m * dim)
            if len(buf) != m * dim:
                raise OSError(f"{name}: short read at row {lo} ({len(buf) // dim} of {m} rows)")
            yield lo, buf.reshape(m, dim)


def take_rows(keys, rows: np.ndarray, f=None) -> np.ndarray:
    """``keys[rows]`` for ascending ``rows`` [r] -> [r, dim]; from a memory-mapped file with one
    ``pread`` per row (``f``: that file, already open)."""
    where = _mm_file(keys) if isinstance(keys, np.memmap) and hasattr(os, "pread") else None
    if where is None:
        return np.asarray(keys[rows])
    name, off = where
    dt = keys.dtype
    row = keys.shape[1] * dt.itemsize
    own = f is None
    f = f or open(name, "rb")  # noqa: SIM115
    try:
        fd = f.fileno()
        buf = b"".join(os.pread(fd, row, off + int(r) * row) for r in rows)
    finally:
        if own:
            f.close()
    return np.frombuffer(buf, dt).reshape(len(rows), keys.shape[1])


def write_streamed(path: Path, chunks: Iterable[np.ndarray], dim: int, dtype) -> int:
    """Write ``chunks`` ([m, dim] each) to an .npy at ``path``; returns the row count."""
    w = KeyFileWriter(path, dim, dtype)
    try:
        for c in chunks:
            w.append(c)
    except BaseException:
        w.abort()
        raise
    w.close()
    return w.rows
