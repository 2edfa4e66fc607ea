"""gRPC plumbing shared by the servicers: statuses, field errors, checked method handlers.

Validation code raises :class:`Failure` (or :class:`FieldError` for INVALID_ARGUMENT with
a ``google.rpc.BadRequest`` naming the field); :func:`abort` turns it into the call's
status. Method handlers are registered by :func:`add_service`: request bytes that are not
a valid message get INVALID_ARGUMENT on field ``request`` (grpc would answer UNKNOWN with
a Python exception text), and large unary requests are parsed off the event loop so that
one big glossary never stalls the other calls.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# A status message stays well inside the 8 KiB that grpc allows for trailers; a value the
# caller sent is echoed at most this long (a 100,000-character id would overflow them).
MAX_ECHO_CHARS = 80
MAX_MESSAGE_CHARS = 2000
# Unary requests larger than this are parsed on a worker thread (a 150K-entry glossary
# takes seconds to parse and validate).
PARSE_OFF_LOOP_BYTES = 64 * 1024


def shown(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of a caller's value for a message or a log line: escaped (no newline can
    forge a log line) and cut to ``limit`` characters."""
    text = repr(value)
    if len(text) > limit:
        text = f"{text[: limit - 1]}…({len(str(value))} chars)"
    return text


class Failure(Exception):
    """A call that ends with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FieldError(Failure):
    """INVALID_ARGUMENT naming the field and what it allows."""

    def __init__(self, field: str, description: str):
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}")
        self.field, self.description = field, description


async def abort(context, failure: Failure):
    """End the call with the failure's status; a field error carries a
    ``google.rpc.BadRequest`` naming the field."""
    message = failure.message[:MAX_MESSAGE_CHARS]
    trailing: tuple = ()
    if isinstance(failure, FieldError):
        field, description = failure.field[:MAX_ECHO_CHARS], failure.description
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=field, description=description[:MAX_MESSAGE_CHARS]
                    )
                ]
            )
        )
        message = f"{field}: {description}"[:MAX_MESSAGE_CHARS]
        st = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
        trailing = rpc_status.to_status(st).trailing_metadata
    await context.abort(failure.code, message, trailing_metadata=trailing)


def _parse(cls, data: bytes):
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise FieldError(
            "request", f"not a valid {cls.DESCRIPTOR.full_name} message on the wire ({e})"
        ) from None


def _unary(fn, cls):
    async def handler(data: bytes, context):
        try:
            if len(data) > PARSE_OFF_LOOP_BYTES:
                request = await asyncio.to_thread(_parse, cls, data)
            else:
                request = _parse(cls, data)
        except Failure as f:
            await abort(context, f)
        return await fn(request, context)

    return handler


def _bidi(fn, cls):
    async def handler(request_iterator, context):
        async def parsed():
            async for data in request_iterator:
                try:
                    yield _parse(cls, data)
                except Failure as f:
                    await abort(context, f)

        async for resp in fn(parsed(), context):
            yield resp

    return handler


def add_service(server, pb2_module, service: str, servicer) -> None:
    """Register ``servicer`` for ``service`` like the generated ``add_*_to_server``, with
    requests parsed by :func:`_parse` (see the module docstring)."""
    desc = pb2_module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        cls = GetMessageClass(m.input_type)
        out = GetMessageClass(m.output_type).SerializeToString
        fn = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:
            h = grpc.stream_stream_rpc_method_handler(_bidi(fn, cls), None, out)
        elif not m.client_streaming and not m.server_streaming:
            h = grpc.unary_unary_rpc_method_handler(_unary(fn, cls), None, out)
        else:  # not used by rasst.v1; add a checked wrapper before adding such a method
            raise NotImplementedError(f"{m.full_name}: only unary and bidi methods are wrapped")
        handlers[m.name] = h
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(desc.full_name, handlers),)
    )
