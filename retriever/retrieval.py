"""The data plane: ``rasst.v1.TermRetrieval`` (a clip, or a streaming session)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np

from rasst.v1 import retrieval_pb2, retrieval_pb2_grpc

from . import audio as A
from .engine import EngineNotReady, Result, UnknownGlossary
from .rpc import Failure, FieldError, abort, shown
from .session import (
    DEFAULT_TOP_K,
    ENCODINGS,
    FLUSH_S,
    MIN_SEARCH_S,
    Lookback,
    SessionSpec,
    check_query,
    session_spec,
)
from .state import ServerState

logger = logging.getLogger(__name__)

MIN_SEARCH_SAMPLES = int(MIN_SEARCH_S * A.SAMPLE_RATE)


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


def _gone(glossary_id: str) -> Failure:
    """NOT_FOUND for a glossary deleted after the call checked it."""
    return Failure(grpc.StatusCode.NOT_FOUND, f"glossary {shown(glossary_id)} no longer exists")


def _decode_clip(r: retrieval_pb2.RetrieveRequest):
    if not r.HasField("audio"):
        raise FieldError("audio", "required")
    enc = ENCODINGS.get(r.audio.encoding)
    if enc is None:
        raise FieldError("audio.encoding", "must be AUDIO_ENCODING_S16LE or AUDIO_ENCODING_F32LE")
    try:
        clip = A.decode_pcm(r.audio.pcm, enc, r.audio.sample_rate_hz)
    except A.AudioError as e:
        raise FieldError(e.field, str(e)) from None
    dur = len(clip) / A.SAMPLE_RATE
    if not MIN_SEARCH_S <= dur <= A.MAX_CLIP_SECONDS:
        raise FieldError(
            "audio.pcm",
            f"clip must last {MIN_SEARCH_S}..{A.MAX_CLIP_SECONDS:.0f} s, got {dur:.3f} s",
        )
    return clip


class TermRetrievalServicer(retrieval_pb2_grpc.TermRetrievalServicer):
    def __init__(self, state: ServerState):
        self.s = state

    def _submit(self, clip, glossary_id, top_k, threshold, deadline_s, *stream):
        """Queue a clip for the engine; the future of its Result. Raises Failure."""
        try:
            return self.s.engine.submit(clip, glossary_id, top_k, threshold, deadline_s, *stream)
        except EngineNotReady as e:
            raise Failure(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        except UnknownGlossary:
            raise _gone(glossary_id) from None

    @staticmethod
    async def _await(fut):
        """The worker's result; a caller that goes away cancels it, so it is not computed."""
        try:
            return await fut
        except asyncio.CancelledError:
            fut.cancel()
            raise

    def _observe(self, rpc: str, result: Result, seconds: float) -> None:
        m = self.s.metrics
        m.requests.labels(rpc, "OK").inc()
        m.latency.labels(rpc).observe(seconds)
        m.queue_latency.observe(result.queue_ms / 1e3)
        m.queue_depth.set(self.s.engine.queue_depth())
        if result.dropped:
            m.dropped.inc()

    async def Retrieve(self, request, context):
        t_arrival = time.monotonic()
        r = request
        thr = r.score_threshold if r.HasField("score_threshold") else None
        try:
            check_query(
                self.s.engine.snapshot, self.s.loading, r.glossary_id, r.target_lang, r.top_k, thr
            )
            clip = _decode_clip(r)
            remaining = context.time_remaining()
            fut = self._submit(
                clip,
                r.glossary_id,
                r.top_k or DEFAULT_TOP_K,
                thr,
                remaining if remaining is not None else 30.0,
            )
        except Failure as f:
            await abort(context, f)
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
            model_id=result.model_id,
            timings=_timings(result, t_arrival),
            audio_duration_s=len(clip) / A.SAMPLE_RATE,
        )

    async def _next(self, it):
        """The stream's next message, None at its end; Failure after idle_timeout_s."""
        idle = self.s.config.idle_timeout_s
        try:
            # In the handler's own task (no wait_for task): grpc expects a call's reads
            # there, and a read from another task can end the call with INTERNAL.
            async with asyncio.timeout(idle):
                return await it.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise Failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no message for {idle:g} s (the server's idle_timeout_s): session closed",
            ) from None

    async def StreamRetrieve(self, request_iterator, context):
        it = request_iterator.__aiter__()
        # A stream counts from its start: one that never sends its config is open too.
        self.s.active_sessions += 1
        self.s.metrics.sessions.inc()
        spec: SessionSpec | None = None
        answered = 0
        try:
            first = await self._next(it)
            if first is None:
                return
            if first.WhichOneof("message") != "config":
                raise FieldError("config", "the first message of a session must be a SessionConfig")
            spec = session_spec(first.config)
            check_query(
                self.s.engine.snapshot,
                self.s.loading,
                spec.glossary_id,
                spec.target_lang,
                first.config.top_k,
                spec.threshold,
                "config.",
            )
            logger.info(
                "session %s opened: glossary=%s lang=%s chunk=%.2fs lookback=%.2fs",
                shown(spec.session_id),
                spec.glossary_id,
                spec.target_lang,
                spec.chunk_s,
                spec.lookback_s,
            )
            lookback = Lookback(
                int(spec.lookback_s * A.SAMPLE_RATE), int(spec.chunk_s * A.SAMPLE_RATE)
            )
            t_stream = spec.stream_offset_s  # stream time of the next chunk's start
            expected = spec.first_sequence
            held: list = []  # answers to chunks too short to search, in order
            ended = False  # the last chunk has come
            while (req := await self._next(it)) is not None:
                t_arrival = time.monotonic()
                if req.WhichOneof("message") != "chunk":
                    raise FieldError("config", "SessionConfig is only allowed as the first message")
                ch = req.chunk
                if ended:
                    raise FieldError("chunk", "no chunk may follow the one marked last")
                if ch.sequence != expected:
                    raise FieldError(
                        "chunk.sequence",
                        f"expected {expected}, got {ch.sequence} (sequence numbers increase by one)",
                    )
                expected += 1
                try:
                    x = A.decode_pcm(ch.pcm, spec.encoding, spec.sample_rate_hz, field="chunk")
                except A.AudioError as e:
                    raise FieldError(e.field, str(e)) from None
                if len(x) > spec.max_chunk_samples:
                    raise FieldError(
                        "chunk.pcm",
                        f"chunk lasts {len(x) / A.SAMPLE_RATE:.2f} s; "
                        f"at most 4 * chunk_s = {4 * spec.chunk_s:.2f} s",
                    )
                lookback.push(x)
                chunk_start, t_stream = t_stream, t_stream + len(x) / A.SAMPLE_RATE
                resp = retrieval_pb2.StreamRetrieveResponse(
                    sequence=ch.sequence, chunk_start_s=chunk_start, chunk_end_s=t_stream
                )
                held.append((resp, t_arrival))
                pad = 0
                if ch.last:
                    ended = True
                    pad = int(FLUSH_S * A.SAMPLE_RATE)
                    lookback.push(np.zeros(pad, np.float32))
                elif lookback.unsearched < MIN_SEARCH_SAMPLES:
                    continue  # too little new audio to search: held for the next chunk
                async for out in self._answer(spec, lookback, t_stream, held, pad):
                    answered += 1
                    yield out
            # The caller has half-closed: whatever is held is searched now.
            if held:
                async for out in self._answer(spec, lookback, t_stream, held):
                    answered += 1
                    yield out
        except Failure as f:
            await abort(context, f)
        finally:
            self.s.active_sessions -= 1
            self.s.metrics.sessions.dec()
            if spec is not None:
                logger.info("session %s closed after %d chunks", shown(spec.session_id), answered)

    async def _answer(
        self, spec: SessionSpec, lookback: Lookback, t_stream: float, held: list, pad: int = 0
    ):
        """Search the audio not yet searched (with its look-back, and ``pad`` samples of
        silence after it) and answer every held chunk in order; the hits go with the last
        of them, their times inside the audio."""
        clip, prev = lookback.take()
        clip_start = t_stream - (len(clip) - pad) / A.SAMPLE_RATE
        result = None
        if len(clip) >= MIN_SEARCH_SAMPLES:
            fut = self._submit(
                clip,
                spec.glossary_id,
                spec.top_k,
                spec.threshold,
                spec.deadline_s,
                clip_start,
                prev / A.SAMPLE_RATE,  # search only windows reaching the new audio
            )
            result = await self._await(fut)
        else:
            snap = self.s.engine.snapshot
            served = snap.glossaries.get(spec.glossary_id)
            if served is None:
                raise _gone(spec.glossary_id)
            version, model_id = served.glossary.version, snap.model_id
        answers, held[:] = list(held), []
        for i, (resp, t_arrival) in enumerate(answers):
            last = i == len(answers) - 1
            if result is not None:
                resp.glossary_version = result.glossary_version
                resp.model_id = result.model_id
                resp.dropped = result.dropped
                if last:
                    resp.hits.extend(_hits_pb(result, spec.target_lang))
                    for h in resp.hits:  # a window may reach into the flush's silence
                        h.end_s = min(h.end_s, t_stream)
                    resp.timings.CopyFrom(_timings(result, t_arrival))
            else:
                resp.glossary_version = version
                resp.model_id = model_id
            if not resp.HasField("timings"):
                resp.timings.total_ms = (time.monotonic() - t_arrival) * 1e3
            try:
                yield resp
            finally:
                # Metrics once the answer is on its way, off the caller's critical path;
                # the latency observed is the handler's, up to the answer.
                if result is not None and last:
                    self._observe("StreamRetrieve", result, resp.timings.total_ms / 1e3)
