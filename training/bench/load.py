"""Load: concurrent real-time or flat-out streams against one server."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from .common import SAMPLE_RATE, _glossary_entries, _pct, _start_server

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- load


LOAD_MODES = {
    # Real-time streams whose chunk clocks are spread evenly over one chunk.
    "realtime": "real time, starts spread evenly over a chunk",
    # Real-time streams with independent random phases: chunks of different streams may
    # arrive together and queue behind each other (what a live server sees).
    "realtime-random": "real time, random phases",
    # Every stream sends its next chunk as soon as flow control allows.
    "max": "as fast as possible",
}


async def _run_streams(
    address: str, n: int, audio: np.ndarray, chunk: int, n_chunks: int, mode: str, seed: int = 0
):
    """n sessions at once; returns (client ms, server ms, errors, wall seconds, server
    stage ms {queue, encode, search}, the three slowest chunks in detail)."""
    import random

    from rasst.client.api import Session, SessionOptions, make_channel

    client_ms: list[float] = []
    server_ms: list[float] = []
    stages: dict[str, list[float]] = {"queue": [], "encode": [], "search": []}
    slow: list[dict] = []  # per-chunk detail of the slowest chunks, to tell where time went
    errors = 0
    channel = make_channel(address)

    async def one(k: int) -> None:
        nonlocal errors
        got: list[int] = []

        def on_resp(resp, sent_at):
            client_ms.append((time.monotonic() - sent_at) * 1e3)
            t = resp.timings
            server_ms.append(t.total_ms)
            for name in stages:
                stages[name].append(getattr(t, f"{name}_ms"))
            slow.append(
                {
                    "stream": k,
                    "sequence": resp.sequence,
                    "total_ms": round(t.total_ms, 2),
                    "queue_ms": round(t.queue_ms, 2),
                    "encode_ms": round(t.encode_ms, 2),
                    "search_ms": round(t.search_ms, 2),
                    "batch_windows": t.batch_size,
                }
            )
            slow.sort(key=lambda r: -r["total_ms"])
            del slow[3:]
            got.append(resp.sequence)

        s = await Session(
            channel, SessionOptions("load", "de", deadline_ms=2000, max_in_flight=64), on_resp
        ).start()
        if mode == "realtime-random":
            t0 = time.monotonic() + phases[k]
        else:
            t0 = time.monotonic() + k * 0.96 / max(1, n)  # spread stream starts over a chunk
        for i in range(n_chunks):
            if mode != "max":
                delay = t0 + (i + 1) * 0.96 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await s.send(audio[i * chunk : (i + 1) * chunk])
        try:
            await s.close(timeout=60)
        except Exception:
            errors += 1
        if sorted(got) != list(range(n_chunks)):
            errors += 1

    rng = random.Random(seed)
    phases = [rng.uniform(0, 0.96) for _ in range(n)]
    t_start = time.monotonic()
    await asyncio.gather(*(one(k) for k in range(n)))
    wall = time.monotonic() - t_start
    await channel.close()
    return client_ms, server_ms, errors, wall, stages, slow


def _run_streams_in_process(*args) -> tuple:
    """Child process entry: the load generator, apart from the server's interpreter."""
    return asyncio.run(_run_streams(*args))


async def bench_load(
    checkpoint: str,
    clip_source: np.ndarray,
    streams: list[int],
    seconds: float,
    glossary_size: int,
    budget_ms: float,
    modes: tuple[str, ...] = ("realtime",),
    threads: int = 1,
    device: str = "auto",
    precision: str = "int8",
    workers: int = 0,
) -> list[dict]:
    """N concurrent sessions, each playing audio in 0.96 s chunks (paced at real time).

    The sessions run in a separate process, as translators would: they do not share the
    server's interpreter (GIL, event loop)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from rasst.client.api import Client
    from rasst.retriever.server import drain

    server, port, state, tmp = await _start_server(
        checkpoint, threads, device, precision=precision, workers=workers
    )
    address = f"127.0.0.1:{port}"
    admin = Client(address, "bench", timeout=600)
    await asyncio.to_thread(admin.put_glossary, "load", _glossary_entries(glossary_size))
    admin.close()
    chunk = int(0.96 * SAMPLE_RATE)
    n_chunks = max(2, int(seconds / 0.96))
    audio = np.resize(clip_source, n_chunks * chunk)
    rows = []
    loop = asyncio.get_running_loop()
    clients = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    try:
        for mode, n in ((m, n) for m in modes for n in streams):
            client_ms, server_ms, errors, wall, stages, slow = await loop.run_in_executor(
                clients, _run_streams_in_process, address, n, audio, chunk, n_chunks, mode
            )
            row = {
                "streams": n,
                "chunks": len(client_ms),
                "errors": errors,
                "client_ms_p50": round(_pct(client_ms, 50), 2),
                "client_ms_p95": round(_pct(client_ms, 95), 2),
                "client_ms_p99": round(_pct(client_ms, 99), 2),
                "server_ms_p50": round(_pct(server_ms, 50), 2),
                "server_ms_p95": round(_pct(server_ms, 95), 2),
                "server_ms_p99": round(_pct(server_ms, 99), 2),
                **{
                    f"server_{name}_ms_p{q}": round(_pct(v, q), 2)
                    for name, v in stages.items()
                    for q in (50, 99)
                },
                "slowest_chunks": slow,
                "wall_s": round(wall, 1),
                "mode": mode,
                "_client_ms": client_ms,
            }
            rows.append(row)
            logger.info("load %s", row)
    finally:
        clients.shutdown()
        await drain(server, state, 0.5)
        tmp.cleanup()
    return rows
