"""gRPC servicers (TermRetrieval, GlossaryAdmin), health, reflection, metrics and ``rasst serve``.

``create_server(config) -> (server, port, state)`` and ``serve(...)`` are separate so
tests bind ``127.0.0.1:0`` and talk through a real channel.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from rasst.v1 import admin_pb2, admin_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc

from . import audio as A
from .engine import Engine, EngineConfig, EngineNotReady, Result, UnknownGlossary
from .glossary import (
    GlossaryError,
    GlossaryStore,
    VersionConflict,
    load_file,
    make_entry,
    parse,
    validate_glossary_id,
)
from .index import PRECISIONS
from .model import DualEncoder, default_checkpoint_dir

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    retrieval_pb2.DESCRIPTOR.services_by_name["TermRetrieval"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["GlossaryAdmin"].full_name,
)
ENCODINGS = {
    retrieval_pb2.AUDIO_ENCODING_S16LE: "s16le",
    retrieval_pb2.AUDIO_ENCODING_F32LE: "f32le",
}
FORMATS = {
    admin_pb2.GLOSSARY_FORMAT_JSONL: "jsonl",
    admin_pb2.GLOSSARY_FORMAT_CSV: "csv",
    admin_pb2.GLOSSARY_FORMAT_TSV: "tsv",
    admin_pb2.GLOSSARY_FORMAT_ACL_JSON: "acl_json",
    admin_pb2.GLOSSARY_FORMAT_TBX: "tbx",
}
DEFAULT_TOP_K = 10
MAX_TOP_K = 100
MIN_CLIP_S = 0.1
DEMO_DIR = Path(__file__).parent / "demo"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ServerConfig:
    # host:port to listen on; port 0 picks a free one.
    address: str = "127.0.0.1:50051"
    # Checkpoint directory; "default" = the one shipped in the package, "none" = start without a model.
    checkpoint: str = "default"
    # Where glossaries are persisted.
    data_dir: str = "var/rasst"
    # Admin bearer token; empty = generate one and write it to {data_dir}/admin_token (0600).
    admin_token: str = ""
    # PEM certificate and key for TLS; both or neither.
    tls_cert: str = ""
    tls_key: str = ""
    # Load the demo glossary ("demo") when the store has none of that id.
    demo_glossary: bool = True
    # Prometheus /metrics port; 0 = off.
    metrics_port: int = 0
    # Largest request message in bytes (a 60 s f32le clip is ~3.8 MB).
    max_message_bytes: int = 8 * 1024 * 1024
    # Encoder batching. max_wait_ms = 0 is greedy batching: a batch is what queued while the
    # worker was busy. On CPU waiting only adds latency (two clips batched cost as much as
    # one after the other); on a GPU a wait of a few ms buys larger, cheaper batches.
    max_batch_windows: int = 2048
    max_wait_ms: float = 0.0
    # Rows above which a glossary uses HNSW on a CPU (a GPU searches exactly up to 5M).
    exact_max: int = 100_000
    # CPU arithmetic of the speech head and exact search: "int8" (each about 2x faster
    # than "float32"; embeddings and scores move by ~1e-3, recall does not: BENCHMARKS.md)
    # or "float32". A GPU and HNSW indexes ignore it.
    precision: str = "int8"
    # Rescore candidates with the model's second stage (phone alignment) when it has one.
    # False serves the dual encoder's cosine scores alone (the model's thresholds were
    # calibrated on fused scores: pass a threshold per request then).
    rescore: bool = True
    # Most candidates per request the second stage aligns (the best by cosine of those
    # that can pass the threshold; 1..1024, at most the model's rescore_top).
    rescore_candidates: int = 256
    # torch / CTranslate2 threads of each encoder worker.
    threads: int = 1
    # Encoder worker threads: 0 = auto (one on a GPU; on a CPU, one per core, at most 4).
    workers: int = 0
    # Where the speech front-end runs: "auto" (CUDA when CTranslate2/torch see a GPU),
    # "cpu" or "cuda". The exact index goes to a GPU whenever one is visible.
    device: str = "auto"
    # Entries each window may vote for (1..32): its nearest index rows.
    window_top: int = 2
    # Seconds given to in-flight calls on SIGTERM.
    drain_s: float = 5.0
    log_level: str = "INFO"
    # JSON log lines.
    json_logs: bool = False


def validate_server_config(c: ServerConfig) -> ServerConfig:
    if ":" not in c.address:
        raise ValueError(f"address must be host:port, got {c.address!r}")
    if c.admin_token and not c.admin_token.strip():
        raise ValueError("admin_token is blank; give a token or leave it unset to generate one")
    if bool(c.tls_cert) != bool(c.tls_key):
        raise ValueError("tls_cert and tls_key must be given together")
    if not 1024 <= c.max_message_bytes <= 256 * 1024 * 1024:
        raise ValueError(
            f"max_message_bytes must be in [1024, 268435456], got {c.max_message_bytes}"
        )
    if not 1 <= c.max_batch_windows <= 1_000_000:
        raise ValueError(f"max_batch_windows must be in [1, 1000000], got {c.max_batch_windows}")
    if not 0 <= c.max_wait_ms <= 1000:
        raise ValueError(f"max_wait_ms must be in [0, 1000], got {c.max_wait_ms}")
    if not 1 <= c.window_top <= 32:
        raise ValueError(f"window_top must be in [1, 32], got {c.window_top}")
    if not 1 <= c.rescore_candidates <= 1024:
        raise ValueError(f"rescore_candidates must be in [1, 1024], got {c.rescore_candidates}")
    if not 1 <= c.threads <= 256:
        raise ValueError(f"threads must be in [1, 256], got {c.threads}")
    if not 0 <= c.workers <= 64:
        raise ValueError(f"workers must be in [0, 64] (0 = auto), got {c.workers}")
    if c.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    if c.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {c.device!r}")
    if c.device == "cuda" and not cuda_available():
        raise ValueError("device is cuda but neither CTranslate2 nor torch sees a CUDA device")
    return c


def cuda_available() -> bool:
    try:
        import ctranslate2

        if ctranslate2.get_cuda_device_count() > 0:
            return True
    except ImportError:
        pass
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def resolve_workers(workers: int, device: str, threads: int = 1) -> int:
    """``workers`` = 0: one on a GPU (it wants large batches), else one per ``threads``
    cores, at most 4."""
    if workers:
        return workers
    if device.startswith("cuda"):
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // threads))


def load_config(
    argv_values: dict, toml_path: str | None = None, env: dict | None = None
) -> ServerConfig:
    """Defaults < TOML file < environment (RASST_<FIELD>) < flags."""
    env = os.environ if env is None else env
    values: dict = {}
    if toml_path:
        import tomllib

        try:
            data = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot read config file {toml_path}: {e}") from e
        values.update(data.get("server", data))
    types = {f.name: f.type for f in fields(ServerConfig)}
    for name in types:
        key = f"RASST_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in argv_values.items() if v is not None})
    unknown = set(values) - set(types)
    if unknown:
        raise ValueError(f"unknown server settings {sorted(unknown)}")
    defaults = ServerConfig()
    coerced = {}
    for k, v in values.items():
        want = type(getattr(defaults, k))
        if want is bool and isinstance(v, str):
            v = v.lower() in ("1", "true", "yes", "on")
        try:
            coerced[k] = want(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"setting {k} must be {want.__name__}, got {v!r}") from e
    return validate_server_config(replace(defaults, **coerced))


# --------------------------------------------------------------------------- errors


async def abort_invalid(context, field_name: str, description: str):
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming the field."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=field_name, description=description
                )
            ]
        )
    )
    st = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{field_name}: {description}", details=[detail]
    )
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        st.message,
        trailing_metadata=rpc_status.to_status(st).trailing_metadata,
    )


class _Undecodable:
    """A request whose bytes are not a valid message of the method's input type."""

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: str):
        self.type_name, self.error = type_name, error


async def _reject_undecodable(context, bad: _Undecodable):
    await abort_invalid(
        context, "request", f"not a valid {bad.type_name} message on the wire ({bad.error})"
    )


def _lenient_parser(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return _Undecodable(cls.DESCRIPTOR.full_name, str(e))

    return parse


def _checked_unary(fn):
    async def handler(request, context):
        if isinstance(request, _Undecodable):
            await _reject_undecodable(context, request)
        return await fn(request, context)

    return handler


def _checked_bidi(fn):
    async def handler(request_iterator, context):
        async def checked():
            async for req in request_iterator:
                if isinstance(req, _Undecodable):
                    await _reject_undecodable(context, req)
                yield req

        async for resp in fn(checked(), context):
            yield resp

    return handler


def add_service(server, pb2_module, service: str, servicer) -> None:
    """Register ``servicer`` for ``service`` like the generated ``add_*_to_server``, except
    that undecodable request bytes get INVALID_ARGUMENT naming ``request`` (grpc would
    answer UNKNOWN with a Python exception text) and never reach the servicer."""
    desc = pb2_module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        parse = _lenient_parser(GetMessageClass(m.input_type))
        out = GetMessageClass(m.output_type).SerializeToString
        fn = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:
            h = grpc.stream_stream_rpc_method_handler(_checked_bidi(fn), parse, out)
        elif not m.client_streaming and not m.server_streaming:
            h = grpc.unary_unary_rpc_method_handler(_checked_unary(fn), parse, out)
        else:  # not used by rasst.v1; add a checked wrapper before adding such a method
            raise NotImplementedError(f"{m.full_name}: only unary and bidi methods are wrapped")
        handlers[m.name] = h
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(desc.full_name, handlers),)
    )


# --------------------------------------------------------------------------- metrics


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        lat_buckets = (
            0.002,
            0.005,
            0.01,
            0.015,
            0.02,
            0.025,
            0.035,
            0.05,
            0.075,
            0.1,
            0.25,
            0.5,
            1.0,
        )
        self.requests = Counter(
            "rasst_requests", "Chunks and clips answered", ["rpc", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "rasst_chunk_latency_seconds",
            "Server time per chunk or clip",
            ["rpc"],
            buckets=lat_buckets,
            registry=self.registry,
        )
        self.queue_latency = Histogram(
            "rasst_queue_latency_seconds",
            "Wait for the encoder worker",
            buckets=lat_buckets,
            registry=self.registry,
        )
        self.batch = Histogram(
            "rasst_batch_windows",
            "Windows per encoder batch",
            buckets=(1, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "rasst_queue_depth", "Requests waiting for the encoder", registry=self.registry
        )
        self.sessions = Gauge(
            "rasst_active_sessions", "Open StreamRetrieve sessions", registry=self.registry
        )
        self.dropped = Counter(
            "rasst_dropped_chunks", "Chunks dropped past their deadline", registry=self.registry
        )
        self.glossary_entries = Gauge(
            "rasst_glossary_entries", "Entries per glossary", ["glossary"], registry=self.registry
        )
        self.glossary_version = Gauge(
            "rasst_glossary_version",
            "Live version per glossary",
            ["glossary"],
            registry=self.registry,
        )


# --------------------------------------------------------------------------- state


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine
    store: GlossaryStore
    health: HealthServicer
    metrics: Metrics
    admin_token: str
    started: float = field(default_factory=time.time)
    active_sessions: int = 0
    admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    draining: bool = False
    loading: bool = False  # the start-up model load is in progress

    async def set_serving(self) -> None:
        ok = self.engine.snapshot.ready and not self.draining
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def refresh_glossary_metrics(self) -> None:
        for g in self.store.list():
            self.metrics.glossary_entries.labels(g.glossary_id).set(len(g.entries))
            self.metrics.glossary_version.labels(g.glossary_id).set(g.version)


def _hits_pb(result: Result, lang: str) -> list[retrieval_pb2.Hit]:
    return [
        retrieval_pb2.Hit(
            entry_id=h.entry.id,
            term=h.entry.term,
            translation=h.entry.translations.get(lang, ""),
            score=h.score,
            start_s=h.start_s,
            end_s=h.end_s,
            matched_form=h.form,
        )
        for h in result.hits
    ]


def _timings(result: Result, t_arrival: float) -> retrieval_pb2.ServerTimings:
    return retrieval_pb2.ServerTimings(
        queue_ms=result.queue_ms,
        encode_ms=result.encode_ms,
        search_ms=result.search_ms,
        total_ms=(time.monotonic() - t_arrival) * 1e3,
        batch_size=result.batch_windows,
    )


# --------------------------------------------------------------------------- data plane


class TermRetrievalServicer(retrieval_pb2_grpc.TermRetrievalServicer):
    def __init__(self, state: ServerState):
        self.s = state

    async def _check_common(
        self,
        context,
        glossary_id: str,
        lang: str,
        top_k: int,
        has_thr: bool,
        thr: float,
        prefix: str = "",
    ):
        snap = self.s.engine.snapshot
        if not snap.ready:
            if self.s.loading:  # transient: clients retry UNAVAILABLE with backoff
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is starting: the model is still loading",
                )
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no model is loaded; an operator must call GlossaryAdmin.ReloadModel",
            )
        if not glossary_id:
            await abort_invalid(context, f"{prefix}glossary_id", "required")
        served = snap.glossaries.get(glossary_id)
        if served is None:
            known = sorted(snap.glossaries)[:20]
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{prefix}glossary_id: unknown glossary {glossary_id!r}; known: {known}",
            )
        if not lang:
            await abort_invalid(context, f"{prefix}target_lang", "required (e.g. 'de')")
        langs = served.glossary.languages
        if lang not in langs:
            await abort_invalid(
                context,
                f"{prefix}target_lang",
                f"glossary {glossary_id!r} has no {lang!r} translations; it has {langs}",
            )
        if not 0 <= top_k <= MAX_TOP_K:
            await abort_invalid(
                context,
                f"{prefix}top_k",
                f"must be in [1, {MAX_TOP_K}] (0 = {DEFAULT_TOP_K}), got {top_k}",
            )
        if has_thr and not (-1.0 <= thr <= 1.0):
            await abort_invalid(
                context, f"{prefix}score_threshold", f"must be in [-1, 1], got {thr}"
            )

    @staticmethod
    async def _await(fut):
        """The worker's result; a caller that goes away cancels it, so it is not computed."""
        try:
            return await fut
        except asyncio.CancelledError:
            fut.cancel()
            raise

    async def Retrieve(self, request, context):
        t_arrival = time.monotonic()
        r = request
        await self._check_common(
            context,
            r.glossary_id,
            r.target_lang,
            r.top_k,
            r.HasField("score_threshold"),
            r.score_threshold,
        )
        if not r.HasField("audio"):
            await abort_invalid(context, "audio", "required")
        enc = ENCODINGS.get(r.audio.encoding)
        if enc is None:
            await abort_invalid(
                context, "audio.encoding", "must be AUDIO_ENCODING_S16LE or AUDIO_ENCODING_F32LE"
            )
        try:
            clip = A.decode_pcm(r.audio.pcm, enc, r.audio.sample_rate_hz)
        except A.AudioError as e:
            await abort_invalid(context, e.field, str(e))
        dur = len(clip) / A.SAMPLE_RATE
        if not MIN_CLIP_S <= dur <= A.MAX_CLIP_SECONDS:
            await abort_invalid(
                context,
                "audio.pcm",
                f"clip must last {MIN_CLIP_S}..{A.MAX_CLIP_SECONDS:.0f} s, got {dur:.3f} s",
            )
        remaining = context.time_remaining()
        deadline = remaining if remaining is not None else 30.0
        try:
            fut = self.s.engine.submit(
                clip,
                r.glossary_id,
                r.top_k or DEFAULT_TOP_K,
                r.score_threshold if r.HasField("score_threshold") else None,
                deadline,
            )
        except EngineNotReady as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except UnknownGlossary:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"glossary_id: unknown glossary {r.glossary_id!r}"
            )
        result = await self._await(fut)
        if result.dropped:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed before the encoder reached this clip",
            )
        self._observe("Retrieve", result, time.monotonic() - t_arrival)
        return retrieval_pb2.RetrieveResponse(
            hits=_hits_pb(result, r.target_lang),
            glossary_version=result.glossary_version,
            timings=_timings(result, t_arrival),
            audio_duration_s=dur,
        )

    def _observe(self, rpc: str, result: Result, seconds: float) -> None:
        m = self.s.metrics
        m.requests.labels(rpc, "OK").inc()
        m.latency.labels(rpc).observe(seconds)
        m.queue_latency.observe(result.queue_ms / 1e3)
        m.queue_depth.set(self.s.engine.queue_depth())
        if result.dropped:
            m.dropped.inc()

    async def StreamRetrieve(self, request_iterator, context):
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        if first.WhichOneof("message") != "config":
            await abort_invalid(
                context, "config", "the first message of a session must be a SessionConfig"
            )
        c = first.config
        await self._check_common(
            context,
            c.glossary_id,
            c.target_lang,
            c.top_k,
            c.HasField("score_threshold"),
            c.score_threshold,
            "config.",
        )
        enc = ENCODINGS.get(c.encoding)
        if enc is None:
            await abort_invalid(
                context, "config.encoding", "must be AUDIO_ENCODING_S16LE or AUDIO_ENCODING_F32LE"
            )
        if not A.MIN_INPUT_RATE <= c.sample_rate_hz <= A.MAX_INPUT_RATE:
            await abort_invalid(
                context,
                "config.sample_rate_hz",
                f"must be in [{A.MIN_INPUT_RATE}, {A.MAX_INPUT_RATE}], got {c.sample_rate_hz}",
            )
        chunk_s = c.chunk_s or 0.96
        if not 0.1 <= chunk_s <= 5.0:
            await abort_invalid(
                context,
                "config.chunk_s",
                f"must be in [0.1, 5] seconds (0 = 0.96), got {c.chunk_s}",
            )
        lookback_s = c.lookback_s if c.HasField("lookback_s") else 1.92
        if not 0.0 <= lookback_s <= 10.0:
            await abort_invalid(
                context, "config.lookback_s", f"must be in [0, 10] seconds, got {lookback_s}"
            )
        deadline_ms = c.deadline_ms or 1000
        if not 1 <= deadline_ms <= 60000:
            await abort_invalid(
                context,
                "config.deadline_ms",
                f"must be in [1, 60000] (0 = 1000), got {c.deadline_ms}",
            )
        if len(c.session_id) > 128:
            await abort_invalid(
                context, "config.session_id", f"at most 128 characters, got {len(c.session_id)}"
            )
        if not (c.stream_offset_s >= 0 and np.isfinite(c.stream_offset_s)):
            await abort_invalid(
                context,
                "config.stream_offset_s",
                f"must be a finite number >= 0, got {c.stream_offset_s}",
            )
        top_k = c.top_k or DEFAULT_TOP_K
        thr = c.score_threshold if c.HasField("score_threshold") else None
        max_chunk = int(4 * chunk_s * A.SAMPLE_RATE)
        lookback = _Lookback(int(lookback_s * A.SAMPLE_RATE), int(chunk_s * A.SAMPLE_RATE))
        t_stream = float(c.stream_offset_s)  # stream time of the next chunk's start
        expected = c.first_sequence
        self.s.active_sessions += 1
        self.s.metrics.sessions.inc()
        logger.info(
            "session %s opened: glossary=%s lang=%s chunk=%.2fs lookback=%.2fs",
            c.session_id or "-",
            c.glossary_id,
            c.target_lang,
            chunk_s,
            lookback_s,
        )
        try:
            async for req in it:
                t_arrival = time.monotonic()
                if req.WhichOneof("message") != "chunk":
                    await abort_invalid(
                        context, "config", "SessionConfig is only allowed as the first message"
                    )
                ch = req.chunk
                if ch.sequence != expected:
                    await abort_invalid(
                        context,
                        "chunk.sequence",
                        f"expected {expected}, got {ch.sequence} (sequence numbers increase by one)",
                    )
                expected += 1
                try:
                    x = A.decode_pcm(ch.pcm, enc, c.sample_rate_hz, field="chunk")
                except A.AudioError as e:
                    await abort_invalid(context, e.field, str(e))
                if len(x) > max_chunk:
                    await abort_invalid(
                        context,
                        "chunk.pcm",
                        f"chunk lasts {len(x) / A.SAMPLE_RATE:.2f} s; at most 4 * chunk_s = {4 * chunk_s:.2f} s",
                    )
                # The chunk plus up to lookback_s of audio before it (a view, not a copy).
                clip, prev = lookback.push(x)
                clip_start = t_stream - prev / A.SAMPLE_RATE
                chunk_start, t_stream = t_stream, t_stream + len(x) / A.SAMPLE_RATE
                resp = retrieval_pb2.StreamRetrieveResponse(
                    sequence=ch.sequence, chunk_start_s=chunk_start, chunk_end_s=t_stream
                )
                if len(clip) < int(MIN_CLIP_S * A.SAMPLE_RATE):
                    # Too little audio to hold a term: answer at once, with no hits.
                    served = self.s.engine.snapshot.glossaries.get(c.glossary_id)
                    resp.glossary_version = served.glossary.version if served else 0
                    resp.timings.total_ms = (time.monotonic() - t_arrival) * 1e3
                    yield resp
                    continue
                try:
                    fut = self.s.engine.submit(
                        clip,
                        c.glossary_id,
                        top_k,
                        thr,
                        deadline_ms / 1e3,
                        clip_start,
                        prev / A.SAMPLE_RATE,  # search only windows reaching the new chunk
                    )
                except EngineNotReady as e:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
                except UnknownGlossary:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"glossary {c.glossary_id!r} was deleted during the session",
                    )
                result = await self._await(fut)
                resp.hits.extend(_hits_pb(result, c.target_lang))
                resp.glossary_version = result.glossary_version
                resp.timings.CopyFrom(_timings(result, t_arrival))
                resp.dropped = result.dropped
                try:
                    yield resp
                finally:
                    # Metrics once the answer is on its way, off the caller's critical path;
                    # the latency observed is the handler's, up to the answer.
                    self._observe("StreamRetrieve", result, resp.timings.total_ms / 1e3)
        finally:
            self.s.active_sessions -= 1
            self.s.metrics.sessions.dec()
            logger.info(
                "session %s closed after %d chunks",
                c.session_id or "-",
                expected - c.first_sequence,
            )


class _Lookback:
    """A session's recent audio in one preallocated array.

    Each chunk is copied in once; the clip handed to the engine (up to ``keep`` samples of
    look-back, then the chunk) is a view of the array, not a new one. A session awaits each
    chunk's result before it pushes the next, so a view is never written while the engine
    reads it. When the array is full, the look-back moves to its front: one copy every three
    chunks of the session's size instead of joining the look-back and the chunk for each.
    A chunk too long for the array (up to 4x the session's size) makes a larger one.
    """

    def __init__(self, keep: int, chunk: int):
        self.keep = keep
        self.buf = np.empty(keep + 3 * chunk, np.float32)
        self.end = 0  # audio held: buf[:end], oldest first

    def push(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Append a chunk; return the clip, look-back then chunk, and how many look-back
        samples it starts with."""
        prev = min(self.end, self.keep)
        if self.end + len(x) > len(self.buf):
            buf = self.buf
            if prev + len(x) > len(buf):
                buf = np.empty(prev + 3 * len(x), np.float32)
            buf[:prev] = self.buf[self.end - prev : self.end]
            self.buf, self.end = buf, prev
        self.buf[self.end : self.end + len(x)] = x
        self.end += len(x)
        return self.buf[self.end - len(x) - prev : self.end], prev


# --------------------------------------------------------------------------- admin


def _glossary_pb(g, include_entries: bool = False) -> admin_pb2.Glossary:
    pb = admin_pb2.Glossary(
        name=f"glossaries/{g.glossary_id}",
        glossary_id=g.glossary_id,
        version=g.version,
        entry_count=len(g.entries),
        languages=g.languages,
        update_time=g.update_time,
    )
    if include_entries:
        pb.entries.extend(
            admin_pb2.GlossaryEntry(
                id=e.id, term=e.term, translations=e.translations, aliases=list(e.aliases)
            )
            for e in g.entries
        )
    return pb


def _entries_from_pb(entries, where: str):
    return [
        make_entry(
            {
                "id": e.id or None,
                "term": e.term,
                "translations": dict(e.translations),
                "aliases": list(e.aliases),
            },
            f"{where}[{i}]",
        )
        for i, e in enumerate(entries)
    ]


class GlossaryAdminServicer(admin_pb2_grpc.GlossaryAdminServicer):
    def __init__(self, state: ServerState):
        self.s = state

    async def _auth(self, context) -> None:
        md = dict(context.invocation_metadata() or ())
        value = md.get("authorization", "")
        if not value:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "admin calls need metadata 'authorization: Bearer <token>'",
            )
        scheme, _, token = value.partition(" ")
        token, expected = token.strip(), self.s.admin_token
        # An empty token never authorizes, whatever the server holds.
        if (
            scheme.lower() != "bearer"
            or not token
            or not expected
            or not hmac.compare_digest(token.encode(), expected.encode())
        ):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "admin token is not valid")

    async def _gid(self, context, gid: str) -> str:
        try:
            return validate_glossary_id(gid)
        except GlossaryError as e:
            await abort_invalid(context, e.field, e.message)

    async def _commit(self, context, g):
        try:
            await asyncio.to_thread(self.s.engine.commit_glossary, g)
        except OSError as e:
            await context.abort(
                grpc.StatusCode.INTERNAL, f"could not persist glossary {g.glossary_id!r}: {e}"
            )
        self.s.refresh_glossary_metrics()
        logger.info(
            "glossary %s committed at version %d (%d entries)",
            g.glossary_id,
            g.version,
            len(g.entries),
        )
        return _glossary_pb(g)

    async def PutGlossary(self, request, context):
        await self._auth(context)
        gid = await self._gid(context, request.glossary_id)
        try:
            if request.content:
                fmt = FORMATS.get(request.format)
                if fmt is None:
                    await abort_invalid(
                        context, "format", "required with content: JSONL, CSV, TSV, ACL_JSON or TBX"
                    )
                entries = await asyncio.to_thread(parse, request.content, fmt)
            else:
                entries = _entries_from_pb(request.entries, "entries")
            if not entries:
                await abort_invalid(context, "entries", "a glossary needs at least one entry")
            async with self.s.admin_lock:
                g = self.s.store.prepare_put(gid, entries)
                return await self._commit(context, g)
        except GlossaryError as e:
            await abort_invalid(context, e.field, e.message)

    async def PatchGlossary(self, request, context):
        await self._auth(context)
        gid = await self._gid(context, request.glossary_id)
        try:
            upserts = _entries_from_pb(request.upserts, "upserts")
            async with self.s.admin_lock:
                try:
                    g = self.s.store.prepare_patch(
                        gid, upserts, list(request.delete_ids), request.expected_version
                    )
                except KeyError:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND, f"glossary_id: no glossary {gid!r}"
                    )
                except LookupError as e:
                    await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
                except VersionConflict as e:
                    await context.abort(grpc.StatusCode.ABORTED, str(e))
                return await self._commit(context, g)
        except GlossaryError as e:
            await abort_invalid(context, e.field, e.message)

    async def GetGlossary(self, request, context):
        await self._auth(context)
        gid = await self._gid(context, request.glossary_id)
        g = self.s.store.get(gid)
        if g is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"glossary_id: no glossary {gid!r}")
        return _glossary_pb(g, request.include_entries)

    async def ListGlossaries(self, request, context):
        await self._auth(context)
        return admin_pb2.ListGlossariesResponse(
            glossaries=[_glossary_pb(g) for g in self.s.store.list()]
        )

    async def DeleteGlossary(self, request, context):
        await self._auth(context)
        gid = await self._gid(context, request.glossary_id)
        async with self.s.admin_lock:
            ok = await asyncio.to_thread(self.s.engine.delete_glossary, gid)
        if not ok:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"glossary_id: no glossary {gid!r}")
        for gauge in (self.s.metrics.glossary_entries, self.s.metrics.glossary_version):
            if gid in _label_values(gauge):
                gauge.remove(gid)
        return admin_pb2.DeleteGlossaryResponse()

    async def ReloadModel(self, request, context):
        await self._auth(context)
        path = request.checkpoint_path
        if not path:
            await abort_invalid(
                context, "checkpoint_path", "required: a checkpoint directory on the server"
            )
        t0 = time.monotonic()
        async with self.s.admin_lock:
            try:
                mid, n = await asyncio.to_thread(self.s.engine.load_model, resolve_checkpoint(path))
            except (FileNotFoundError, ValueError) as e:
                await abort_invalid(context, "checkpoint_path", str(e))
            except RuntimeError as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"checkpoint_path: {e}")
        await self.s.set_serving()
        return admin_pb2.ReloadModelResponse(
            model_id=mid, glossaries_reembedded=n, took_ms=(time.monotonic() - t0) * 1e3
        )

    async def GetStats(self, request, context):
        await self._auth(context)
        from .index import gpu_available

        e = self.s.engine
        return admin_pb2.Stats(
            model_id=e.snapshot.model_id,
            active_sessions=self.s.active_sessions,
            requests_total=e.stats["requests"],
            dropped_total=e.stats["dropped"],
            glossaries=[_glossary_pb(g) for g in self.s.store.list()],
            queue_depth=e.queue_depth(),
            uptime_s=time.time() - self.s.started,
            index_device="gpu" if gpu_available() else "cpu",
            encoder_device=e.cfg.device,
            encoder_workers=e.cfg.workers,
            encoder_threads=e.cfg.threads,
            precision=e.cfg.precision,
        )


def _label_values(metric) -> set:
    return {labels[0] for labels in getattr(metric, "_metrics", {})}


def resolve_checkpoint(path: str) -> Path:
    if path == "default":
        return default_checkpoint_dir()
    return Path(path).expanduser()


# --------------------------------------------------------------------------- assembly


ADMIN_TOKEN_FILE = "admin_token"


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably, readable by the owner only (0600):
    a crash leaves the old file or the new one, never an empty or partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def resolve_admin_token(cfg: ServerConfig) -> str:
    """The admin bearer token: the configured one, else ``{data_dir}/admin_token``, else a new
    one written there. Never empty: a blank token file is replaced by a fresh token (a crash
    can leave one), and a file that cannot be read stops the start-up with ``ValueError``."""
    if cfg.admin_token:
        logger.info("admin token: from the server settings (flag, environment or config file)")
        return cfg.admin_token.strip()
    p = Path(cfg.data_dir) / ADMIN_TOKEN_FILE
    if p.exists():
        try:
            token = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the admin token file {p}: {e}") from e
        if token:
            logger.info("admin token: from %s", p)
            return token
        logger.warning("admin token file %s is blank: replacing it with a new token", p)
    token = secrets.token_urlsafe(24)
    _write_secret(p, token + "\n")
    logger.warning("admin token: none configured, generated one in %s", p)
    return token


async def create_server(
    cfg: ServerConfig, load: bool = True
) -> tuple[grpc.aio.Server, int, ServerState]:
    """Build and start a server (bound, serving); returns (server, port, state)."""
    validate_server_config(cfg)
    if load and cfg.checkpoint != "none":
        # Refuse a missing or broken checkpoint before anything is written to the data dir.
        DualEncoder.load_config(resolve_checkpoint(cfg.checkpoint))
    admin_token = resolve_admin_token(cfg)
    store = GlossaryStore(cfg.data_dir)
    device = resolve_device(cfg.device)
    engine = Engine(
        store,
        EngineConfig(
            max_batch_windows=cfg.max_batch_windows,
            max_wait_s=cfg.max_wait_ms / 1e3,
            exact_max=cfg.exact_max,
            precision=cfg.precision,
            threads=cfg.threads,
            workers=resolve_workers(cfg.workers, device, cfg.threads),
            window_top=cfg.window_top,
            device=device,
            rescore=cfg.rescore,
            rescore_candidates=cfg.rescore_candidates,
        ),
    )
    if cfg.demo_glossary and store.get("demo") is None and (DEMO_DIR / "glossary.jsonl").exists():
        store.commit(store.prepare_put("demo", load_file(DEMO_DIR / "glossary.jsonl")))
    options = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    health = HealthServicer()
    state = ServerState(cfg, engine, store, health, Metrics(), admin_token)
    add_service(server, retrieval_pb2, "TermRetrieval", TermRetrievalServicer(state))
    add_service(server, admin_pb2, "GlossaryAdmin", GlossaryAdminServicer(state))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if cfg.tls_cert:
        creds = grpc.ssl_server_credentials(
            [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(cfg.address, creds)
    else:
        port = server.add_insecure_port(cfg.address)
    if port == 0:
        raise RuntimeError(f"could not bind {cfg.address}")
    await state.set_serving()
    await server.start()
    if load and cfg.checkpoint != "none":
        ckpt = resolve_checkpoint(cfg.checkpoint)
        state.loading = True
        try:
            await asyncio.to_thread(engine.load_model, ckpt)
        except BaseException:
            await server.stop(0)
            engine.close()
            raise
        finally:
            state.loading = False
        await state.set_serving()
    state.refresh_glossary_metrics()
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        host = cfg.address.rsplit(":", 1)[0].strip("[]")  # metrics on the same interface as gRPC
        start_http_server(cfg.metrics_port, addr=host, registry=state.metrics.registry)
    logger.info(
        "rasst serving on port %d (model=%s, glossaries=%s)",
        port,
        engine.snapshot.model_id or "none",
        [g.glossary_id for g in store.list()],
    )
    return server, port, state


async def drain(server: grpc.aio.Server, state: ServerState, grace_s: float) -> None:
    """Stop taking work: NOT_SERVING, finish in-flight calls for up to grace_s, stop the workers."""
    state.draining = True
    await state.set_serving()
    await server.stop(grace_s)
    await asyncio.to_thread(state.engine.close)


async def serve(cfg: ServerConfig) -> None:
    server, port, state = await create_server(cfg)
    e = state.engine.cfg
    logger.info(
        "speech front-end on %s: %d encoder worker(s) x %d thread(s), %s arithmetic, second stage %s",
        e.device,
        e.workers,
        e.threads,
        e.precision,
        "on" if e.rescore else "off",
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"rasst listening on {cfg.address.rsplit(':', 1)[0]}:{port}", flush=True)
    await stop.wait()
    logger.info("draining (grace %.1fs)", cfg.drain_s)
    await drain(server, state, cfg.drain_s)


class _JsonFormatter(logging.Formatter):
    def format(self, record):
        return json.dumps(
            {
                "t": round(record.created, 3),
                "level": record.levelname,
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst serve", description="Run the rasst retrieval server (gRPC)."
    )
    p.add_argument("--config", help="TOML file with [server] settings")
    p.add_argument("--address", help="host:port (default 127.0.0.1:50051)")
    p.add_argument("--checkpoint", help="checkpoint directory, 'default' or 'none'")
    p.add_argument(
        "--data-dir", dest="data_dir", help="where glossaries are persisted (default var/rasst)"
    )
    p.add_argument(
        "--admin-token",
        dest="admin_token",
        help="bearer token for admin calls (or RASST_ADMIN_TOKEN)",
    )
    p.add_argument("--tls-cert", dest="tls_cert")
    p.add_argument("--tls-key", dest="tls_key")
    p.add_argument("--no-demo-glossary", dest="demo_glossary", action="store_const", const=False)
    p.add_argument("--metrics-port", dest="metrics_port", type=int)
    p.add_argument("--max-batch-windows", dest="max_batch_windows", type=int)
    p.add_argument("--max-wait-ms", dest="max_wait_ms", type=float)
    p.add_argument("--exact-max", dest="exact_max", type=int)
    p.add_argument(
        "--precision",
        dest="precision",
        choices=list(PRECISIONS),
        help="CPU arithmetic of the speech head and exact search (int8: ~2x faster each)",
    )
    p.add_argument(
        "--no-rescore",
        dest="rescore",
        action="store_const",
        const=False,
        help="serve cosine scores only, without the model's phone-alignment second stage",
    )
    p.add_argument(
        "--rescore-candidates",
        dest="rescore_candidates",
        type=int,
        help="most candidates per request the second stage aligns (default 256)",
    )
    p.add_argument("--threads", type=int, help="torch / CTranslate2 threads of each worker")
    p.add_argument(
        "--workers",
        type=int,
        help="encoder worker threads (0 = auto: 1 on a GPU, one per core on a CPU, at most 4)",
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="where the speech front-end runs"
    )
    p.add_argument(
        "--window-top",
        dest="window_top",
        type=int,
        help="entries each window may vote for (default 2)",
    )
    p.add_argument("--log-level", dest="log_level")
    p.add_argument("--json-logs", dest="json_logs", action="store_const", const=True)
    args = vars(p.parse_args(argv))
    toml_path = args.pop("config")
    try:
        cfg = load_config(args, toml_path)
    except ValueError as e:
        print(f"rasst serve: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    if cfg.json_logs:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=cfg.log_level.upper(), handlers=[handler])
    try:
        asyncio.run(serve(cfg))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"rasst serve: {e}", file=sys.stderr)
        return 1
    return 0
