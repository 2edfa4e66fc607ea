"""TLS end to end, admin auth, and fuzzing of parsers and request validation."""

from __future__ import annotations

import subprocess

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasst.client.api import Client
from rasst.retriever.audio import AudioError, decode_pcm
from rasst.retriever.glossary import GlossaryError, parse

from rasst.v1 import retrieval_pb2, retrieval_pb2_grpc


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


def test_tls_end_to_end(live_server, tiny_checkpoint, tls_files, tts):
    cert, key = tls_files
    s = live_server(
        checkpoint=str(tiny_checkpoint), tls_cert=str(cert), tls_key=str(key), demo_glossary=True
    )
    c = Client(f"localhost:{s.port}", "secret", tls_ca=str(cert))
    assert [g.glossary_id for g in c.list_glossaries()] == ["demo"]
    r = c.retrieve(tts("semantic parsing"), "demo", "de", threshold=-1.0)
    assert len(r.hits) == 10
    c.close()
    # A plaintext client cannot talk to the TLS port.
    plain = Client(f"127.0.0.1:{s.port}", "secret", timeout=5)
    from rasst.client.api import RasstError

    with pytest.raises(RasstError) as e:
        plain.list_glossaries()
    assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    plain.close()


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["jsonl", "csv", "tsv", "acl_json", "tbx"]))
def test_parsers_never_crash_on_bytes(content, fmt):
    try:
        entries = parse(content, fmt)
    except GlossaryError:
        return
    assert all(e.term and e.id for e in entries)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["id", "term", "translations", "aliases", "x"]), json_values, max_size=5
        ),
        max_size=5,
    )
)
def test_jsonl_parser_on_structured_garbage(rows):
    import json

    text = "\n".join(json.dumps(r) for r in rows)
    try:
        parse(text, "jsonl")
    except GlossaryError:
        pass


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=12),
        st.dictionaries(
            st.sampled_from(["term", "target_translations", "full_form"]), json_values, max_size=3
        ),
        max_size=5,
    )
)
def test_acl_parser_on_structured_garbage(data):
    import json

    try:
        parse(json.dumps(data), "acl_json")
    except GlossaryError:
        pass


@FUZZ
@given(st.lists(st.lists(st.text(max_size=8), min_size=1, max_size=4), min_size=1, max_size=5))
def test_csv_parser_on_cells(rows):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "term", "de"], *rows])
    try:
        parse(buf.getvalue(), "csv")
    except GlossaryError:
        pass


@FUZZ
@given(st.binary(max_size=64), st.sampled_from(["s16le", "f32le", "x"]), st.integers(-10, 200_000))
def test_pcm_validation_never_crashes(pcm, enc, rate):
    try:
        x = decode_pcm(pcm, enc, rate)
    except AudioError as e:
        assert e.field.startswith("audio")
        return
    assert x.dtype == np.float32 and np.isfinite(x).all()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    pcm=st.binary(max_size=4000),
    enc=st.integers(0, 3),
    rate=st.integers(-1, 100_000),
    top_k=st.integers(-5, 200),
    thr=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    lang=st.sampled_from(["de", "", "fr", "zh"]),
    gid=st.sampled_from(["demo", "", "nope", "../x"]),
)
def test_retrieve_validation_fuzz(demo_server, pcm, enc, rate, top_k, thr, lang, gid):
    """Any request gets OK or a documented status; the server never fails internally."""
    req = retrieval_pb2.RetrieveRequest(
        glossary_id=gid,
        target_lang=lang,
        top_k=top_k,
        audio=retrieval_pb2.Audio(pcm=pcm, encoding=enc, sample_rate_hz=rate),
    )
    if thr is not None:
        req.score_threshold = thr
    from rasst.v1 import retrieval_pb2_grpc

    with grpc.insecure_channel(demo_server.address) as ch:
        try:
            retrieval_pb2_grpc.TermRetrievalStub(ch).Retrieve(req, timeout=30)
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
                e.details()
            )


_WIRE_METHODS = [
    "/rasst.v1.TermRetrieval/Retrieve",
    "/rasst.v1.GlossaryAdmin/GetGlossary",
    "/rasst.v1.GlossaryAdmin/ListGlossaries",
    "/rasst.v1.GlossaryAdmin/GetStats",
]
# Random bytes are sometimes a valid message; then ordinary validation answers.
_WIRE_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(junk=st.binary(max_size=256), method=st.sampled_from(_WIRE_METHODS))
def test_protobuf_garbage_on_the_wire(demo_server, junk, method):
    """Raw bytes sent as a request message: a documented status, never UNKNOWN/INTERNAL."""
    with grpc.insecure_channel(demo_server.address) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(junk, timeout=30, metadata=(("authorization", "Bearer secret"),))
        except grpc.RpcError as e:
            assert e.code() in _WIRE_CODES, (e.code(), e.details())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames=st.lists(st.binary(max_size=128), min_size=1, max_size=4))
def test_protobuf_garbage_in_a_stream(demo_server, frames):
    """Garbage frames in StreamRetrieve end that stream with INVALID_ARGUMENT (or a
    validation status when the bytes happen to parse); other sessions are unaffected."""
    with grpc.insecure_channel(demo_server.address) as ch:
        call = ch.stream_stream(
            "/rasst.v1.TermRetrieval/StreamRetrieve",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            list(call(iter(frames), timeout=30))
        except grpc.RpcError as e:
            assert e.code() in _WIRE_CODES, (e.code(), e.details())


def test_undecodable_request_names_the_field_and_the_server_keeps_serving(demo_server, tts):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(demo_server.address) as ch:
        call = ch.unary_unary(
            "/rasst.v1.TermRetrieval/Retrieve", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as ei:
            call(b"\xff\xff\xff", timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rasst.v1.RetrieveRequest" in ei.value.details()
    st_ = rpc_status.from_call(ei.value)
    br = error_details_pb2.BadRequest()
    assert st_.details[0].Unpack(br) and br.field_violations[0].field == "request"
    c = Client(demo_server.address)
    assert c.retrieve(tts("the bleu score"), "demo", "de").glossary_version >= 1
    c.close()


# --------------------------------------------------------------------------- admin token


def _admin_call(address: str, method: str, request, token_header: str | None):
    from rasst.v1 import admin_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        stub = admin_pb2_grpc.GlossaryAdminStub(ch)
        md = () if token_header is None else (("authorization", token_header),)
        return getattr(stub, method)(request, metadata=md, timeout=30)


@pytest.mark.parametrize("blank", ["", "  \n", "\n\n"])
def test_a_blank_token_file_never_authorizes(live_server, tiny_checkpoint, tmp_path, blank):
    """A crash can leave {data_dir}/admin_token empty; an empty bearer must not match it."""
    import os
    import stat

    from rasst.v1 import admin_pb2

    (tmp_path / "admin_token").write_text(blank)
    s = live_server(checkpoint=str(tiny_checkpoint), data_dir=str(tmp_path), admin_token="")
    for header in ("Bearer", "bearer", "Bearer  "):
        for method, req in (
            ("GetStats", admin_pb2.GetStatsRequest()),
            (
                "PutGlossary",
                admin_pb2.PutGlossaryRequest(
                    glossary_id="x",
                    format=admin_pb2.GLOSSARY_FORMAT_CSV,
                    content=b"term,de\nalpha,Alpha\n",
                ),
            ),
        ):
            with pytest.raises(grpc.RpcError) as e:
                _admin_call(s.address, method, req, header)
            assert e.value.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            )
    token = (tmp_path / "admin_token").read_text().strip()
    assert len(token) >= 24, "a fresh token replaces the blank file"
    assert stat.S_IMODE(os.stat(tmp_path / "admin_token").st_mode) == 0o600
    st = _admin_call(s.address, "GetStats", admin_pb2.GetStatsRequest(), f"Bearer {token}")
    assert st.model_id
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_unreadable_token_file_stops_the_start(tiny_checkpoint, tmp_path):
    import asyncio

    from rasst.retriever.config import ServerConfig
    from rasst.retriever.server import create_server

    (tmp_path / "admin_token").mkdir()  # exists, cannot be read as a file
    cfg = ServerConfig(
        address="127.0.0.1:0", checkpoint=str(tiny_checkpoint), data_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="cannot read the admin token file"):
        asyncio.run(create_server(cfg))


def test_a_blank_configured_token_is_refused():
    from rasst.retriever.config import ServerConfig, validate_config

    with pytest.raises(ValueError, match="admin_token is blank"):
        validate_config(ServerConfig(admin_token="   "))


def test_serve_with_a_missing_checkpoint_writes_nothing(tmp_path):
    from rasst.retriever.server import main

    data = tmp_path / "data"
    rc = main(
        [
            "--checkpoint",
            str(tmp_path / "nope"),
            "--data-dir",
            str(data),
            "--address",
            "127.0.0.1:0",
        ]
    )
    assert rc == 1
    assert not data.exists()


def test_the_token_is_checked_before_the_request_is_parsed(demo_server):
    """Unparseable bytes from a caller without a token: UNAUTHENTICATED, not a parse error
    (the server must not parse, let alone validate, an unauthenticated glossary)."""
    with grpc.insecure_channel(demo_server.address) as ch:
        call = ch.unary_unary(
            "/rasst.v1.GlossaryAdmin/PutGlossary",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff" * 1_000_000, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff" * 1000, timeout=30, metadata=(("authorization", "Bearer wrong"),))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "content,fmt,field",
    [
        (b'{"term": ' * 50_000 + b"1" + b"}" * 50_000, "JSONL", "content line 1"),
        (b'{"term": "x", "n": ' + b"9" * 5000 + b"}", "JSONL", "content line 1"),
        (b'{"term": "a\\ud800"}', "JSONL", "content line 1.term"),
        (b'{"a": {"term": "x", "target_translations": {"de": "\\udfff"}}}', "ACL_JSON", None),
        (
            "<?xml version='1.0'?><!DOCTYPE m [<!ENTITY a 'b'>]><m>&a;</m>".encode("utf-16-le"),
            "TBX",
            "content",
        ),
    ],
)
def test_hostile_glossary_files_are_invalid_argument(demo_server, content, fmt, field):
    from rasst.client.api import InvalidArgument

    from rasst.v1 import admin_pb2

    c = Client(demo_server.address, "secret")
    with pytest.raises(InvalidArgument) as e:
        c._call(
            c.admin.PutGlossary,
            admin_pb2.PutGlossaryRequest(
                glossary_id="hostile",
                content=content,
                format=admin_pb2.GlossaryFormat.Value(f"GLOSSARY_FORMAT_{fmt}"),
            ),
            admin=True,
        )
    if field:
        assert e.value.field_violations[0][0] == field
    assert "Traceback" not in str(e.value) and len(str(e.value)) < 1000
    c.close()


def test_a_session_id_cannot_forge_a_log_line(demo_server, tts, caplog, session_config):
    import logging

    from rasst.pcm import to_s16le

    caplog.set_level(logging.INFO, logger="rasst.retriever.retrieval")
    forged = "x\n2026-01-01 INFO rasst.retriever.admin: admin token: accepted"

    def reqs():
        yield session_config(session_id=forged)
        yield retrieval_pb2.StreamRetrieveRequest(
            chunk=retrieval_pb2.AudioChunk(sequence=0, pcm=to_s16le(tts("hello")))
        )

    with grpc.insecure_channel(demo_server.address) as ch:
        list(retrieval_pb2_grpc.TermRetrievalStub(ch).StreamRetrieve(reqs(), timeout=60))
    lines = [r.getMessage() for r in caplog.records if "session" in r.getMessage()]
    assert lines and all("\n" not in m for m in lines)
