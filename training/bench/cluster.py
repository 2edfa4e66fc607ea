"""Cluster: the Ray Serve deployment at 1, 2, 4 replicas beside the single-process server,
measured in the same run, rounds alternating between the two.

Two loads: flat out (every stream sends its next chunk as soon as flow control allows;
chunks/s is the capacity) and real time (latency at the same offered load; the cluster's
extra p50 / p99 over the single process is what Ray adds per request)."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics

import numpy as np

from .common import SAMPLE_RATE, _glossary_entries, _pct, _start_server

logger = logging.getLogger(__name__)


def _loopback_ray() -> None:
    """A Ray instance the bench starts is single-node: keep it on loopback (Ray reads this
    when first imported; an instance already running is used as it is)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


async def _server(checkpoint: str, glossary: list[dict], **kw):
    """A bench server (``common._start_server``) serving ``glossary`` as "load"."""
    from rasst.client.api import Client

    server, port, state, tmp = await _start_server(checkpoint, demo_glossary=False, **kw)
    admin = Client(f"127.0.0.1:{port}", "bench", timeout=600)
    await asyncio.to_thread(admin.put_glossary, "load", glossary)
    admin.close()
    return server, port, state, tmp


def _summary(runs: list[tuple]) -> dict:
    """Medians over rounds of each round's figures."""
    rows = []
    for client_ms, server_ms, errors, wall, stages, _slow in runs:
        inner = [q + e + s for q, e, s in zip(*stages.values(), strict=True)]
        rows.append(
            {
                "chunks_per_s": len(client_ms) / wall if wall else 0.0,
                "client_ms_p50": _pct(client_ms, 50),
                "client_ms_p99": _pct(client_ms, 99),
                "server_ms_p50": _pct(server_ms, 50),
                "server_ms_p99": _pct(server_ms, 99),
                # Server time outside queue, encode and search: gRPC handling, sessions and,
                # in the cluster, the deployment handle's round trip.
                "outside_ms_p50": _pct(np.subtract(server_ms, inner), 50),
                "outside_ms_p99": _pct(np.subtract(server_ms, inner), 99),
                "errors": errors,
            }
        )
    out = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0] if k != "errors"}
    out["errors"] = sum(r["errors"] for r in rows)
    out["rounds"] = len(rows)
    return out


async def bench_cluster(
    checkpoint: str,
    clip_source: np.ndarray,
    replicas: list[int],
    streams: int,
    seconds: float,
    glossary_size: int,
    rounds: int = 3,
) -> dict:
    """For each replica count: start the cluster beside a single-process server, then
    ``rounds`` times each load on one and then the other. Replicas share the machine's
    cores (``cores / replicas`` CPUs reserved each)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    _loopback_ray()
    import ray
    from rasst.retriever.server import drain

    from .load import _run_streams_in_process

    cores = os.cpu_count() or 1
    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=cores,
            include_dashboard=False,
            namespace="rasst",
            log_to_driver=False,
        )
        started = True
    glossary = _glossary_entries(glossary_size)
    chunk = int(0.96 * SAMPLE_RATE)
    n_chunks = max(2, int(seconds / 0.96))
    audio = np.resize(clip_source, n_chunks * chunk)
    loop = asyncio.get_running_loop()
    clients = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    single = await _server(checkpoint, glossary)
    rows = []
    try:
        for r in replicas:
            cluster = await _server(
                checkpoint,
                glossary,
                cluster="auto",
                cluster_min_replicas=r,
                cluster_max_replicas=r,
                cluster_replica_cpus=round(cores / r, 3),
                workers=1,
            )
            try:
                for mode in ("max", "realtime"):
                    got: dict[str, list] = {"single": [], "cluster": []}
                    for _ in range(rounds):
                        for name, (_, port, _, _) in (("single", single), ("cluster", cluster)):
                            got[name].append(
                                await loop.run_in_executor(
                                    clients,
                                    _run_streams_in_process,
                                    f"127.0.0.1:{port}",
                                    streams,
                                    audio,
                                    chunk,
                                    n_chunks,
                                    mode,
                                )
                            )
                    one, many = _summary(got["single"]), _summary(got["cluster"])
                    row = {
                        "replicas": r,
                        "mode": mode,
                        "streams": streams,
                        "single": one,
                        "cluster": many,
                        "ray_cost_ms_p50": round(many["client_ms_p50"] - one["client_ms_p50"], 2),
                        "ray_cost_ms_p99": round(many["client_ms_p99"] - one["client_ms_p99"], 2),
                    }
                    rows.append(row)
                    logger.info("cluster %s", row)
            finally:
                await drain(cluster[0], cluster[2], 0.5)
                cluster[3].cleanup()
    finally:
        clients.shutdown()
        await drain(single[0], single[2], 0.5)
        single[3].cleanup()
        if started:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    return {"cores": cores, "streams": streams, "glossary": glossary_size, "rows": rows}


# --------------------------------------------------------------------------- ingress


class _EchoDeployment:
    """Answers a Retrieve with the clip's duration: the ingress cost alone."""

    async def Retrieve(self, request):
        from rasst.v1 import retrieval_pb2

        return retrieval_pb2.RetrieveResponse(audio_duration_s=len(request.audio.pcm) / 32000)

    async def echo(self, n_bytes: int) -> float:
        return n_bytes / 32000


async def _time_calls(stub_call, request, n: int, metadata=()) -> list[float]:
    import time

    out = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        await stub_call(request, metadata=metadata, timeout=30)
        if i >= 10:  # the first calls open connections and warm caches
            out.append((time.perf_counter() - t0) * 1e3)
    return out


async def bench_ingress(n: int = 300) -> dict:
    """One unary Retrieve-sized call (a 2.88 s s16le clip) three ways, each answered by an
    echo: a bare gRPC server (the platform's floor), Ray Serve's own gRPC proxy to a
    deployment, and a gRPC front-end calling the deployment through a handle (rasst's
    design). Sequential calls; ms p50 / p99."""
    import grpc

    _loopback_ray()
    import ray
    from ray import serve

    from rasst.v1 import retrieval_pb2, retrieval_pb2_grpc

    started = False
    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            namespace="rasst",
            log_to_driver=False,
        )
        started = True
    clip = retrieval_pb2.RetrieveRequest(
        glossary_id="g",
        target_lang="de",
        audio=retrieval_pb2.Audio(pcm=bytes(int(2.88 * SAMPLE_RATE) * 2), sample_rate_hz=16000),
    )
    out: dict = {"calls": n}

    class Bare(retrieval_pb2_grpc.TermRetrievalServicer):
        async def Retrieve(self, request, context):
            return retrieval_pb2.RetrieveResponse(audio_duration_s=len(request.audio.pcm) / 32000)

    class Front(retrieval_pb2_grpc.TermRetrievalServicer):
        def __init__(self, handle):
            self.handle = handle

        async def Retrieve(self, request, context):
            d = await self.handle.echo.remote(len(request.audio.pcm))
            return retrieval_pb2.RetrieveResponse(audio_duration_s=d)

    async def through(servicer) -> list[float]:
        server = grpc.aio.server()
        retrieval_pb2_grpc.add_TermRetrievalServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                return await _time_calls(retrieval_pb2_grpc.TermRetrievalStub(ch).Retrieve, clip, n)
        finally:
            await server.stop(0)

    out["bare_grpc"] = await through(Bare())
    port = _free_port()
    serve.shutdown()  # a Serve started without proxies (the cluster part's) ignores new options
    serve.start(
        proxy_location="HeadOnly",
        grpc_options={
            "port": port,
            "grpc_servicer_functions": [
                "rasst.v1.retrieval_pb2_grpc.add_TermRetrievalServicer_to_server"
            ],
        },
    )
    try:
        handle = serve.run(
            serve.deployment(_EchoDeployment, name="Echo").bind(),
            name="rasst-echo",
            route_prefix="/rasst-echo",
        )
        await asyncio.sleep(1.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            out["serve_grpc_proxy"] = await _time_calls(
                retrieval_pb2_grpc.TermRetrievalStub(ch).Retrieve,
                clip,
                n,
                metadata=(("application", "rasst-echo"),),
            )
        out["front_end_and_handle"] = await through(Front(handle))
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    for k in ("bare_grpc", "serve_grpc_proxy", "front_end_and_handle"):
        v = out[k]
        out[k] = {"ms_p50": round(_pct(v, 50), 3), "ms_p99": round(_pct(v, 99), 3)}
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
