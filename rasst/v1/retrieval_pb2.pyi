from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_S16LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_F32LE: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_S16LE: AudioEncoding
AUDIO_ENCODING_F32LE: AudioEncoding

class Audio(_message.Message):
    __slots__ = ("pcm", "encoding", "sample_rate_hz")
    PCM_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    encoding: AudioEncoding
    sample_rate_hz: int
    def __init__(self, pcm: _Optional[bytes] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("entry_id", "term", "translation", "score", "start_s", "end_s", "matched_form")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FORM_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    term: str
    translation: str
    score: float
    start_s: float
    end_s: float
    matched_form: str
    def __init__(self, entry_id: _Optional[str] = ..., term: _Optional[str] = ..., translation: _Optional[str] = ..., score: _Optional[float] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., matched_form: _Optional[str] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("queue_ms", "encode_ms", "search_ms", "total_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    encode_ms: float
    search_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("glossary_id", "target_lang", "audio", "top_k", "score_threshold")
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    glossary_id: str
    target_lang: str
    audio: Audio
    top_k: int
    score_threshold: float
    def __init__(self, glossary_id: _Optional[str] = ..., target_lang: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., top_k: _Optional[int] = ..., score_threshold: _Optional[float] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("hits", "glossary_version", "timings", "audio_duration_s", "model_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    GLOSSARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    glossary_version: int
    timings: ServerTimings
    audio_duration_s: float
    model_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., glossary_version: _Optional[int] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., audio_duration_s: _Optional[float] = ..., model_id: _Optional[str] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("glossary_id", "target_lang", "top_k", "score_threshold", "chunk_s", "lookback_s", "encoding", "sample_rate_hz", "deadline_ms", "session_id", "first_sequence", "stream_offset_s")
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANG_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_S_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_S_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STREAM_OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    glossary_id: str
    target_lang: str
    top_k: int
    score_threshold: float
    chunk_s: float
    lookback_s: float
    encoding: AudioEncoding
    sample_rate_hz: int
    deadline_ms: int
    session_id: str
    first_sequence: int
    stream_offset_s: float
    def __init__(self, glossary_id: _Optional[str] = ..., target_lang: _Optional[str] = ..., top_k: _Optional[int] = ..., score_threshold: _Optional[float] = ..., chunk_s: _Optional[float] = ..., lookback_s: _Optional[float] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., session_id: _Optional[str] = ..., first_sequence: _Optional[int] = ..., stream_offset_s: _Optional[float] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("sequence", "pcm", "last")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    pcm: bytes
    last: bool
    def __init__(self, sequence: _Optional[int] = ..., pcm: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class StreamRetrieveRequest(_message.Message):
    __slots__ = ("config", "chunk")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    chunk: AudioChunk
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., chunk: _Optional[_Union[AudioChunk, _Mapping]] = ...) -> None: ...

class StreamRetrieveResponse(_message.Message):
    __slots__ = ("sequence", "hits", "glossary_version", "timings", "chunk_start_s", "chunk_end_s", "dropped", "model_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    GLOSSARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_START_S_FIELD_NUMBER: _ClassVar[int]
    CHUNK_END_S_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    glossary_version: int
    timings: ServerTimings
    chunk_start_s: float
    chunk_end_s: float
    dropped: bool
    model_id: str
    def __init__(self, sequence: _Optional[int] = ..., hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., glossary_version: _Optional[int] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., chunk_start_s: _Optional[float] = ..., chunk_end_s: _Optional[float] = ..., dropped: _Optional[bool] = ..., model_id: _Optional[str] = ...) -> None: ...
