"""Index scaling: build and search time, and recall against exact search, by glossary size."""

from __future__ import annotations

import logging
import os
import statistics
import time

import numpy as np

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- index scaling


def _median_ms(repeats: int, fn, *args, **kw):
    """The median wall time of ``repeats`` calls of ``fn(*args, **kw)`` in ms (3
    decimals), and the last call's result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args, **kw)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3), result


def bench_index(
    sizes: list[int],
    vectors: np.ndarray | None = None,
    dim: int = 256,
    nq: int = 66,
    repeats: int = 5,
    k: int = 10,
) -> list[dict]:
    """Search latency for one chunk's windows (nq queries), build time, exact vs HNSW recall.

    ``vectors``: real term embeddings to index, padded with random unit vectors (the hard
    case for HNSW: no neighbourhood structure) up to each size."""
    from rasst.retriever.index import (
        Int8FlatIndex,
        build_index,
        exact_search,
        gpu_available,
        recall_at,
    )

    gpu = gpu_available()
    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        real = vectors[:n] if vectors is not None else np.zeros((0, dim), np.float32)
        pad = rng.standard_normal((n - len(real), dim)).astype(np.float32)
        pad /= np.linalg.norm(pad, axis=1, keepdims=True)
        xb = np.ascontiguousarray(np.concatenate([real, pad]))
        # Queries near database points, as real windows are near their terms.
        xq = xb[rng.integers(0, n, nq)] + 0.05 * rng.standard_normal((nq, dim)).astype(np.float32)
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)
        row = {"entries": n}
        _, Ie = exact_search(xq[:50], xb, k)  # ground truth for the non-float32-flat kinds
        kinds = [
            ("flat", n, False, "float32"),
            ("int8_flat", n, False, "int8"),
            ("hnsw", 0, False, "float32"),
        ] + ([("gpu_flat", n, True, "float32")] if gpu else [])
        for kind, exact_max, on_gpu, precision in kinds:
            if kind in ("flat", "int8_flat") and n > 1_000_000:
                continue
            t0 = time.perf_counter()
            idx = build_index(xb, exact_max=exact_max, use_gpu=on_gpu, precision=precision)
            build = time.perf_counter() - t0
            idx.search(xq, k)  # GPU kernels load on first use
            row[f"{kind}_build_s"] = round(build, 3)
            row[f"{kind}_search_ms_p50"], (D, I) = _median_ms(repeats, idx.search, xq, k)
            if kind != "flat":
                row[f"{kind}_recall@{k}_vs_exact"] = round(recall_at(I[:50], Ie, k), 4)
            if kind == "hnsw":
                row["hnsw_recall@1_vs_exact"] = round(recall_at(I[:50], Ie, 1), 4)
            if kind == "int8_flat" and isinstance(idx, Int8FlatIndex) and cores > 1:
                # Split over every core, as the server splits a lone chunk's search.
                row["int8_flat_split_search_ms_p50"], _ = _median_ms(
                    repeats, idx.search, xq, k, threads=cores
                )
        out.append(row)
        logger.info("index %s", row)
    return out
