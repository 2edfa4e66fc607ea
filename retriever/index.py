"""FAISS inner-product index over glossary vectors, with entry-level max pooling.

Exact ``IndexFlatIP`` up to ``exact_max`` rows, HNSW above it; with int8 arithmetic,
``Int8FlatIndex``, or ``LowRankIndex`` for many rows whose variance lies in a few
directions (term vectors: the same scores at half the cost). On a GPU, exact indexes
live on the GPU: faiss-gpu's ``GpuIndexFlatIP`` where faiss-gpu is installed, else
``TorchFlatIndex`` (one matrix product and a top-k in PyTorch: faiss-gpu's wheels need
CUDA 12 libraries that a CUDA 13 machine lacks). Names follow FAISS: queries ``xq``,
database ``xb``, ``k``, distances ``D``, ids ``I``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from .config import EXACT_MAX_DEFAULT, PRECISIONS  # declared with the settings

logger = logging.getLogger(__name__)

# A GPU searches exactly up to this many rows whatever exact_max says: 1M rows took
# 0.83 ms per chunk on an H200 where HNSW on 16 cores took 6.9 ms and found 17% of the
# exact top-10. 5M x 256-d float16 is 2.5 GB of GPU memory.
GPU_EXACT_MAX = 5_000_000
# Query rows (padded to powers of two) a GPU index warms up to when built: a batch of
# the default 2,048 windows plus one clip's.
GPU_WARM_QUERIES = 4096
HNSW_M = 32
HNSW_EF_SEARCH = 128
# An int8 index of at least this many rows (one block) whose variance lies in a few
# directions is a LowRankIndex. Below it there is nothing to gain (one chunk, term
# vectors, one thread: 1.28 against 1.33 ms flat at 10.6K rows, 0.97 against 0.30 at 1K;
# 8.1 against 16.0 at 104K).
LOW_RANK_MIN_ROWS = 16384
# The share of the rows' variance that the low-rank directions must hold.
LOW_RANK_VARIANCE = 0.999


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
    """A GPU the exact index can use: through faiss-gpu, or through PyTorch."""
    return faiss_gpu_available() or torch_cuda_available()


def faiss_gpu_available() -> bool:
    try:
        faiss = faiss_module()
    except RuntimeError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def gpu_name() -> str:
    """The GPU's name for reports ('' without one)."""
    if torch_cuda_available():
        import torch

        return torch.cuda.get_device_name(0)
    return "GPU (faiss-gpu)" if faiss_gpu_available() else ""


class TorchFlatIndex:
    """Exact inner-product search with PyTorch: ``D, I = topk(xq @ xb.T)``.

    The faiss ``search`` contract (float32 D, int64 I, numpy in and out), for a GPU that
    faiss cannot use. Vectors are held in float16 on CUDA (half the memory and twice
    the matrix-product speed; scores move by about 1e-3) and float32 elsewhere.
    """

    def __init__(self, d: int, device: str = "cuda"):
        import torch

        self.d = d
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.xb = torch.zeros((0, d), dtype=self.dtype, device=self.device)

    @property
    def ntotal(self) -> int:
        return int(self.xb.shape[0])

    def add(self, xb: np.ndarray) -> None:
        import torch

        x = torch.as_tensor(np.ascontiguousarray(xb, dtype=np.float32), device=self.device)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"vectors must be (n, {self.d}), got {tuple(x.shape)}")
        self.xb = torch.cat([self.xb, x.to(self.dtype)])

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        n = len(xq)
        with torch.no_grad():
            q = torch.as_tensor(np.ascontiguousarray(xq, dtype=np.float32), device=self.device)
            if self.device.type == "cuda":  # a few shapes only: each new one loads kernels
                q = pad_rows(q)
            D, I = (q.to(self.dtype) @ self.xb.T).topk(min(k, self.ntotal), dim=1)
            return D[:n].float().cpu().numpy(), I[:n].cpu().numpy()


def pow2_bucket(n: int) -> int:
    """The next power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


def pad_rows(x):
    """``x`` (n, ...) with zero rows appended up to ``pow2_bucket(n)``. On a GPU the first
    product of each new shape loads and selects kernels (up to ~50 ms, measured on an
    H100); padded, a server meets log2(rows) shapes, all warmed before it serves."""
    import torch

    n, m = x.shape[0], pow2_bucket(x.shape[0])
    return x if m == n else torch.cat([x, x.new_zeros((m - n, *x.shape[1:]))])


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    return faiss_module().StandardGpuResources()


@functools.lru_cache(maxsize=1)
def int8_matmul_available() -> bool:
    """Whether this torch build multiplies int8 matrices on the CPU (``torch._int_mm``)."""
    try:
        import torch

        a = torch.ones((2, 8), dtype=torch.int8)
        return bool((torch._int_mm(a, a.T.contiguous()) == 8).all())
    except Exception as e:  # an old or unusual build: serve float32 instead
        logger.warning("int8 matrix products unavailable (%s): using float32", e)
        return False


def quantize_rows(x):
    """Symmetric per-row int8 quantisation of a float tensor (n, d): (int8 (n, d), scale
    (n,)) with x ~ q * scale[:, None] and scale = max |row| / 127. All-zero rows get a
    tiny scale instead of a division by zero."""
    import torch

    scale = x.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(x / scale[:, None]).to(torch.int8), scale


class Int8FlatIndex:
    """Exact-layout inner-product search in int8 arithmetic on a CPU.

    Database rows and queries are quantised symmetrically per row (scale = max |x| / 127)
    and multiplied as int8 with int32 accumulation (``torch._int_mm``, oneDNN/FBGEMM
    kernels), then rescaled: about 2x faster than float32 BLAS (faiss) for one chunk's 66
    windows against 10K or 100K rows on this CPU. Scores move by at most a few 1e-3, so
    near-ties can swap; held-out recall does not move (BENCHMARKS.md). The server's
    default (``precision="int8"``); ``build_index``'s own default stays float32.
    """

    BLOCK_ROWS = 16384  # database rows scored at a time (66 x 16K float32 = 4 MB)

    def __init__(self, d: int):
        import torch

        self.d = d
        self.xb_t = torch.zeros((d, 0), dtype=torch.int8)  # (d, n): the layout _int_mm wants
        self.scale = torch.zeros(0)

    @property
    def ntotal(self) -> int:
        return int(self.scale.shape[0])

    def add(self, xb: np.ndarray) -> None:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"vectors must be (n, {self.d}), got {tuple(x.shape)}")
        q, scale = quantize_rows(x)
        self.xb_t = torch.cat([self.xb_t, q.T], dim=1).contiguous()
        self.scale = torch.cat([self.scale, scale])

    def search(self, xq: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query. With ``threads`` > 1, up to ``threads`` - 1 of
        :func:`search_pool`'s threads take blocks of rows beside the calling thread (see
        :func:`in_blocks`), and the blocks' winners are merged: the same result."""
        import torch

        q, scale = quantize_rows(torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32)))
        k = min(k, self.ntotal)
        D, I = merge_blocks(
            in_blocks(self.ntotal, self.BLOCK_ROWS, threads, lambda s: self._block(q, k, s)), k
        )
        return (D * scale[:, None]).numpy(), I.numpy()

    def _block(self, q, k: int, start: int):
        """The top k of the rows from ``start``, one block: scores without the query's
        scale, row numbers of the whole index."""
        import torch

        # Block by block, as faiss does: each block's scores stay in cache for their top-k
        # (at 100K rows one (66, n) pass took 61 ms, blocks 31 ms; faiss float32 52 ms).
        # A query's own scale is positive and common to its row: it does not change the
        # ranking, so it is applied to the k winners only.
        end = min(start + self.BLOCK_ROWS, self.ntotal)
        S = torch._int_mm(q, self.xb_t[:, start:end]).float().mul_(self.scale[start:end])
        D, I = topk_rows(S, min(k, end - start))
        return D, I + start


class LowRankIndex:
    """:class:`Int8FlatIndex`'s answers for rows whose spread lies in a few directions, at
    a fraction of its cost.

    An int8 score is an inner product of two dequantised vectors: the query's and the
    row's (each int8 vector times its scale). The text encoder's term vectors spread in
    few directions: 32 of their 256 hold 99.9% of their variance about the mean, and so
    do their int8 versions. A dequantised row ``x`` is their mean ``mu`` plus its
    coordinates ``c`` on the top ``r`` principal directions ``P`` plus a residual; so
    ``q . x = q . mu + (P'q) . c + residual term``, and ``(P'q) . c`` ranks the rows all
    but exactly at an eighth of the cost (``r`` = 32 instead of 256, int8 again, one
    shared scale so the int32 sums rank without conversion). Each query's best
    ``CANDIDATES`` rows by that estimate are then scored as :class:`Int8FlatIndex`
    scores every row (the same arithmetic, the same scores).

    The answers do not depend on the estimate: how far a row's score can lie from its
    estimate is bounded (the rows' largest residual and coordinate-rounding norms, known
    from the rows, times the query's own). Where a row left out could still reach a
    query's k-th score, the query gets a second look at every row whose estimate comes
    within that bound, so the answer is always the flat int8 search's top k (ties
    aside). On the evaluation's 100K glossary about one window in a hundred needs it.
    """

    BLOCK_ROWS = 16384
    # Candidates scored per query: at least this many, and four times k (with 8, one
    # window in five needed a second look on the 100K glossary).
    CANDIDATES = 16

    def __init__(self, rows, scale, mean, directions):
        """Over int8 ``rows`` (n, d) and their ``scale`` (n,) (``quantize_rows``), given
        the dequantised rows' ``mean`` (d,) and the principal ``directions`` to estimate
        with ((d, r) float32; :meth:`of` finds them)."""
        import torch

        self.d = rows.shape[1]
        self.rows, self.scale = rows, scale
        self.mean = mean
        self.P = directions
        centred = rows.float() * scale[:, None] - mean
        coords = centred @ self.P
        # Largest norm of a row's part off the directions: bounds its residual score.
        self.residual = float((centred - coords @ self.P.T).norm(dim=1).max())
        self.unit = float(coords.abs().max().clamp(min=1e-12)) / 127.0
        q = torch.round(coords / self.unit).to(torch.int8)
        self.coords_t = q.T.contiguous()  # (r, n): the layout _int_mm wants
        rounded = q.float() * self.unit
        self.rounding = float((coords - rounded).norm(dim=1).max())
        self.coords_norm = float(rounded.norm(dim=1).max())
        self.second_looks = 0  # queries searched again (for tests and benchmarks)

    @property
    def ntotal(self) -> int:
        return int(self.scale.shape[0])

    @property
    def rank(self) -> int:
        return int(self.P.shape[1])

    def search(self, xq: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query, as :class:`Int8FlatIndex` finds them; ``threads`` as
        there."""
        import torch

        n = self.ntotal
        k = min(k, n)
        q8, q8scale = quantize_rows(torch.from_numpy(np.ascontiguousarray(xq, np.float32)))
        Q = q8.float() * q8scale[:, None]  # the query as its int8 scores see it
        proj = Q @ self.P
        qi, qscale = quantize_rows(proj)
        c = min(n, max(self.CANDIDATES, 4 * k))
        est, cand = merge_blocks(
            in_blocks(n, self.BLOCK_ROWS, threads, lambda s: self._block(qi, c, s)), c
        )
        D, I = self._scores(q8, cand, k)  # without the query's scale, as Int8FlatIndex
        if c < n:
            # How far a row's score can lie from its estimate: the query's parts off and
            # on the directions (and the latter's rounding) times the rows' largest.
            slack = (
                (Q - proj @ self.P.T).norm(dim=1) * self.residual
                + proj.norm(dim=1) * self.rounding
                + (proj - qi.float() * qscale[:, None]).norm(dim=1) * self.coords_norm
                + 1e-4  # float32 rounding
            )
            base = Q @ self.mean
            unit = qscale * self.unit
            kth = D[:, -1] * q8scale
            # A row left out estimates no higher than the last candidate.
            late = (base + est[:, -1].float() * unit + slack >= kth).nonzero().flatten()
            if len(late):
                self.second_looks += len(late)
                floor = (kth[late] - base[late] - slack[late]) / unit[late]
                reach = torch._int_mm(qi[late], self.coords_t) >= floor[:, None]
                for m, near in zip(late.tolist(), reach, strict=True):
                    rows = near.nonzero().flatten()
                    if len(rows) < k:  # cannot happen but by float rounding: every row
                        rows = torch.arange(n)
                    D[m], I[m] = self._scores(q8[m : m + 1], rows[None, :], k)
        return (D * q8scale[:, None]).numpy(), I.numpy()

    def _scores(self, q8, rows, k: int):
        """The top ``k`` of each query's ``rows`` ((m, c) row numbers) by int8 score,
        without the query's scale: int32 sums (exact in float32 at 256 dimensions) times
        the rows' scales, as :class:`Int8FlatIndex` computes them."""
        import torch

        dots = torch.einsum("md,mcd->mc", q8.float(), self.rows[rows].float())
        D, j = dots.mul_(self.scale[rows]).topk(k, dim=1)
        return D, torch.gather(rows, 1, j)

    def _block(self, qi, c: int, start: int):
        """The ``c`` best estimates (int32, in the query's units) of one block's rows."""
        import torch

        end = min(start + self.BLOCK_ROWS, self.ntotal)
        S = torch._int_mm(qi, self.coords_t[:, start:end])
        D, I = topk_rows(S, min(c, end - start))
        return D, I + start

    @classmethod
    def of(cls, xb: np.ndarray) -> LowRankIndex | None:
        """The index over ``xb`` when a few principal directions (at most a quarter of the
        dimensions, in steps of 8) hold ``LOW_RANK_VARIANCE`` of the rows' variance about
        their mean; None when they do not (there is nothing to gain)."""
        import torch

        rows, scale = quantize_rows(torch.from_numpy(np.ascontiguousarray(xb, np.float32)))
        x = rows.float() * scale[:, None]
        mean = x.mean(dim=0)
        centred = x - mean
        var, vecs = torch.linalg.eigh((centred.T @ centred).double())
        var, vecs = var.flip(0).clamp(min=0), vecs.flip(1)
        share = var.cumsum(0) / var.sum().clamp(min=1e-30)
        d = x.shape[1]
        for r in range(8, d // 4 + 1, 8):
            if share[r - 1] >= LOW_RANK_VARIANCE:
                return cls(rows, scale, mean, vecs[:, :r].float().contiguous())
        return None


_SEARCH_POOL = None
_SEARCH_POOL_LOCK = threading.Lock()


def search_pool():
    """Threads that search parts of an int8 index beside the caller (one per core, each
    with one torch thread). They block while idle: OpenMP threads spin after a parallel
    region and took the cores from the next chunk's encoder (a chunk's encode p99 rose
    from 20 to 38 ms under 8 streams when the search ran on two torch threads)."""
    global _SEARCH_POOL
    with _SEARCH_POOL_LOCK:
        if _SEARCH_POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            import torch

            _SEARCH_POOL = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1,
                thread_name_prefix="rasst-search",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        return _SEARCH_POOL


def in_blocks(n: int, block: int, threads: int, search) -> list:
    """``search(start)`` for each block of ``block`` rows of ``n``, in order of start. With
    ``threads`` > 1, up to ``threads`` - 1 of :func:`search_pool`'s threads take blocks
    beside the calling thread. Blocks are taken one at a time: a thread that starts late
    or is preempted takes fewer, and none waits for a fixed share."""
    starts = range(0, n, block)
    found: list = [None] * len(starts)
    left = iter(enumerate(starts))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                b, start = next(left, (None, 0))
            if b is None:
                return
            found[b] = search(start)

    helpers = [search_pool().submit(work) for _ in range(min(threads, len(starts)) - 1)]
    work()
    for h in helpers:
        h.result()
    return found


def merge_blocks(found: list, k: int):
    """The top ``k`` of every block's winners ((D, I) pairs, rows numbered in the whole
    index), best first."""
    import torch

    D = torch.cat([d for d, _ in found], dim=1)
    I = torch.cat([i for _, i in found], dim=1)
    if len(found) > 1:
        D, j = D.topk(k, dim=1)
        I = torch.gather(I, 1, j)
    return D, I


def topk_rows(S, k: int, group: int = 64):
    """``S.topk(k, dim=1)`` for a 2-D float CPU tensor and a small k, exact and several
    times faster. A row's k largest values lie in the k column groups (of ``group``) with
    the largest maxima, so only those groups (and the columns after the last whole group)
    are ranked. torch's top-k walks every value with an index (0.75 ms for 66 x 10K here);
    a group maximum is a vectorised reduction (0.03 ms). Equal values may come in another
    order than ``topk``'s."""
    import torch

    m, n = S.shape
    g = n // group
    if g <= 2 * k or not S.is_contiguous():
        return S.topk(k, dim=1)
    gmax = S.as_strided((m, g, group), (n, group, 1)).amax(dim=2)  # (m, g), a view of S
    top = gmax.topk(k, dim=1).indices  # (m, k): the groups that can hold the top k
    cols = (top[:, :, None] * group + torch.arange(group)).reshape(m, k * group)
    if g * group < n:
        cols = torch.cat([cols, torch.arange(g * group, n).expand(m, -1)], dim=1)
    D, j = S.gather(1, cols).topk(k, dim=1)
    return D, cols.gather(1, j)


def build_index(
    xb: np.ndarray,
    exact_max: int = EXACT_MAX_DEFAULT,
    use_gpu: bool | None = None,
    precision: str = "float32",
):
    """An inner-product index over unit vectors xb (n, d) float32.

    Exact search up to ``exact_max`` rows on a CPU, HNSW above; on a GPU exact search up
    to ``GPU_EXACT_MAX`` rows. ``precision`` picks the CPU exact search's arithmetic
    ("float32" or "int8"); GPU and HNSW indexes ignore it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"index precision must be one of {PRECISIONS}, got {precision!r}")
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    n, d = xb.shape
    on_gpu = gpu_available() if use_gpu is None else use_gpu
    if on_gpu:
        exact_max = max(exact_max, GPU_EXACT_MAX)
    if precision == "int8" and n <= exact_max and not on_gpu and int8_matmul_available():
        low_rank = LowRankIndex.of(xb) if n >= LOW_RANK_MIN_ROWS else None
        if low_rank is not None:
            return low_rank
        index = Int8FlatIndex(d)
        index.add(xb)
        return index
    if on_gpu and n <= exact_max and not faiss_gpu_available():
        index = TorchFlatIndex(d, "cuda")
        index.add(xb)
        for k in range(GPU_WARM_QUERIES.bit_length()):  # every padded query count
            index.search(np.resize(xb, (1 << k, d)), 2)
        return index
    faiss = faiss_module()
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(xb)
    if on_gpu and n <= exact_max:
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    return index


def exact_search(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product ground truth (``faiss.knn``), for recall tests of approximate
    indexes: (D, I), each (nq, min(k, nb))."""
    import faiss

    k = min(k, xb.shape[0])
    return faiss.knn(
        np.ascontiguousarray(xq, np.float32),
        np.ascontiguousarray(xb, np.float32),
        k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )


def recall_at(I_approx: np.ndarray, I_exact: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k found in the approximate top-k (faiss.contrib's
    intersection measure)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    return float(knn_intersection_measure(I_approx[:, :k], I_exact[:, :k]))


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
        precision: str = "float32",
        row_prior: np.ndarray | None = None,
    ):
        self.ntotal = int(xb.shape[0])
        self.row_entry = np.asarray(row_entry, dtype=np.int64)
        # Per-row penalty (>= 0) subtracted from every score of the row (``entry_prior``).
        self.row_prior = None if row_prior is None else np.asarray(row_prior, np.float32)
        if self.row_prior is not None and self.row_prior.shape != (self.ntotal,):
            raise ValueError(f"row_prior must be ({self.ntotal},), got {self.row_prior.shape}")
        self.index = build_index(xb, exact_max, use_gpu, precision) if self.ntotal else None
        self.kind = type(self.index).__name__ if self.index is not None else "empty"

    @property
    def approximate(self) -> bool:
        """Whether the search may miss a row's true rank (HNSW)."""
        return self.kind.startswith("IndexHNSW")

    def search(self, xq: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query: D (nq, k) scores, I (nq, k) rows (-1 where fewer).
        ``threads``: how many threads an int8 exact search may split its rows over
        (other indexes have their own threading)."""
        if self.index is None or len(xq) == 0:
            return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if isinstance(self.index, (Int8FlatIndex, LowRankIndex)):
            return self.index.search(xq, min(k, self.ntotal), threads)
        return self.index.search(xq, min(k, self.ntotal))

    def penalty(self, rows) -> np.ndarray:
        """The prior of ``rows`` (zeros without one), float32."""
        rows = np.asarray(rows, np.int64)
        if self.row_prior is None:
            return np.zeros(rows.shape, np.float32)
        return self.row_prior[rows]

    def best_entries(
        self, D: np.ndarray, I: np.ndarray, threshold: float, top_k: int, prior: bool = True
    ) -> list[EntryHit]:
        """Max over windows per entry, keep score >= threshold, best ``top_k`` first.
        Scores are the index's less the row's prior, if any. With ``prior`` False the
        threshold still applies to that, but entries are ranked and scored by the index's
        own score: a second stage gathers its candidates by cosine and subtracts
        ``penalty`` itself."""
        penalised = D if self.row_prior is None else D - self.row_prior[np.maximum(I, 0)]
        valid = (I >= 0) & (threshold <= penalised)
        if prior:
            D = penalised
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
