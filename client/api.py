"""Sync and async clients for rasst, with typed errors that keep the gRPC status code.

A :class:`Session` wraps ``StreamRetrieve``: chunks go out as they come, responses are
delivered to a callback (or a queue), and a broken stream is re-opened with exponential
backoff, resuming at the first unanswered sequence number with the stream clock intact.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

# PcmError is re-exported: Client.retrieve and Session.send raise it for arrays that are
# not audio.
from rasst.pcm import CHUNK_S, LOOKBACK_S, SAMPLE_RATE, PcmError, as_mono_float, to_s16le  # noqa: F401
from rasst.v1 import admin_pb2, admin_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors


class RasstError(Exception):
    """A failed call; ``code`` is the gRPC status code, ``field_violations`` the BadRequest details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
    ):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations or []


class InvalidArgument(RasstError):
    pass


class NotFound(RasstError):
    pass


class Unauthenticated(RasstError):
    pass


class PermissionDenied(RasstError):
    pass


class FailedPrecondition(RasstError):
    pass


class Unavailable(RasstError):
    pass


class DeadlineExceeded(RasstError):
    pass


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
# Transport failures are retried. INTERNAL too: grpc's core reports "Internal error from
# Core" when a bidi stream is torn down while the client is still writing, and the
# re-opened stream then gets the server's real status. A status the server chose
# (NOT_FOUND, INVALID_ARGUMENT, ...) is final.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}
# After such an INTERNAL the re-opened stream sends its config alone for this long before
# its chunks: a server that refuses the config (an unknown glossary) then ends the stream
# with no write in flight, and its status arrives as it is. Under CPU load the race came
# back on every retry without it (3 sessions in 10 ended with INTERNAL, not NOT_FOUND).
CONFIG_SETTLE_S = 0.1


def from_rpc_error(e: grpc.RpcError) -> RasstError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    violations = []
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        st = rpc_status.from_call(e) if hasattr(e, "trailing_metadata") else None
        for d in st.details if st else []:
            br = error_details_pb2.BadRequest()
            if d.Unpack(br):
                violations += [(v.field, v.description) for v in br.field_violations]
    except Exception:  # details are a convenience; the code and message are what count
        pass
    return _BY_CODE.get(code, RasstError)(code, details or "", violations)


# --------------------------------------------------------------------------- helpers


def audio_pb(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> retrieval_pb2.Audio:
    """Samples (see :func:`rasst.pcm.as_mono_float`) to an s16le Audio message (bytes,
    never repeated float). Raises :class:`PcmError` for arrays that are not audio."""
    return retrieval_pb2.Audio(
        pcm=to_s16le(as_mono_float(samples)),
        encoding=retrieval_pb2.AUDIO_ENCODING_S16LE,
        sample_rate_hz=sample_rate,
    )


class AudioFileError(ValueError):
    """An audio file that cannot be read; the message is one line naming the file."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Any file libsndfile reads (WAV of any bit depth, FLAC, OGG/Vorbis/Opus, MP3, ...) as
    mono float32 in [-1, 1] at 16 kHz, resampled with soxr as the server does. Returns
    ``(samples, 16000)``; raises :class:`AudioFileError` with a one-line reason."""
    import soundfile as sf

    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise AudioFileError(f"{p}: the file is empty")
        x, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except AudioFileError:
        raise
    except OSError as e:
        raise AudioFileError(f"{p}: {e.strerror or e}") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AudioFileError(f"{p}: not an audio file libsndfile can read ({reason})") from None
    if len(x) == 0:
        raise AudioFileError(f"{p}: the file holds no audio")
    x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return np.clip(x, -1.0, 1.0), SAMPLE_RATE


def make_channel(address: str, tls_ca: str | None = None, aio: bool = True):
    options = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    mod = grpc.aio if aio else grpc
    if tls_ca is not None:
        with open(tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return mod.secure_channel(address, creds, options=options)
    return mod.insecure_channel(address, options=options)


def _auth(token: str | None):
    return (("authorization", f"Bearer {token}"),) if token else ()


# --------------------------------------------------------------------------- sync client


class Client:
    """Blocking client for scripts and tools."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls_ca: str | None = None,
        timeout: float = 30.0,
    ):
        self.channel = make_channel(address, tls_ca, aio=False)
        self.retrieval = retrieval_pb2_grpc.TermRetrievalStub(self.channel)
        self.admin = admin_pb2_grpc.GlossaryAdminStub(self.channel)
        self.token = token
        self.timeout = timeout

    def _call(self, fn, request, admin: bool = False):
        try:
            return fn(request, timeout=self.timeout, metadata=_auth(self.token) if admin else ())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def retrieve(
        self,
        samples: np.ndarray,
        glossary_id: str,
        lang: str,
        top_k: int = 10,
        threshold: float | None = None,
        sample_rate: int = SAMPLE_RATE,
    ):
        req = retrieval_pb2.RetrieveRequest(
            glossary_id=glossary_id,
            target_lang=lang,
            audio=audio_pb(samples, sample_rate),
            top_k=top_k,
        )
        if threshold is not None:
            req.score_threshold = threshold
        return self._call(self.retrieval.Retrieve, req)

    def put_glossary(
        self,
        glossary_id: str,
        entries: list[dict] | None = None,
        content: bytes | None = None,
        fmt: str | None = None,
    ):
        req = admin_pb2.PutGlossaryRequest(glossary_id=glossary_id)
        if content is not None:
            req.content = content
            req.format = admin_pb2.GlossaryFormat.Value(f"GLOSSARY_FORMAT_{(fmt or '').upper()}")
        for e in entries or []:
            req.entries.append(entry_pb(e))
        return self._call(self.admin.PutGlossary, req, admin=True)

    def patch_glossary(
        self,
        glossary_id: str,
        upserts: list[dict] = (),
        delete_ids: list[str] = (),
        expected_version: int = 0,
    ):
        req = admin_pb2.PatchGlossaryRequest(
            glossary_id=glossary_id, delete_ids=list(delete_ids), expected_version=expected_version
        )
        req.upserts.extend(entry_pb(e) for e in upserts)
        return self._call(self.admin.PatchGlossary, req, admin=True)

    def get_glossary(
        self,
        glossary_id: str,
        include_entries: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ):
        """A glossary; with ``include_entries``, one page of its entries (``page_size``, 0 =
        the server's default) and ``next_page_token`` when more follow."""
        return self._call(
            self.admin.GetGlossary,
            admin_pb2.GetGlossaryRequest(
                glossary_id=glossary_id,
                include_entries=include_entries,
                page_size=page_size,
                page_token=page_token,
            ),
            admin=True,
        )

    def iter_entries(self, glossary_id: str, page_size: int = 0):
        """Every entry of one version of a glossary, page by page (ABORTED if the glossary
        changes meanwhile)."""
        token = ""
        while True:
            page = self.get_glossary(glossary_id, True, page_size, token)
            yield from page.entries
            token = page.next_page_token
            if not token:
                return

    def list_glossaries(self):
        return list(
            self._call(
                self.admin.ListGlossaries, admin_pb2.ListGlossariesRequest(), admin=True
            ).glossaries
        )

    def delete_glossary(self, glossary_id: str):
        return self._call(
            self.admin.DeleteGlossary,
            admin_pb2.DeleteGlossaryRequest(glossary_id=glossary_id),
            admin=True,
        )

    def reload_model(self, checkpoint_path: str):
        return self._call(
            self.admin.ReloadModel,
            admin_pb2.ReloadModelRequest(checkpoint_path=checkpoint_path),
            admin=True,
        )

    def stats(self):
        return self._call(self.admin.GetStats, admin_pb2.GetStatsRequest(), admin=True)

    def close(self) -> None:
        self.channel.close()


def entry_pb(e: dict) -> admin_pb2.GlossaryEntry:
    return admin_pb2.GlossaryEntry(
        id=e.get("id", ""),
        term=e["term"],
        translations=e.get("translations", {}),
        aliases=e.get("aliases", []),
    )


# --------------------------------------------------------------------------- async session


@dataclass(frozen=True)
class SessionOptions:
    glossary_id: str
    target_lang: str
    top_k: int = 10
    score_threshold: float | None = None
    chunk_s: float = CHUNK_S
    lookback_s: float = LOOKBACK_S
    deadline_ms: int = 1000
    sample_rate: int = SAMPLE_RATE
    session_id: str = ""
    # Reconnect: attempts before giving up, first delay and cap (seconds), doubling with jitter.
    max_retries: int = 5
    backoff_s: float = 0.1
    backoff_max_s: float = 2.0
    # Chunks in flight (sent, not yet answered) before send() waits: flow control.
    max_in_flight: int = 8


class Session:
    """An async StreamRetrieve session that survives a broken connection.

    ``await send(samples)`` queues one chunk (float32 at ``sample_rate``) and returns its
    sequence number; ``on_response(resp, sent_at)`` is called for every response in
    order. After a transport failure the stream is re-opened with the chunks not yet
    answered, and their sequence numbers and stream times are kept.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        options: SessionOptions,
        on_response: Callable | None = None,
    ):
        self.stub = retrieval_pb2_grpc.TermRetrievalStub(channel)
        self.o = options
        self.on_response = on_response
        self.responses: asyncio.Queue = asyncio.Queue()
        self._pending: dict[
            int, tuple[bytes, float, float, bool]
        ] = {}  # seq -> (pcm, stream_start_s, sent_at, last)
        self._next_seq = 0
        self._t_stream = 0.0
        self._outbox: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._window = asyncio.Semaphore(options.max_in_flight)
        self.reconnects = 0
        # Why the session ended early: a RasstError, or what on_response raised.
        self.error: BaseException | None = None
        self._done = asyncio.Event()

    async def start(self) -> Session:
        self._task = asyncio.create_task(self._run())
        return self

    async def send(self, samples: np.ndarray, last: bool = False) -> int:
        """Queue one chunk: float samples in [-1, 1], or int16, mono or ``(frames,
        channels)``; returns its sequence number. Mark the stream's final chunk ``last``:
        the server then hears its last words with silence after them (right context that
        a next chunk would otherwise give), and no chunk may follow. Raises :class:`PcmError` for an array
        that is not audio, and the session's error (a status, or the exception the
        ``on_response`` callback raised) once it has failed."""
        samples = as_mono_float(samples)
        if self.error is not None:
            raise self.error
        if self._done.is_set():
            raise RasstError(grpc.StatusCode.CANCELLED, "the session has ended")
        # Flow control: wait for a free slot, but never past the session's end (an error
        # arriving while we wait must surface here, not leave the caller blocked). With a
        # slot free, as in a real-time session, it is taken at once, with no task to wait on.
        if self._window.locked():
            acquire = asyncio.ensure_future(self._window.acquire())
            ended = asyncio.ensure_future(self._done.wait())
            await asyncio.wait({acquire, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if not acquire.done() or acquire.cancelled():
                acquire.cancel()
                raise self.error or RasstError(grpc.StatusCode.CANCELLED, "the session has ended")
        else:
            await self._window.acquire()
        seq = self._next_seq
        self._next_seq += 1
        self._pending[seq] = (to_s16le(samples), self._t_stream, time.monotonic(), last)
        self._t_stream += len(samples) / self.o.sample_rate
        if self._outbox is not None:
            self._outbox.put_nowait(seq)
        return seq

    async def wait_ended(self) -> None:
        """Return once the session has ended (closed, or failed: see ``error``)."""
        await self._done.wait()

    async def close(self, timeout: float = 30.0) -> None:
        """Finish: wait for the answers to every chunk sent (or the timeout), then end the stream."""
        self._closed = True
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            if self._task:
                self._task.cancel()
        if self.error is not None:
            raise self.error

    def _config(self, first_seq: int, offset: float) -> retrieval_pb2.StreamRetrieveRequest:
        c = retrieval_pb2.SessionConfig(
            glossary_id=self.o.glossary_id,
            target_lang=self.o.target_lang,
            top_k=self.o.top_k,
            chunk_s=self.o.chunk_s,
            lookback_s=self.o.lookback_s,
            encoding=retrieval_pb2.AUDIO_ENCODING_S16LE,
            sample_rate_hz=self.o.sample_rate,
            deadline_ms=self.o.deadline_ms,
            session_id=self.o.session_id,
            first_sequence=first_seq,
            stream_offset_s=offset,
        )
        if self.o.score_threshold is not None:
            c.score_threshold = self.o.score_threshold
        return retrieval_pb2.StreamRetrieveRequest(config=c)

    async def _run(self) -> None:
        attempt = 0
        settle = False  # the last attempt broke with INTERNAL: send the config alone first
        try:
            while True:
                first = min(self._pending) if self._pending else self._next_seq
                offset = self._pending[first][1] if self._pending else self._t_stream
                self._outbox = asyncio.Queue()
                for seq in sorted(self._pending):
                    self._outbox.put_nowait(seq)
                if self._closed:
                    self._outbox.put_nowait(None)
                outbox = self._outbox

                async def requests(first=first, offset=offset, outbox=outbox, settle=settle):
                    yield self._config(first, offset)
                    if settle:
                        await asyncio.sleep(CONFIG_SETTLE_S)
                    while True:
                        seq = await outbox.get()
                        if seq is None:
                            return
                        if seq in self._pending:
                            yield retrieval_pb2.StreamRetrieveRequest(
                                chunk=retrieval_pb2.AudioChunk(
                                    sequence=seq,
                                    pcm=self._pending[seq][0],
                                    last=self._pending[seq][3],
                                )
                            )

                call = self.stub.StreamRetrieve(requests())
                try:
                    async for resp in call:
                        attempt = 0
                        item = self._pending.pop(resp.sequence, None)
                        if item is not None:
                            self._window.release()
                        sent_at = item[2] if item else time.monotonic()
                        if self.on_response is not None:
                            try:
                                self.on_response(resp, sent_at)
                            except Exception as e:  # the caller's bug: theirs to see
                                self.error = e
                                call.cancel()
                                return
                        self.responses.put_nowait((resp, sent_at))
                    if self._closed and not self._pending:
                        return
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        None,
                        None,
                        "stream ended with chunks unanswered",
                    )
                except grpc.aio.AioRpcError as e:
                    outbox.put_nowait(None)  # end this attempt's request generator
                    if e.code() not in RETRYABLE or attempt >= self.o.max_retries:
                        self.error = from_rpc_error(e)
                        return
                    settle = e.code() == grpc.StatusCode.INTERNAL
                    delay = min(self.o.backoff_max_s, self.o.backoff_s * 2**attempt) * (
                        0.5 + random.random() / 2
                    )
                    attempt += 1
                    self.reconnects += 1
                    logger.warning(
                        "stream broke (%s); reconnect %d in %.2fs from sequence %s",
                        e.code().name,
                        attempt,
                        delay,
                        min(self._pending) if self._pending else self._next_seq,
                    )
                    await asyncio.sleep(delay)
        finally:
            self._done.set()
