"""RPC overhead: the same chunk in process and through gRPC, beside a bare gRPC echo floor."""

from __future__ import annotations

import asyncio
import logging
import statistics
import struct
import time

import numpy as np

from .common import SAMPLE_RATE, _start_server

logger = logging.getLogger(__name__)

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
