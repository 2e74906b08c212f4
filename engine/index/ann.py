"""The approximate part of the index: faiss HNSW over the base rows (labels = row numbers).

HNSW (not IVF) because on real MiniLM keys it gives recall@10 ~0.99 at ~0.3 ms with no
training step; it cannot remove vectors, so removals are tombstones filtered during the
graph search with an ``IDSelectorBitmap`` (bit set = row alive).
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

HNSW_M = 32
EF_CONSTRUCTION = 80
# Chosen from bench/bench_search.py on real MiniLM keys (bench/RESULTS.md): at 1M,
# efConstruction 80 (vs 40) costs 1.7x build time but lifts recall@10 at efSearch 200
# from 0.93 to 0.97; efSearch grows with the graph: 128 is plenty up to 100k, 1M needs ~240.
EF_SEARCH_SMALL = 128
EF_SEARCH_SMALL_ROWS = 100_000
EF_SEARCH_LARGE = 240
EF_SEARCH_LARGE_ROWS = 1_000_000


def auto_ef_search(n_rows: int) -> int:
    """efSearch for a graph of ``n_rows``: interpolated on log(n) between the measured points."""
    if n_rows <= EF_SEARCH_SMALL_ROWS:
        return EF_SEARCH_SMALL
    t = np.log(n_rows / EF_SEARCH_SMALL_ROWS) / np.log(EF_SEARCH_LARGE_ROWS / EF_SEARCH_SMALL_ROWS)
    return int(round(EF_SEARCH_SMALL + min(t, 1.5) * (EF_SEARCH_LARGE - EF_SEARCH_SMALL)))


def build_hnsw(keys: np.ndarray, m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION):
    """HNSW inner-product index over ``keys`` float32 [n, dim]; label i = row i."""
    import faiss

    index = faiss.IndexHNSWFlat(int(keys.shape[1]), int(m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    if len(keys):
        index.add(np.ascontiguousarray(keys, dtype=np.float32))
    return maybe_to_gpu(index)


def maybe_to_gpu(index):
    """Move a faiss index to the GPU(s) when faiss sees one; otherwise return it unchanged.

    Guards a faiss trap: without a usable GPU ``index_cpu_to_all_gpus`` can hand back an
    EMPTY index silently; HNSW has no GPU version and raises. Both fall back to the CPU.
    """
    import faiss

    try:
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # noqa: BLE001 - a broken GPU stack must not break search
        ngpu = 0
    if ngpu <= 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index
    try:
        moved = faiss.index_cpu_to_all_gpus(index)
    except Exception as exc:  # noqa: BLE001
        log.warning("faiss index stays on the CPU (%s cannot move to the GPU: %s)", type(index).__name__, exc)
        return index
    if moved.ntotal != index.ntotal:
        log.warning("faiss GPU copy holds %d of %d vectors; keeping the CPU index", moved.ntotal, index.ntotal)
        return index
    return moved


def search_hnsw(index, queries: np.ndarray, k: int, ef_search: int, alive_bitmap: np.ndarray | None):
    """(scores float32 [n, k], rows int64 [n, k]); rows -1 where fewer than k were found.

    ``alive_bitmap`` (uint8, little-endian bits, bit set = alive) excludes tombstoned rows.
    """
    import faiss

    params = faiss.SearchParametersHNSW()
    params.efSearch = int(max(ef_search, k))
    sel = None
    if alive_bitmap is not None:
        sel = faiss.IDSelectorBitmap(int(index.ntotal), faiss.swig_ptr(alive_bitmap))
        params.sel = sel
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k), params=params)
    del sel
    return scores, rows
