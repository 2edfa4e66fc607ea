"""Index scaling: build and search time, and recall against exact search, by glossary size."""

from __future__ import annotations

import logging
import os
import statistics
import time

import numpy as np
from rasst.retriever.config import EngineConfig

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
    queries: np.ndarray | None = None,
    dim: int = 256,
    nq: int = 66,
    repeats: int = 9,
    k: int = 10,
    timed_k: int = EngineConfig.window_top,
) -> list[dict]:
    """Search latency for one chunk's windows (nq queries) at the server's ``timed_k``,
    build time, and each kind's recall@``k`` against exact search.

    ``vectors``: real term embeddings to index, padded with random unit vectors (the hard
    case for HNSW: no neighbourhood structure) up to each size. ``queries``: real window
    vectors (one chunk's); without them, ``nq`` indexed vectors plus noise."""
    from rasst.retriever.index import (
        Int8FlatIndex,
        LowRankIndex,
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
        if queries is not None:
            xq = np.ascontiguousarray(queries, dtype=np.float32)
        else:  # queries near database points, as real windows are near their terms
            xq = xb[rng.integers(0, n, nq)] + 0.05 * rng.standard_normal((nq, dim)).astype(
                np.float32
            )
            xq /= np.linalg.norm(xq, axis=1, keepdims=True)
        row = {"entries": n}
        _, Ie = exact_search(xq[:50], xb, k)  # ground truth for the non-float32-flat kinds
        kinds = [
            ("flat", n, False, "float32"),
            ("int8_flat", n, False, "int8"),
            ("low_rank", n, False, "int8"),
            ("hnsw", 0, False, "float32"),
        ] + ([("gpu_flat", n, True, "float32")] if gpu else [])
        for kind, exact_max, on_gpu, precision in kinds:
            if kind in ("flat", "int8_flat", "low_rank") and n > 1_000_000:
                continue
            t0 = time.perf_counter()
            if kind == "int8_flat":  # what int8 search costs without the low-rank estimate
                idx = Int8FlatIndex(xb.shape[1])
                idx.add(xb)
            elif kind == "low_rank":
                idx = LowRankIndex.of(xb)
                if idx is None:  # random padding spreads the rows in every direction
                    continue
            else:
                idx = build_index(xb, exact_max=exact_max, use_gpu=on_gpu, precision=precision)
            build = time.perf_counter() - t0
            _, I = idx.search(xq, k)  # and GPU kernels load on first use
            row[f"{kind}_build_s"] = round(build, 3)
            if kind != "flat":
                row[f"{kind}_recall@{k}_vs_exact"] = round(recall_at(I[:50], Ie, k), 4)
            # Timed at the server's k: the rows each window may vote for.
            row[f"{kind}_search_ms_p50"], _ = _median_ms(repeats, idx.search, xq, timed_k)
            if kind == "hnsw":
                row["hnsw_recall@1_vs_exact"] = round(recall_at(I[:50], Ie, 1), 4)
            if kind in ("int8_flat", "low_rank") and cores > 1:
                # Split over every core, as the server splits a lone chunk's search.
                row[f"{kind}_split_search_ms_p50"], _ = _median_ms(
                    repeats, idx.search, xq, timed_k, threads=cores
                )
        out.append(row)
        logger.info("index %s", row)
    return out
