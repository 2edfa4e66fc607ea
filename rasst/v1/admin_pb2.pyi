from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GlossaryFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GLOSSARY_FORMAT_UNSPECIFIED: _ClassVar[GlossaryFormat]
    GLOSSARY_FORMAT_JSONL: _ClassVar[GlossaryFormat]
    GLOSSARY_FORMAT_CSV: _ClassVar[GlossaryFormat]
    GLOSSARY_FORMAT_TSV: _ClassVar[GlossaryFormat]
    GLOSSARY_FORMAT_ACL_JSON: _ClassVar[GlossaryFormat]
    GLOSSARY_FORMAT_TBX: _ClassVar[GlossaryFormat]
GLOSSARY_FORMAT_UNSPECIFIED: GlossaryFormat
GLOSSARY_FORMAT_JSONL: GlossaryFormat
GLOSSARY_FORMAT_CSV: GlossaryFormat
GLOSSARY_FORMAT_TSV: GlossaryFormat
GLOSSARY_FORMAT_ACL_JSON: GlossaryFormat
GLOSSARY_FORMAT_TBX: GlossaryFormat

class GlossaryEntry(_message.Message):
    __slots__ = ("id", "term", "translations", "aliases")
    class TranslationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TRANSLATIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    id: str
    term: str
    translations: _containers.ScalarMap[str, str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., term: _Optional[str] = ..., translations: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class Glossary(_message.Message):
    __slots__ = ("name", "glossary_id", "version", "entry_count", "languages", "entries", "update_time", "next_page_token", "warnings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    glossary_id: str
    version: int
    entry_count: int
    languages: _containers.RepeatedScalarFieldContainer[str]
    entries: _containers.RepeatedCompositeFieldContainer[GlossaryEntry]
    update_time: float
    next_page_token: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., glossary_id: _Optional[str] = ..., version: _Optional[int] = ..., entry_count: _Optional[int] = ..., languages: _Optional[_Iterable[str]] = ..., entries: _Optional[_Iterable[_Union[GlossaryEntry, _Mapping]]] = ..., update_time: _Optional[float] = ..., next_page_token: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class PutGlossaryRequest(_message.Message):
    __slots__ = ("glossary_id", "entries", "content", "format")
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    glossary_id: str
    entries: _containers.RepeatedCompositeFieldContainer[GlossaryEntry]
    content: bytes
    format: GlossaryFormat
    def __init__(self, glossary_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[GlossaryEntry, _Mapping]]] = ..., content: _Optional[bytes] = ..., format: _Optional[_Union[GlossaryFormat, str]] = ...) -> None: ...

class PatchGlossaryRequest(_message.Message):
    __slots__ = ("glossary_id", "upserts", "delete_ids", "expected_version")
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    DELETE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    glossary_id: str
    upserts: _containers.RepeatedCompositeFieldContainer[GlossaryEntry]
    delete_ids: _containers.RepeatedScalarFieldContainer[str]
    expected_version: int
    def __init__(self, glossary_id: _Optional[str] = ..., upserts: _Optional[_Iterable[_Union[GlossaryEntry, _Mapping]]] = ..., delete_ids: _Optional[_Iterable[str]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class GetGlossaryRequest(_message.Message):
    __slots__ = ("glossary_id", "include_entries", "page_size", "page_token")
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    glossary_id: str
    include_entries: bool
    page_size: int
    page_token: str
    def __init__(self, glossary_id: _Optional[str] = ..., include_entries: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGlossariesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGlossariesResponse(_message.Message):
    __slots__ = ("glossaries",)
    GLOSSARIES_FIELD_NUMBER: _ClassVar[int]
    glossaries: _containers.RepeatedCompositeFieldContainer[Glossary]
    def __init__(self, glossaries: _Optional[_Iterable[_Union[Glossary, _Mapping]]] = ...) -> None: ...

class DeleteGlossaryRequest(_message.Message):
    __slots__ = ("glossary_id",)
    GLOSSARY_ID_FIELD_NUMBER: _ClassVar[int]
    glossary_id: str
    def __init__(self, glossary_id: _Optional[str] = ...) -> None: ...

class DeleteGlossaryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ("checkpoint_path",)
    CHECKPOINT_PATH_FIELD_NUMBER: _ClassVar[int]
    checkpoint_path: str
    def __init__(self, checkpoint_path: _Optional[str] = ...) -> None: ...

class ReloadModelResponse(_message.Message):
    __slots__ = ("model_id", "glossaries_reembedded", "took_ms")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    GLOSSARIES_REEMBEDDED_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    glossaries_reembedded: int
    took_ms: float
    def __init__(self, model_id: _Optional[str] = ..., glossaries_reembedded: _Optional[int] = ..., took_ms: _Optional[float] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stats(_message.Message):
    __slots__ = ("model_id", "active_sessions", "requests_total", "dropped_total", "glossaries", "queue_depth", "uptime_s", "index_device", "encoder_device", "encoder_workers", "encoder_threads", "precision")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GLOSSARIES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    INDEX_DEVICE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_THREADS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    active_sessions: int
    requests_total: int
    dropped_total: int
    glossaries: _containers.RepeatedCompositeFieldContainer[Glossary]
    queue_depth: int
    uptime_s: float
    index_device: str
    encoder_device: str
    encoder_workers: int
    encoder_threads: int
    precision: str
    def __init__(self, model_id: _Optional[str] = ..., active_sessions: _Optional[int] = ..., requests_total: _Optional[int] = ..., dropped_total: _Optional[int] = ..., glossaries: _Optional[_Iterable[_Union[Glossary, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., uptime_s: _Optional[float] = ..., index_device: _Optional[str] = ..., encoder_device: _Optional[str] = ..., encoder_workers: _Optional[int] = ..., encoder_threads: _Optional[int] = ..., precision: _Optional[str] = ...) -> None: ...
