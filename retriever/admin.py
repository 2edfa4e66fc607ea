"""The control plane: ``rasst.v1.GlossaryAdmin``, its bearer-token check and the token.

Authentication is a server interceptor (:class:`AdminAuth`): it runs before a request's
bytes are parsed, so an unauthenticated caller never makes the server parse a large
glossary, and no admin method can forget the check.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import secrets
import time
from pathlib import Path

import grpc

from rasst.v1 import admin_pb2, admin_pb2_grpc

from .config import ServerConfig
from .engine import DeadlineExpired, SwitchFailed
from .glossary import (
    GlossaryError,
    VersionConflict,
    atomic_write,
    make_entry,
    parse,
    validate_glossary_id,
)
from .metrics import label_values
from .model import default_checkpoint_dir
from .rpc import Failure, FieldError, abort, shown
from .state import SERVICE_NAMES, ServerState

logger = logging.getLogger(__name__)

ADMIN_SERVICE = SERVICE_NAMES[1]
ADMIN_TOKEN_FILE = "admin_token"
FORMATS = {
    admin_pb2.GLOSSARY_FORMAT_JSONL: "jsonl",
    admin_pb2.GLOSSARY_FORMAT_CSV: "csv",
    admin_pb2.GLOSSARY_FORMAT_TSV: "tsv",
    admin_pb2.GLOSSARY_FORMAT_ACL_JSON: "acl_json",
    admin_pb2.GLOSSARY_FORMAT_TBX: "tbx",
}
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000  # 10,000 entries of the largest size still fit the 8 MiB default


# --------------------------------------------------------------------------- token


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
    atomic_write(p, (token + "\n").encode())
    logger.warning("admin token: none configured, generated one in %s", p)
    return token


class AdminAuth(grpc.aio.ServerInterceptor):
    """Every GlossaryAdmin call needs ``authorization: Bearer <token>``, compared in constant
    time; an empty token never matches."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("the admin token must not be empty")
        self._token = token.encode()

    @staticmethod
    def _deny(code: grpc.StatusCode, message: str):
        async def deny(request, context):
            await context.abort(code, message)

        # No deserializer: the request's bytes are never parsed.
        return grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{ADMIN_SERVICE}/"):
            return await continuation(details)
        value = ""
        for key, v in details.invocation_metadata or ():
            if key == "authorization":
                value = v if isinstance(v, str) else v.decode("latin-1")
        if not value:
            return self._deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "admin calls need metadata 'authorization: Bearer <token>'",
            )
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if (
            scheme.lower() != "bearer"
            or not token
            or not hmac.compare_digest(token.encode(), self._token)
        ):
            return self._deny(grpc.StatusCode.PERMISSION_DENIED, "admin token is not valid")
        return await continuation(details)


# --------------------------------------------------------------------------- messages


def _glossary_pb(g, entries=()) -> admin_pb2.Glossary:
    pb = admin_pb2.Glossary(
        name=f"glossaries/{g.glossary_id}",
        glossary_id=g.glossary_id,
        version=g.version,
        entry_count=len(g.entries),
        languages=g.languages,
        update_time=g.update_time,
    )
    pb.entries.extend(
        admin_pb2.GlossaryEntry(
            id=e.id, term=e.term, translations=e.translations, aliases=list(e.aliases)
        )
        for e in entries
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


def _warnings(g) -> list[str]:
    """What a user should know about a version the server accepted."""
    bare = [e.id for e in g.entries if not e.translations]
    if not bare:
        return []
    some = ", ".join(shown(i, 40) for i in bare[:3]) + (", ..." if len(bare) > 3 else "")
    return [
        f"{len(bare)} of {len(g.entries)} entries have no translations ({some}): "
        "their hints carry an empty translation"
    ]


def _approximate_warning(index, exact_max: int) -> str | None:
    """What a user should know about a version's search index (None: searched exactly,
    or held by a cluster's replicas, not this process)."""
    if index is None or not index.approximate:
        return None
    return (
        f"{index.ntotal:,} index rows (terms, aliases, second pronunciations) are more "
        f"than exact_max ({exact_max:,}): searched approximately (HNSW), which misses "
        "some right entries; raise exact_max to search them exactly"
    )


def _page_token(gid: str, version: int, offset: int) -> str:
    raw = f"{version}:{offset}:{gid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: str, gid: str) -> tuple[int, int]:
    """(version, offset) of a token issued for ``gid``; raises FieldError."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, offset, token_gid = raw.split(":", 2)
        version, offset = int(version), int(offset)
    except (ValueError, UnicodeDecodeError):
        raise FieldError("page_token", "not a token this server issued") from None
    if token_gid != gid or version < 1 or offset < 1:
        raise FieldError("page_token", "not a token issued for this glossary")
    return version, offset


def resolve_checkpoint(path: str) -> Path:
    if path == "default":
        return default_checkpoint_dir()
    return Path(path).expanduser()


# --------------------------------------------------------------------------- servicer


def _statuses(method):
    """An admin method whose GlossaryError and Failure end the call with their status."""

    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            return await method(self, request, context)
        except GlossaryError as e:
            await abort(context, FieldError(e.field, e.message))
        except Failure as f:
            await abort(context, f)

    return handler


class GlossaryAdminServicer(admin_pb2_grpc.GlossaryAdminServicer):
    """Admin calls; the token was checked by :class:`AdminAuth` before any of these runs."""

    def __init__(self, state: ServerState):
        self.s = state

    @staticmethod
    def _deadline(context) -> float | None:
        """The call's deadline on ``time.monotonic``'s clock, or None."""
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    async def _commit(self, context, g):
        """Embed and persist a new version, unless the caller's deadline passes first:
        a call that has timed out for its caller commits nothing."""
        try:
            await asyncio.to_thread(self.s.engine.commit_glossary, g, self._deadline(context))
        except DeadlineExpired:
            raise Failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the deadline passed before glossary {g.glossary_id} version {g.version} "
                "was committed; nothing changed",
            ) from None
        except OSError as e:
            raise Failure(
                grpc.StatusCode.INTERNAL, f"could not persist glossary {g.glossary_id}: {e}"
            ) from None
        except SwitchFailed as e:
            raise Failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"glossary {g.glossary_id} version {g.version} was not committed: {e}; "
                "nothing changed",
            ) from None
        self.s.refresh_glossary_metrics()
        logger.info(
            "glossary %s committed at version %d (%d entries)",
            g.glossary_id,
            g.version,
            len(g.entries),
        )
        served = self.s.engine.snapshot.glossaries.get(g.glossary_id)
        approximate = _approximate_warning(
            getattr(served, "index", None), self.s.engine.cfg.exact_max
        )
        if approximate:
            logger.warning("glossary %s version %d: %s", g.glossary_id, g.version, approximate)
        pb = _glossary_pb(g)
        pb.warnings.extend(_warnings(g) + ([approximate] if approximate else []))
        return pb

    @_statuses
    async def PutGlossary(self, request, context):
        gid = validate_glossary_id(request.glossary_id)
        if request.content:
            fmt = FORMATS.get(request.format)
            if fmt is None:
                raise FieldError(
                    "format", "required with content: JSONL, CSV, TSV, ACL_JSON or TBX"
                )
            entries = await asyncio.to_thread(parse, request.content, fmt)
        else:
            entries = await asyncio.to_thread(_entries_from_pb, request.entries, "entries")
        if not entries:
            raise FieldError("entries", "a glossary needs at least one entry")
        async with self.s.admin_lock:
            g = await asyncio.to_thread(self.s.store.prepare_put, gid, entries)
            return await self._commit(context, g)

    @_statuses
    async def PatchGlossary(self, request, context):
        gid = validate_glossary_id(request.glossary_id)
        upserts = await asyncio.to_thread(_entries_from_pb, request.upserts, "upserts")
        async with self.s.admin_lock:
            try:
                g = self.s.store.prepare_patch(
                    gid, upserts, list(request.delete_ids), request.expected_version
                )
            except KeyError:
                raise Failure(
                    grpc.StatusCode.NOT_FOUND, f"glossary_id: no glossary {gid}"
                ) from None
            except VersionConflict as e:
                raise Failure(grpc.StatusCode.ABORTED, str(e)) from None
            except LookupError as e:
                raise Failure(grpc.StatusCode.NOT_FOUND, str(e)) from None
            if not g.entries:
                raise FieldError(
                    "delete_ids",
                    "the patch would leave the glossary empty; a glossary needs at least "
                    "one entry (DeleteGlossary removes it)",
                )
            return await self._commit(context, g)

    @_statuses
    async def GetGlossary(self, request, context):
        gid = validate_glossary_id(request.glossary_id)
        g = self.s.store.get(gid)
        if g is None:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"glossary_id: no glossary {gid}")
        if not request.include_entries:
            return _glossary_pb(g)
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise FieldError(
                "page_size",
                f"must be in [1, {MAX_PAGE_SIZE}] (0 = {DEFAULT_PAGE_SIZE}), "
                f"got {request.page_size}",
            )
        offset = 0
        if request.page_token:
            version, offset = _read_page_token(request.page_token, gid)
            if version != g.version:
                raise Failure(
                    grpc.StatusCode.ABORTED,
                    f"glossary {gid} changed from version {version} to {g.version} since "
                    "the page token was issued; start again from the first page",
                )
        pb = _glossary_pb(g, g.entries[offset : offset + size])
        if offset + size < len(g.entries):
            pb.next_page_token = _page_token(gid, g.version, offset + size)
        return pb

    async def ListGlossaries(self, request, context):
        return admin_pb2.ListGlossariesResponse(
            glossaries=[_glossary_pb(g) for g in self.s.store.list()]
        )

    @_statuses
    async def DeleteGlossary(self, request, context):
        gid = validate_glossary_id(request.glossary_id)
        async with self.s.admin_lock:
            try:
                ok = await asyncio.to_thread(self.s.engine.delete_glossary, gid)
            except SwitchFailed as e:
                raise Failure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"glossary {gid} was not deleted: {e}; nothing changed",
                ) from None
        if not ok:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"glossary_id: no glossary {gid}")
        for gauge in (self.s.metrics.glossary_entries, self.s.metrics.glossary_version):
            if gid in label_values(gauge):
                gauge.remove(gid)
        return admin_pb2.DeleteGlossaryResponse()

    async def ReloadModel(self, request, context):
        path = request.checkpoint_path
        if not path:
            await abort(
                context,
                FieldError("checkpoint_path", "required: a checkpoint directory on the server"),
            )
        t0 = time.monotonic()
        async with self.s.admin_lock:
            try:
                mid, n = await asyncio.to_thread(self.s.engine.load_model, resolve_checkpoint(path))
            except (FileNotFoundError, ValueError) as e:
                await abort(context, FieldError("checkpoint_path", str(e)))
            except RuntimeError as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"checkpoint_path: {e}")
        await self.s.set_serving()
        return admin_pb2.ReloadModelResponse(
            model_id=mid, glossaries_reembedded=n, took_ms=(time.monotonic() - t0) * 1e3
        )

    async def GetStats(self, request, context):
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
