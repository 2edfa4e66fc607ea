"""The encode step: front-end, pooling and head for B streams' clips in one batch."""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np

from .common import SAMPLE_RATE

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- encoder


def bench_encoder(
    checkpoint: str,
    talk: np.ndarray,
    batches: list[int],
    device: str,
    repeats: int = 10,
    precision: str = "int8",
) -> list[dict]:
    """The engine's encode step alone: front-end, pooling and head (``precision`` on a
    CPU, as the server's) for B clips of chunk plus look-back (2.88 s; B streams' chunks
    in one batch), the windows that reach the new 0.96 s, on ``device``. Median of
    ``repeats``, after two warm-up batches."""
    from rasst.retriever.engine import _head_on
    from rasst.retriever.model import DualEncoder, build_frontend, embed_windows

    model = DualEncoder.from_pretrained(checkpoint)
    fe = build_frontend(model.config.frontend, device)
    head = _head_on(model, fe, precision)
    n = int(2.88 * SAMPLE_RATE)
    clips = [np.resize(np.roll(talk, 7919 * i), n).astype(np.float32) for i in range(max(batches))]
    spans = model.windows(n // int(SAMPLE_RATE / fe.frame_rate))
    spans = spans[spans[:, 1] > int(1.92 * fe.frame_rate)]
    rows = []
    for b in batches:

        def once(b: int = b) -> float:
            t0 = time.perf_counter()
            frames = fe.frame_tensors(clips[:b])
            embed_windows(head, frames, [spans] * b, model.config.pool_segments)
            return (time.perf_counter() - t0) * 1e3

        once(), once()
        times = [once() for _ in range(repeats)]
        p50 = statistics.median(times)
        rows.append(
            {
                "batch": b,
                "frontend": getattr(fe, "name", type(fe).__name__),
                "device": str(getattr(fe, "device", device)),
                "windows_per_clip": len(spans),
                "ms_p50": round(p50, 2),
                "ms_per_clip": round(p50 / b, 3),
            }
        )
        logger.info("encoder %s", rows[-1])
    return rows
