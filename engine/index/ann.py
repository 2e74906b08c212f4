"""The approximate part of the index: faiss HNSW over the base rows (labels = row numbers).

HNSW (not IVF) because on real MiniLM keys it gives recall@10 ~0.99 at ~0.3 ms with no
training step; it cannot remove vectors, so removals are tombstones filtered during the
graph search with an ``IDSelectorBitmap`` (bit set = row alive).
"""
from __future__ import annotations

import logging

import numpy as np

from engine.index import keyfile

log = logging.getLogger(__name__)

HNSW_M = 32
EF_CONSTRUCTION = 80
HNSW_CHUNK = 8_192  # ~3 s of graph building on 2 cores: how long a cancel may wait
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


def build_hnsw(keys: np.ndarray, m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION, should_stop=None):
    """HNSW inner-product index over ``keys`` float32 [n, dim]; label i = row i.

    Added in chunks so that ``should_stop()`` (checked between them) can cancel a build.
    """
    import faiss

    index = faiss.IndexHNSWFlat(int(keys.shape[1]), int(m), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(ef_construction)
    add_chunked(index, keys, should_stop, chunk=HNSW_CHUNK)
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


# ---------------------------------------------------------------------- compressed (IVF-PQ)
# Past COMPRESSED_ROWS the base is indexed by IVF-PQ: PQ codes of PQ_M bytes per key in
# RAM, the keys themselves stay memory-mapped and re-score a shortlist exactly. Chosen
# over HNSW+SQ8/PQ (graph alone ~0.26 KB/key at M 32: 2.6 GB at 10M, and a build of hours
# here) and IVF+SQ8 (384 B/key) by bench/bench_index_scale.py; figures in bench/RESULTS.md.
PQ_M = 48  # bytes per key (8 dimensions per sub-quantiser at 384-d)
PQ_NBITS = 8
TRAIN_PER_LIST = 40  # k-means training points per inverted list (faiss warns below 39)
TRAIN_MIN = 65_536  # the PQ codebooks (256 centroids each) want ~10k points at least
ADD_CHUNK = 65_536  # codes are added in chunks so a cancelled build stops within ~a second
IVF_NPROBE_MIN = 16
RERANK_MIN = 200  # shortlist floor (100k keys: recall@10 0.959 held-out with 200)
# The PQ codes' near-misses grow with the keys (bench_ivf_rule.py, RESULTS.md; tuning recall@10,
# nprobe 128): 1M keys 0.946 / 0.962 with shortlists 200 / 300; 2M 0.946 / 0.958 with 300 / 400,
# while more probes moved it < 0.005. 300 sqrt(n / 1M) covers both points (300, 425).
RERANK_AT_MILLION = 300
RERANK_MAX = 4_000  # ~6 MB of float32 rows read per query: past it a larger PQ is the better buy


def rerank_for(n_rows: int, k: int) -> int:
    """Shortlist rows re-scored exactly for top-``k`` over ``n_rows`` keys: 300 sqrt(n / 1M), >= 200 and 10 k."""
    by_n = int(np.ceil(RERANK_AT_MILLION * np.sqrt(max(int(n_rows), 0) / 1e6)))
    return int(max(k, 10 * k, RERANK_MIN, min(RERANK_MAX, by_n)))


def ivf_nlist(n_rows: int) -> int:
    """Inverted lists for ``n_rows`` keys: a power of two near 2 * sqrt(n), 256 .. 16384."""
    target = 2.0 * np.sqrt(max(int(n_rows), 1))
    return int(min(16_384, max(256, 2 ** int(round(np.log2(target))))))


def ivf_nprobe(nlist: int) -> int:
    """Lists scanned per query: ~2.83 sqrt(nlist), the cheapest setting that reached recall@10
    0.95 on tuning queries at 100k (512 lists: 64) and 1M keys (2048 lists: 128), RESULTS.md."""
    return int(min(nlist, max(IVF_NPROBE_MIN, round(2 * np.sqrt(2 * nlist)))))


def pq_m_for(dim: int) -> int:
    """Sub-quantisers: PQ_M when it divides ``dim``, else the largest divisor of dim <= PQ_M."""
    for m in range(min(PQ_M, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


class BuildCancelled(Exception):
    """A background build saw its stop flag; the index keeps what it had."""


def train_ivfpq(keys: np.ndarray, nlist: int, *, seed: int = 1234):
    """An empty, trained IVF-PQ (inner product) over a sample of ``keys`` [n, dim] float32."""
    import faiss

    n, dim = keys.shape
    nlist = int(min(nlist, max(1, n // TRAIN_PER_LIST)))
    # "np": no polysemous training (index_factory turns it on for PQ; it took minutes here, unused)
    index = faiss.index_factory(int(dim), f"IVF{nlist},PQ{pq_m_for(dim)}x{PQ_NBITS}np", faiss.METRIC_INNER_PRODUCT)
    take = min(n, max(TRAIN_PER_LIST * nlist, TRAIN_MIN))
    rows = np.sort(np.random.default_rng(seed).choice(n, take, replace=False)) if take < n else np.arange(n)
    # memory-mapped keys: only the sample is read (pread), so training holds [take, dim], not [n, dim]
    index.train(np.ascontiguousarray(keyfile.take_rows(keys, rows), dtype=np.float32))  # [take, dim]
    return index


def trained_fits(trained, n_rows: int, dim: int) -> bool:
    """Whether a trained IVF-PQ can index ``n_rows`` keys as well as a fresh one (within 2x lists)."""
    if trained is None or int(trained.d) != int(dim):
        return False
    want = min(ivf_nlist(n_rows), max(1, n_rows // TRAIN_PER_LIST))
    return want / 2 <= int(trained.nlist) <= want * 2


def empty_like(trained):
    """A copy of a trained index without its vectors (compaction reuses the training)."""
    import faiss

    index = faiss.clone_index(trained)
    index.reset()
    return index


def add_chunked(index, keys: np.ndarray, should_stop=None, start: int = 0, chunk: int = ADD_CHUNK) -> None:
    """Add ``keys[start:]`` (labels continue from ``index.ntotal``) in chunks, checking ``should_stop``.

    Memory-mapped keys are read chunk by chunk (``keyfile.iter_chunks``), never mapped whole."""
    for _, rows in keyfile.iter_chunks(keys, chunk, start):
        if should_stop is not None and should_stop():
            raise BuildCancelled
        index.add(np.ascontiguousarray(rows, dtype=np.float32))


def search_ivfpq(index, queries: np.ndarray, n_short: int, nprobe: int, alive_bitmap: np.ndarray | None):
    """Shortlist rows int64 [n, n_short] by PQ scores (-1 where fewer were found)."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = int(nprobe)
    sel = None
    if alive_bitmap is not None:
        sel = faiss.IDSelectorBitmap(int(index.ntotal), faiss.swig_ptr(alive_bitmap))
        params.sel = sel
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(n_short), params=params)
    del sel
    return rows


def kind_of(index) -> str:
    """'ivfpq' or 'hnsw' for a faiss index of this module."""
    import faiss

    cpu = index
    return "ivfpq" if isinstance(cpu, faiss.IndexIVF) or "IVF" in type(cpu).__name__ else "hnsw"
