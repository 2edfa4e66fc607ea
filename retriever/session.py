"""Requests and streaming sessions on the data plane: their checks and a session's audio.

Pure functions and one small class, no gRPC context: :func:`check_query` and
:func:`session_spec` raise :class:`~rasst.retriever.rpc.Failure` naming the field and
what it allows; :class:`Lookback` holds a session's recent audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from rasst.pcm import CHUNK_S, LOOKBACK_S
from rasst.v1 import retrieval_pb2

from . import audio as A
from .engine import ServedGlossary, Snapshot
from .rpc import Failure, FieldError, shown

DEFAULT_TOP_K = 10
MAX_TOP_K = 100
# The least audio searched at once: a clip shorter than this holds no term. In a stream,
# chunks shorter than this are held (and answered) until this much new audio has arrived,
# so a flood of tiny chunks costs no more encoder time than chunks of this length.
MIN_SEARCH_S = 0.1
MAX_SESSION_ID_CHARS = 128
# Silence searched after a stream's last chunk: its last words get right context, as the
# next chunk gives them in the middle of a stream.
FLUSH_S = 0.48
ENCODINGS = {
    retrieval_pb2.AUDIO_ENCODING_S16LE: "s16le",
    retrieval_pb2.AUDIO_ENCODING_F32LE: "f32le",
}


def check_query(
    snap: Snapshot,
    loading: bool,
    glossary_id: str,
    lang: str,
    top_k: int,
    threshold: float | None,
    prefix: str = "",
) -> ServedGlossary:
    """The glossary a query (a clip or a session) is answered from; raises Failure."""
    if not snap.ready:
        if loading:  # transient: clients retry UNAVAILABLE with backoff
            raise Failure(
                grpc.StatusCode.UNAVAILABLE, "the server is starting: the model is still loading"
            )
        raise Failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            "no model is loaded; an operator must call GlossaryAdmin.ReloadModel",
        )
    if not glossary_id:
        raise FieldError(f"{prefix}glossary_id", "required")
    served = snap.glossaries.get(glossary_id)
    if served is None:
        # The data plane needs no token: it never lists the glossaries it has.
        raise Failure(
            grpc.StatusCode.NOT_FOUND,
            f"{prefix}glossary_id: unknown glossary {shown(glossary_id)}",
        )
    if not lang:
        raise FieldError(f"{prefix}target_lang", "required (e.g. 'de')")
    langs = served.glossary.languages
    if lang not in langs:
        raise FieldError(
            f"{prefix}target_lang",
            f"glossary {shown(glossary_id)} has no {shown(lang)} translations; "
            f"it has {shown(langs, 200)}",
        )
    if not 0 <= top_k <= MAX_TOP_K:
        raise FieldError(
            f"{prefix}top_k", f"must be in [1, {MAX_TOP_K}] (0 = {DEFAULT_TOP_K}), got {top_k}"
        )
    if threshold is not None and not (-1.0 <= threshold <= 1.0):
        raise FieldError(f"{prefix}score_threshold", f"must be in [-1, 1], got {threshold}")
    return served


@dataclass(frozen=True)
class SessionSpec:
    """A StreamRetrieve session's settings, checked, with the defaults filled in."""

    glossary_id: str
    target_lang: str
    top_k: int
    threshold: float | None
    encoding: str
    sample_rate_hz: int
    chunk_s: float
    lookback_s: float
    deadline_s: float
    session_id: str
    stream_offset_s: float
    first_sequence: int

    @property
    def max_chunk_samples(self) -> int:
        """A chunk may last up to four times the session's chunk length."""
        return int(4 * self.chunk_s * A.SAMPLE_RATE)


def session_spec(c: retrieval_pb2.SessionConfig) -> SessionSpec:
    """Check a SessionConfig's own fields (the glossary is checked by :func:`check_query`)."""
    enc = ENCODINGS.get(c.encoding)
    if enc is None:
        raise FieldError("config.encoding", "must be AUDIO_ENCODING_S16LE or AUDIO_ENCODING_F32LE")
    if not A.MIN_INPUT_RATE <= c.sample_rate_hz <= A.MAX_INPUT_RATE:
        raise FieldError(
            "config.sample_rate_hz",
            f"must be in [{A.MIN_INPUT_RATE}, {A.MAX_INPUT_RATE}], got {c.sample_rate_hz}",
        )
    chunk_s = c.chunk_s or CHUNK_S
    if not 0.1 <= chunk_s <= 5.0:
        raise FieldError(
            "config.chunk_s", f"must be in [0.1, 5] seconds (0 = {CHUNK_S}), got {c.chunk_s}"
        )
    lookback_s = c.lookback_s if c.HasField("lookback_s") else LOOKBACK_S
    if not 0.0 <= lookback_s <= 10.0:
        raise FieldError("config.lookback_s", f"must be in [0, 10] seconds, got {lookback_s}")
    deadline_ms = c.deadline_ms or 1000
    if not 1 <= deadline_ms <= 60000:
        raise FieldError(
            "config.deadline_ms", f"must be in [1, 60000] (0 = 1000), got {c.deadline_ms}"
        )
    if len(c.session_id) > MAX_SESSION_ID_CHARS:
        raise FieldError(
            "config.session_id",
            f"at most {MAX_SESSION_ID_CHARS} characters, got {len(c.session_id)}",
        )
    if not (c.stream_offset_s >= 0 and np.isfinite(c.stream_offset_s)):
        raise FieldError(
            "config.stream_offset_s", f"must be a finite number >= 0, got {c.stream_offset_s}"
        )
    return SessionSpec(
        glossary_id=c.glossary_id,
        target_lang=c.target_lang,
        top_k=c.top_k or DEFAULT_TOP_K,
        threshold=c.score_threshold if c.HasField("score_threshold") else None,
        encoding=enc,
        sample_rate_hz=c.sample_rate_hz,
        chunk_s=chunk_s,
        lookback_s=lookback_s,
        deadline_s=deadline_ms / 1e3,
        session_id=c.session_id,
        stream_offset_s=float(c.stream_offset_s),
        first_sequence=c.first_sequence,
    )


class Lookback:
    """A session's recent audio in one preallocated array.

    Each chunk is copied in once (:meth:`push`); :meth:`take` hands the engine the audio
    not yet searched with up to ``keep`` samples of look-back before it, as a view of the
    array, not a new one. A session awaits each search before it pushes the next chunk, so
    a view is never written while the engine reads it. When the array is full, what must
    be kept moves to its front: one copy every three chunks of the session's size instead
    of joining the look-back and the chunk for each. A chunk too long for the array (up to
    4x the session's size) makes a larger one.
    """

    def __init__(self, keep: int, chunk: int):
        self.keep = keep
        self.buf = np.empty(keep + 3 * chunk, np.float32)
        self.end = 0  # audio held: buf[:end], oldest first
        self.unsearched = 0  # samples at the end not yet handed out by take()

    def push(self, x: np.ndarray) -> None:
        """Append a chunk."""
        held = min(self.end, self.keep + self.unsearched)
        if self.end + len(x) > len(self.buf):
            buf = self.buf
            if held + len(x) > len(buf):
                buf = np.empty(held + 3 * len(x), np.float32)
            buf[:held] = self.buf[self.end - held : self.end]
            self.buf, self.end = buf, held
        self.buf[self.end : self.end + len(x)] = x
        self.end += len(x)
        self.unsearched += len(x)

    def take(self) -> tuple[np.ndarray, int]:
        """The clip to search, look-back then the unsearched audio, and how many look-back
        samples it starts with; the audio counts as searched from now on."""
        new = self.unsearched
        prev = min(self.end - new, self.keep)
        self.unsearched = 0
        return self.buf[self.end - new - prev : self.end], prev
