"""FAISS inner-product index over glossary vectors, with entry-level max pooling.

Exact ``IndexFlatIP`` up to ``exact_max`` rows, HNSW above it; on a GPU (faiss-gpu and
a device present) flat indexes move to the GPU. Names follow FAISS: queries ``xq``,
database ``xb``, ``k``, distances ``D``, ids ``I``.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

EXACT_MAX_DEFAULT = 100_000  # rows; beyond this HNSW keeps search sub-millisecond
HNSW_M = 32
HNSW_EF_SEARCH = 128


@functools.lru_cache(maxsize=1)
def faiss_module():
    try:
        import faiss
    except ImportError as e:
        raise RuntimeError(
            "the index needs faiss: pip install 'rasst[server,cpu]' (or [server,gpu])"
        ) from e
    # faiss switches to BLAS sgemm at 20 queries by default; below that its own loop is
    # 5-7x slower than BLAS for our 256-d vectors on this CPU, so always use BLAS.
    faiss.cvar.distance_compute_blas_threshold = 1
    threads = os.environ.get("RASST_FAISS_THREADS")
    if threads:
        faiss.omp_set_num_threads(int(threads))
    return faiss


def gpu_available() -> bool:
    faiss = faiss_module()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    return faiss_module().StandardGpuResources()


def build_index(xb: np.ndarray, exact_max: int = EXACT_MAX_DEFAULT, use_gpu: bool | None = None):
    """An inner-product index over unit vectors xb (n, d) float32."""
    faiss = faiss_module()
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    n, d = xb.shape
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(xb)
    if (gpu_available() if use_gpu is None else use_gpu) and n <= exact_max:
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    return index


def exact_search(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force (numpy), for recall tests of approximate indexes."""
    S = xq @ xb.T
    k = min(k, xb.shape[0])
    I = np.argsort(-S, axis=1)[:, :k]
    return np.take_along_axis(S, I, axis=1), I


def recall_at(I_approx: np.ndarray, I_exact: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k found in the approximate top-k."""
    hits = sum(len(set(a[:k]) & set(e[:k])) for a, e in zip(I_approx, I_exact, strict=True))
    return hits / float(I_exact[:, :k].size)


@dataclass(frozen=True)
class EntryHit:
    entry: int  # position of the entry in the glossary
    row: int  # index row that matched (term or one alias)
    score: float
    window: int  # query row (window) that matched best


class TermIndex:
    """Vectors of every spoken form of every entry; rows map back to entries."""

    def __init__(
        self,
        xb: np.ndarray,
        row_entry: np.ndarray,
        exact_max: int = EXACT_MAX_DEFAULT,
        use_gpu: bool | None = None,
    ):
        self.ntotal = int(xb.shape[0])
        self.row_entry = np.asarray(row_entry, dtype=np.int64)
        self.index = build_index(xb, exact_max, use_gpu) if self.ntotal else None
        self.kind = type(self.index).__name__ if self.index is not None else "empty"

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query: D (nq, k) scores, I (nq, k) rows (-1 where fewer)."""
        if self.index is None or len(xq) == 0:
            return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
        return self.index.search(np.ascontiguousarray(xq, dtype=np.float32), min(k, self.ntotal))

    def best_entries(
        self, D: np.ndarray, I: np.ndarray, threshold: float, top_k: int
    ) -> list[EntryHit]:
        """Max over windows per entry, keep score >= threshold, best ``top_k`` first."""
        valid = (I >= 0) & (threshold <= D)
        if not valid.any():
            return []
        w, j = np.nonzero(valid)
        rows = I[w, j]
        scores = D[w, j]
        entries = self.row_entry[rows]
        order = np.lexsort((-scores, entries))  # by entry, best score first
        entries, scores, rows, w = entries[order], scores[order], rows[order], w[order]
        first = np.ones(len(entries), bool)
        first[1:] = entries[1:] != entries[:-1]
        e, s, r, ww = entries[first], scores[first], rows[first], w[first]
        best = np.argsort(-s, kind="stable")[:top_k]
        return [EntryHit(int(e[i]), int(r[i]), float(s[i]), int(ww[i])) for i in best]
