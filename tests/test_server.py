"""The retrieval server through a real channel on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rasst.client.api import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RasstError,
    Session,
    SessionOptions,
    Unauthenticated,
    make_channel,
)

from rasst.v1 import admin_pb2, retrieval_pb2, retrieval_pb2_grpc

TOKEN = "secret"


def _pcm(x: np.ndarray) -> bytes:
    from rasst.pcm import to_s16le

    return to_s16le(x)


def _stream(address: str, chunks: list[bytes], **cfg) -> list:
    """Run one StreamRetrieve session synchronously; return the responses."""
    from conftest import config_request

    def reqs():
        yield config_request(**cfg)
        for i, c in enumerate(chunks):
            yield retrieval_pb2.StreamRetrieveRequest(
                chunk=retrieval_pb2.AudioChunk(sequence=cfg.get("first_sequence", 0) + i, pcm=c)
            )

    with grpc.insecure_channel(address) as ch:
        return list(retrieval_pb2_grpc.TermRetrievalStub(ch).StreamRetrieve(reqs(), timeout=60))


def _chunks(x: np.ndarray, chunk_s: float = 0.96) -> list[bytes]:
    hop = int(chunk_s * 16000)
    return [_pcm(x[i : i + hop]) for i in range(0, len(x), hop)]


# --------------------------------------------------------------------------- contract


def test_lookback_buffer_serves_lookback_then_unsearched_audio_as_a_view():
    from rasst.retriever.session import Lookback

    keep, chunk = 300, 100
    lb = Lookback(keep, chunk)
    rng = np.random.default_rng(0)
    heard = np.zeros(0, np.float32)
    searched = 0  # samples of heard already handed out
    # Chunks of uneven sizes, enough for the buffer to move its look-back many times; some
    # are taken at once, some held and taken with the next ones (as tiny chunks are).
    sizes = [100, 100, 37, 400, 1, 100, 250, 100, 399, 100, 100, 100, 5, 400, 100] * 3
    for i, n in enumerate(sizes):
        x = rng.standard_normal(n).astype(np.float32)
        lb.push(x)
        heard = np.concatenate([heard, x])
        if n < 10 and i + 1 < len(sizes):
            continue  # held
        clip, prev = lb.take()
        assert prev == min(searched, keep)
        np.testing.assert_array_equal(clip, heard[searched - prev :])
        assert np.shares_memory(clip, lb.buf)  # no copy per chunk
        searched = len(heard)
    assert len(lb.buf) >= keep + 400  # grew for the 400-sample chunks


def test_without_model_answers_failed_precondition_and_not_serving(live_server, tts):
    s = live_server(checkpoint="none")
    c = Client(s.address, TOKEN)
    with pytest.raises(FailedPrecondition, match="no model is loaded"):
        c.retrieve(tts("hello"), "demo", "de")
    with grpc.insecure_channel(s.address) as ch:
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
    assert st.status == health_pb2.HealthCheckResponse.NOT_SERVING
    c.close()


def test_reflection_lists_services_and_health(demo_server):
    with grpc.insecure_channel(demo_server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in resp.list_services_response.service}
        st = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="rasst.v1.TermRetrieval")
        )
    assert {"rasst.v1.TermRetrieval", "rasst.v1.GlossaryAdmin", "grpc.health.v1.Health"} <= names
    assert st.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- retrieval


def test_unary_retrieve_finds_the_spoken_term(demo_server, tts):
    c = Client(demo_server.address)
    x = tts("today we talk about the attention mechanism in more detail")
    r = c.retrieve(x, "demo", "de", top_k=10)
    terms = [h.term for h in r.hits]
    assert "attention mechanism" in terms
    hit = r.hits[terms.index("attention mechanism")]
    assert hit.translation == "Aufmerksamkeitsmechanismus"
    assert 0 <= hit.start_s < hit.end_s <= r.audio_duration_s + 1e-6
    assert r.glossary_version >= 1 and r.timings.total_ms > 0
    c.close()


def test_streaming_session_returns_the_spoken_term(demo_server, tts):
    x = np.concatenate(
        [tts("in this talk we study"), tts("semantic parsing"), tts("for everyone here today")]
    )
    responses = _stream(demo_server.address, _chunks(x))
    assert [r.sequence for r in responses] == list(range(len(_chunks(x))))
    found = [h for r in responses for h in r.hits if h.term == "semantic parsing"]
    assert found, [[h.term for h in r.hits] for r in responses]
    assert all(r.chunk_end_s > r.chunk_start_s for r in responses)
    assert all(r.timings.total_ms >= r.timings.encode_ms for r in responses)


def test_stream_resumes_with_sequence_and_clock(demo_server, tts):
    x = tts("the bleu score for machine translation")
    responses = _stream(demo_server.address, _chunks(x), first_sequence=7, stream_offset_s=100.0)
    assert responses[0].sequence == 7 and abs(responses[0].chunk_start_s - 100.0) < 1e-6
    assert all(h.start_s >= 100.0 - 1.92 - 1e-6 for r in responses for h in r.hits)


def test_reload_during_active_stream_loses_no_response(demo_server, default_checkpoint, tts):
    """Model reloads and glossary patches while a session streams: every chunk answered, in order."""
    admin = Client(demo_server.address, TOKEN)
    x = np.concatenate([tts("we use data augmentation for named entity recognition")] * 3)
    chunks = _chunks(x, 0.5)

    async def run():
        channel = make_channel(demo_server.address)
        got = []
        session = await Session(
            channel,
            SessionOptions("demo", "de", chunk_s=0.5, max_in_flight=2),
            lambda r, t: got.append(r),
        ).start()
        versions = set()
        for i, c in enumerate(chunks):
            await session.send(np.frombuffer(c, "<i2").astype(np.float32) / 32768)
            if i == 2:
                await asyncio.to_thread(admin.reload_model, str(default_checkpoint))
            if i in (3, 5):
                g = await asyncio.to_thread(
                    admin.patch_glossary,
                    "demo",
                    [{"id": f"extra{i}", "term": f"extra term {i}", "translations": {"de": "x"}}],
                )
                versions.add(g.version)
        await session.close()
        await channel.close()
        return got, versions

    got, versions = asyncio.run(run())
    assert [r.sequence for r in got] == list(range(len(chunks)))
    assert not any(r.dropped for r in got)
    assert got[-1].glossary_version == max(versions)
    admin.patch_glossary("demo", delete_ids=["extra3", "extra5"])
    admin.close()


# --------------------------------------------------------------------------- admin


def test_admin_requires_the_token(demo_server):
    for token, err in ((None, Unauthenticated), ("wrong", PermissionDenied)):
        c = Client(demo_server.address, token)
        with pytest.raises(err):
            c.list_glossaries()
        with pytest.raises(err):
            c.reload_model("/tmp")
        c.close()
    assert [g.glossary_id for g in Client(demo_server.address, TOKEN).list_glossaries()] == ["demo"]


def test_stats_report_the_engine(demo_server, tts):
    from rasst.retriever.config import resolve_workers

    c = Client(demo_server.address, TOKEN)
    before = c.stats()
    c.retrieve(tts("semantic parsing"), "demo", "de")
    st = c.stats()
    assert st.model_id and st.requests_total == before.requests_total + 1
    assert st.encoder_device == demo_server.state.engine.cfg.device
    assert st.encoder_workers == resolve_workers(0, st.encoder_device) >= 1
    assert (st.encoder_threads, st.precision) == (1, "int8")
    assert [g.glossary_id for g in st.glossaries] == ["demo"]
    c.close()


def test_glossary_crud_and_versions(demo_server, tts):
    c = Client(demo_server.address, TOKEN)
    g = c.put_glossary(
        "t1",
        [
            {
                "id": "a",
                "term": "semantic parsing",
                "translations": {"de": "semantisches Parsen", "ja": "意味解析"},
            }
        ],
    )
    assert (g.version, g.entry_count, list(g.languages)) == (1, 1, ["de", "ja"])
    g = c.put_glossary("t1", content=b"term,de\nbleu score,BLEU-Wert\n", fmt="csv")
    assert g.version == 2 and g.entry_count == 1
    g = c.patch_glossary(
        "t1",
        [{"id": "x", "term": "attention mechanism", "translations": {"de": "Aufmerksamkeit"}}],
        expected_version=2,
    )
    assert g.version == 3 and g.entry_count == 2
    full = c.get_glossary("t1", include_entries=True)
    assert {e.term for e in full.entries} == {"bleu score", "attention mechanism"}
    r = c.retrieve(tts("and now the attention mechanism"), "t1", "de", threshold=-1.0)
    assert r.glossary_version == 3 and r.hits[0].term in {"attention mechanism", "bleu score"}
    c.delete_glossary("t1")
    with pytest.raises(NotFound):
        c.get_glossary("t1")
    with pytest.raises(NotFound):
        c.retrieve(tts("hello"), "t1", "de")
    c.close()


# --------------------------------------------------------------------------- bad input


def _retrieve_raw(address, **kw):
    req = retrieval_pb2.RetrieveRequest(**kw)
    with grpc.insecure_channel(address) as ch:
        return retrieval_pb2_grpc.TermRetrievalStub(ch).Retrieve(req, timeout=30)


GOOD = _pcm(np.sin(np.arange(16000) / 10).astype(np.float32) * 0.1)
S16 = retrieval_pb2.AUDIO_ENCODING_S16LE
F32 = retrieval_pb2.AUDIO_ENCODING_F32LE
BAD_UNARY = [
    (
        "empty audio",
        dict(pcm=b"", encoding=S16, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio.pcm",
    ),
    (
        "odd byte count",
        dict(pcm=b"\x00\x01\x02", encoding=S16, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio.pcm",
    ),
    (
        "NaN",
        dict(pcm=np.full(8000, np.nan, "<f4").tobytes(), encoding=F32, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    (
        "Inf",
        dict(pcm=np.full(8000, np.inf, "<f4").tobytes(), encoding=F32, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "Inf",
    ),
    (
        "no encoding",
        dict(pcm=GOOD, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio.encoding",
    ),
    (
        "absurd rate",
        dict(pcm=GOOD, encoding=S16, sample_rate_hz=1_000_000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "sample_rate_hz",
    ),
    (
        "too short",
        dict(pcm=GOOD[:100], encoding=S16, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio.pcm",
    ),
    (
        "too long",
        dict(pcm=np.zeros(16000 * 31, "<i2").tobytes(), encoding=S16, sample_rate_hz=16000),
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio.pcm",
    ),
    (
        "unknown glossary",
        dict(pcm=GOOD, encoding=S16, sample_rate_hz=16000),
        {"glossary_id": "nope"},
        grpc.StatusCode.NOT_FOUND,
        "nope",
    ),
    (
        "unknown language",
        dict(pcm=GOOD, encoding=S16, sample_rate_hz=16000),
        {"target_lang": "fr"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "target_lang",
    ),
    (
        "top_k",
        dict(pcm=GOOD, encoding=S16, sample_rate_hz=16000),
        {"top_k": 1000},
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k",
    ),
    (
        "threshold",
        dict(pcm=GOOD, encoding=S16, sample_rate_hz=16000),
        {"score_threshold": 3.0},
        grpc.StatusCode.INVALID_ARGUMENT,
        "score_threshold",
    ),
    (
        "oversize message",
        dict(pcm=b"\x00" * (9 * 1024 * 1024), encoding=S16, sample_rate_hz=16000),
        {},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
]


@pytest.mark.parametrize("name,audio,extra,code,mention", BAD_UNARY, ids=[b[0] for b in BAD_UNARY])
def test_bad_unary_requests(demo_server, name, audio, extra, code, mention):
    kw = dict(glossary_id="demo", target_lang="de", audio=retrieval_pb2.Audio(**audio))
    kw.update(extra)
    with pytest.raises(grpc.RpcError) as e:
        _retrieve_raw(demo_server.address, **kw)
    assert e.value.code() == code
    assert mention in e.value.details()
    # ... and the server keeps serving others.
    ok = _retrieve_raw(
        demo_server.address,
        glossary_id="demo",
        target_lang="de",
        audio=retrieval_pb2.Audio(pcm=GOOD, encoding=S16, sample_rate_hz=16000),
    )
    assert ok.audio_duration_s == pytest.approx(1.0)


def test_bad_request_carries_field_violations(demo_server):
    c = Client(demo_server.address)
    with pytest.raises(InvalidArgument) as e:
        c.retrieve(np.zeros(16000, np.float32), "demo", "de", top_k=500)
    assert e.value.field_violations[0][0] == "top_k"
    assert "[1, 100]" in e.value.field_violations[0][1]
    c.close()


BAD_STREAM = [
    ("chunk first", None, grpc.StatusCode.INVALID_ARGUMENT, "config"),
    ("chunk_s", {"chunk_s": 9.0}, grpc.StatusCode.INVALID_ARGUMENT, "config.chunk_s"),
    ("lookback", {"lookback_s": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "config.lookback_s"),
    ("rate", {"sample_rate_hz": 100}, grpc.StatusCode.INVALID_ARGUMENT, "config.sample_rate_hz"),
    ("deadline", {"deadline_ms": 100000}, grpc.StatusCode.INVALID_ARGUMENT, "config.deadline_ms"),
    ("glossary", {"glossary_id": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
]


@pytest.mark.parametrize("name,cfg,code,mention", BAD_STREAM, ids=[b[0] for b in BAD_STREAM])
def test_bad_session_configs(demo_server, name, cfg, code, mention):
    config = dict(glossary_id="demo", target_lang="de", encoding=S16, sample_rate_hz=16000)
    if cfg:
        config.update(cfg)

    def reqs():
        if cfg is not None:
            yield retrieval_pb2.StreamRetrieveRequest(config=retrieval_pb2.SessionConfig(**config))
        yield retrieval_pb2.StreamRetrieveRequest(
            chunk=retrieval_pb2.AudioChunk(sequence=0, pcm=GOOD)
        )

    with grpc.insecure_channel(demo_server.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(retrieval_pb2_grpc.TermRetrievalStub(ch).StreamRetrieve(reqs(), timeout=30))
    assert e.value.code() == code and mention in e.value.details()


def test_bad_chunks_in_a_stream(demo_server):
    with pytest.raises(grpc.RpcError) as e:
        _stream_bad_seq(demo_server.address)
    assert (
        e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "chunk.sequence" in e.value.details()
    )
    with pytest.raises(grpc.RpcError) as e:
        _stream(demo_server.address, [np.zeros(16000 * 5, "<i2").tobytes()])
    assert "4 * chunk_s" in e.value.details()


def _stream_bad_seq(address):
    def reqs():
        yield retrieval_pb2.StreamRetrieveRequest(
            config=retrieval_pb2.SessionConfig(
                glossary_id="demo", target_lang="de", encoding=S16, sample_rate_hz=16000
            )
        )
        yield retrieval_pb2.StreamRetrieveRequest(
            chunk=retrieval_pb2.AudioChunk(sequence=0, pcm=GOOD)
        )
        yield retrieval_pb2.StreamRetrieveRequest(
            chunk=retrieval_pb2.AudioChunk(sequence=5, pcm=GOOD)
        )

    with grpc.insecure_channel(address) as ch:
        return list(retrieval_pb2_grpc.TermRetrievalStub(ch).StreamRetrieve(reqs(), timeout=30))


def test_resampled_input_rates(demo_server, tts):
    import soxr

    x = tts("the attention mechanism")
    c = Client(demo_server.address)
    for rate in (8000, 22050, 44100):
        y = soxr.resample(x, 16000, rate)
        r = c.retrieve(y, "demo", "de", sample_rate=rate)
        assert r.audio_duration_s == pytest.approx(len(x) / 16000, abs=0.01)
    c.close()


def test_bad_admin_requests(demo_server):
    c = Client(demo_server.address, TOKEN)
    with pytest.raises(InvalidArgument) as e:
        c.put_glossary("../escape", [{"term": "x"}])
    assert e.value.field_violations[0][0] == "glossary_id"
    with pytest.raises(InvalidArgument) as e:
        c.put_glossary("ok", content=b'{"term": "a"}\n{broken\n', fmt="jsonl")
    assert "content line 2" in e.value.message
    with pytest.raises(InvalidArgument):
        c.put_glossary("ok", [])
    with pytest.raises(NotFound):
        c.patch_glossary("never-created", delete_ids=["a"])
    with pytest.raises(InvalidArgument):
        c.reload_model("/nonexistent/checkpoint")
    assert [g.glossary_id for g in c.list_glossaries()] == ["demo"]
    c.close()


def test_admin_put_rejects_unknown_format(demo_server):
    with grpc.insecure_channel(demo_server.address) as ch:
        from rasst.v1 import admin_pb2_grpc

        stub = admin_pb2_grpc.GlossaryAdminStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.PutGlossary(
                admin_pb2.PutGlossaryRequest(glossary_id="x", content=b"term\na\n"),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
            )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in e.value.details()


def test_config_precedence_and_validation(tmp_path):
    from rasst.retriever.config import load_config

    toml = tmp_path / "rasst.toml"
    toml.write_text('[server]\naddress = "0.0.0.0:7000"\nthreads = 2\nmax_wait_ms = 3.0\n')
    cfg = load_config(
        {"threads": None}, str(toml), env={"RASST_THREADS": "3", "RASST_JSON_LOGS": "true"}
    )
    assert (cfg.address, cfg.threads, cfg.max_wait_ms, cfg.json_logs) == (
        "0.0.0.0:7000",
        3,
        3.0,
        True,
    )
    assert load_config({"threads": 4}, str(toml), env={"RASST_THREADS": "3"}).threads == 4
    for bad, msg in (
        ({"threads": 0}, "threads must be in"),
        ({"tls_cert": "c.pem"}, "together"),
        ({"address": "nohostport"}, "host:port"),
        ({"cluster_min_replicas": 3, "cluster_max_replicas": 2}, "must be >= cluster_min"),
        ({"cluster_name": "a b"}, "cluster_name must be"),
        ({"cluster_replica_gpus": -1}, "cluster_replica_gpus must be in"),
    ):
        with pytest.raises(ValueError, match=msg):
            load_config(bad, None, env={})
    with pytest.raises(ValueError, match="unknown server settings"):
        toml.write_text("[server]\nbogus = 1\n")
        load_config({}, str(toml), env={})


def test_device_setting(live_server, tiny_checkpoint):
    from rasst.retriever.config import cuda_available, load_config

    assert load_config({}, None, env={"RASST_DEVICE": "cpu"}).device == "cpu"
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, got .tpu."):
        load_config({"device": "tpu"}, None, env={})
    # The default, auto, puts the front-end on the GPU only when one is visible.
    s = live_server(checkpoint=str(tiny_checkpoint))
    assert s.state.engine.cfg.device == ("cuda" if cuda_available() else "cpu")
    if not cuda_available():
        with pytest.raises(ValueError, match="neither CTranslate2 nor torch sees a CUDA device"):
            load_config({"device": "cuda"}, None, env={})


def test_serve_cli_rejects_bad_flags():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "rasst", "serve", "--threads", "0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "threads must be in [1, 256]" in r.stderr


def test_rescore_candidates_is_read_checked_and_handed_to_the_engine(live_server, tiny_checkpoint):
    from rasst.retriever.config import load_config

    s = live_server(checkpoint=str(tiny_checkpoint), rescore_candidates=8)
    assert s.state.engine.cfg.rescore_candidates == 8

    cfg = load_config({}, None, env={"RASST_RESCORE_CANDIDATES": "16"})
    assert cfg.rescore_candidates == 16
    with pytest.raises(ValueError, match=r"rescore_candidates must be in \[1, 1024\], got 0"):
        load_config({"rescore_candidates": 0}, None, env={})


def test_prometheus_metrics(live_server, tiny_checkpoint, tts):
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = live_server(checkpoint=str(tiny_checkpoint), metrics_port=port)
    Client(s.address).retrieve(tts("hello there"), "demo", "de")
    chunks = _chunks(tts("in this talk we study semantic parsing for everyone here"))
    assert len(_stream(s.address, chunks)) == len(chunks) >= 2
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'rasst_chunk_latency_seconds_count{rpc="Retrieve"} 1.0' in text
    # A stream's chunks are counted once each, after their answers went out.
    assert f'rasst_chunk_latency_seconds_count{{rpc="StreamRetrieve"}} {len(chunks)}.0' in text
    assert 'rasst_glossary_entries{glossary="demo"} 253.0' in text
    assert "rasst_batch_windows_bucket" in text


def test_precision_int8_and_float32_serve_the_same_term(live_server, default_checkpoint, tts):
    from rasst.retriever.config import load_config
    from rasst.retriever.index import Int8FlatIndex
    from rasst.retriever.model import Int8Linear

    s = live_server(checkpoint=str(default_checkpoint), precision="int8")
    snap = s.state.engine.snapshot
    assert isinstance(snap.head.mlp[0], Int8Linear)
    assert isinstance(snap.glossaries["demo"].index.index, Int8FlatIndex)
    c = Client(s.address)
    r = c.retrieve(tts("today we talk about the attention mechanism in more detail"), "demo", "de")
    assert "attention mechanism" in [h.term for h in r.hits]
    c.close()
    with pytest.raises(ValueError, match="precision must be one of int8, float32, got .int4."):
        load_config({"precision": "int4"}, None, env={})
    # float32 serves the model's own head and a faiss flat index.
    f = live_server(checkpoint=str(default_checkpoint), precision="float32")
    snap = f.state.engine.snapshot
    assert snap.head is snap.model.speech
    assert "IndexFlat" in type(snap.glossaries["demo"].index.index).__name__


# --------------------------------------------------------------------------- hardening


def test_tiny_chunks_are_held_not_encoded_one_by_one(demo_server, tts):
    """After the look-back is primed, a flood of 4-byte chunks must not cost an encode each:
    they are answered in order, and searched together once 0.1 s has arrived."""
    x = tts("today we talk about the attention mechanism in more detail")
    first = _pcm(x[:15360])
    tiny = [_pcm(x[15360 + 2 * i : 15362 + 2 * i]) for i in range(200)]  # 2 samples each
    before = demo_server.state.engine.stats["requests"]
    out = _stream(demo_server.address, [first, *tiny])
    assert [r.sequence for r in out] == list(range(201))
    assert all(r.glossary_version >= 1 for r in out)
    # 400 samples of new audio: one search for the first chunk, one for the tiny ones at
    # the end of the stream (they never reach 0.1 s = 1,600 samples).
    assert demo_server.state.engine.stats["requests"] - before == 2
    assert out[-1].chunk_end_s == pytest.approx((15360 + 400) / 16000)


def test_a_held_chunk_is_searched_once_enough_audio_arrives(demo_server, tts):
    x = tts("today we talk about the attention mechanism in more detail")
    pieces = [x[i : i + 400] for i in range(0, 16000 * 3, 400)]  # 25 ms chunks
    before = demo_server.state.engine.stats["requests"]
    out = _stream(demo_server.address, [_pcm(p) for p in pieces], score_threshold=0.3)
    assert [r.sequence for r in out] == list(range(len(pieces)))
    searches = demo_server.state.engine.stats["requests"] - before
    assert searches == len(pieces) // 4  # one search per 0.1 s of new audio
    assert "attention mechanism" in {h.term for r in out for h in r.hits}


def test_an_idle_stream_is_closed_and_counted_while_open(live_server, tiny_checkpoint):
    import threading
    import time

    s = live_server(checkpoint=str(tiny_checkpoint), idle_timeout_s=1.0)
    seen = []

    def reqs():  # never sends its config
        time.sleep(3)
        return
        yield

    def watch():
        time.sleep(0.5)
        seen.append(s.state.active_sessions)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.monotonic()
    with grpc.insecure_channel(s.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(retrieval_pb2_grpc.TermRetrievalStub(ch).StreamRetrieve(reqs(), timeout=30))
    t.join()
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle_timeout_s" in e.value.details()
    assert time.monotonic() - t0 < 2.9
    assert seen == [1]
    t1 = time.monotonic()  # the handler's cleanup may finish just after the client's error
    while s.state.active_sessions and time.monotonic() - t1 < 5:
        time.sleep(0.01)
    assert s.state.active_sessions == 0


def test_unknown_glossary_names_no_other_glossary(demo_server, tts):
    c = Client(demo_server.address)
    with pytest.raises(NotFound) as e:
        c.retrieve(tts("hello"), "nope", "de")
    assert "demo" not in str(e.value)
    c.close()


def test_a_huge_id_is_invalid_argument_with_a_short_echo(demo_server):
    c = Client(demo_server.address, TOKEN)
    with pytest.raises(InvalidArgument) as e:
        c.get_glossary("x" * 100_000)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(str(e.value)) < 1000
    c.close()


def test_a_chunk_after_its_glossary_is_deleted_is_not_found(demo_server, tts, session_config):
    c = Client(demo_server.address, TOKEN)
    c.put_glossary("short-lived", [{"term": "bleu score", "translations": {"de": "BLEU"}}])
    x = tts("we report the bleu score")

    def reqs():
        yield session_config(glossary_id="short-lived")
        yield retrieval_pb2.StreamRetrieveRequest(
            chunk=retrieval_pb2.AudioChunk(sequence=0, pcm=_pcm(x[:15360]))
        )
        c.delete_glossary("short-lived")
        yield retrieval_pb2.StreamRetrieveRequest(
            chunk=retrieval_pb2.AudioChunk(sequence=1, pcm=_pcm(x[15360:15362]))
        )

    got = []
    with grpc.insecure_channel(demo_server.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            for r in retrieval_pb2_grpc.TermRetrievalStub(ch).StreamRetrieve(reqs(), timeout=60):
                got.append(r)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert [r.sequence for r in got] == [0]
    c.close()


def test_glossary_entries_come_in_pages(demo_server):
    c = Client(demo_server.address, TOKEN)
    entries = [
        {"id": f"e{i}", "term": f"term {i}", "translations": {"de": f"T{i}"}} for i in range(2500)
    ]
    c.put_glossary("paged", entries)
    first = c.get_glossary("paged", include_entries=True, page_size=1000)
    assert len(first.entries) == 1000 and first.next_page_token
    assert first.entry_count == 2500
    ids = [e.id for e in c.iter_entries("paged", page_size=1000)]
    assert ids == [f"e{i}" for i in range(2500)]
    # A token is for one version: after a change it is refused, not silently shifted.
    c.patch_glossary("paged", [{"id": "new", "term": "new term", "translations": {"de": "N"}}])
    with pytest.raises(RasstError) as e:
        c.get_glossary("paged", include_entries=True, page_token=first.next_page_token)
    assert e.value.code == grpc.StatusCode.ABORTED
    for bad in ({"page_size": 10_001}, {"page_token": "garbage!"}):
        with pytest.raises(InvalidArgument):
            c.get_glossary("paged", include_entries=True, **bad)
    c.delete_glossary("paged")
    c.close()


def test_patch_cannot_empty_a_glossary(demo_server):
    c = Client(demo_server.address, TOKEN)
    c.put_glossary("two", [{"id": "a", "term": "alpha"}, {"id": "b", "term": "beta"}])
    with pytest.raises(InvalidArgument, match="at least one entry"):
        c.patch_glossary("two", delete_ids=["a", "b"])
    assert c.get_glossary("two").entry_count == 2
    c.delete_glossary("two")
    c.close()


def test_a_put_whose_deadline_passed_commits_nothing(demo_server):
    import time

    entries = [{"term": f"deadline term {i}", "translations": {"de": "x"}} for i in range(3000)]
    c = Client(demo_server.address, TOKEN, timeout=0.3)
    with pytest.raises(RasstError) as e:
        c.put_glossary("late", entries)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    c.close()
    admin = Client(demo_server.address, TOKEN)
    time.sleep(0.1)
    t0 = time.monotonic()  # the put holds the admin lock until its commit point
    while demo_server.state.admin_lock.locked() and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    with pytest.raises(NotFound):
        admin.get_glossary("late")
    admin.close()


@pytest.mark.parametrize("damage", ["truncated weights", "truncated config", "config of a list"])
def test_reload_with_a_damaged_checkpoint_is_invalid_argument(
    demo_server, tiny_checkpoint, tmp_path, damage
):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    if damage == "truncated weights":
        w = ck / "model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "truncated config":
        c = ck / "config.json"
        c.write_text(c.read_text()[:50])
    else:
        (ck / "config.json").write_text("[1, 2]")
    admin = Client(demo_server.address, TOKEN)
    before = admin.stats().model_id
    with pytest.raises(InvalidArgument) as e:
        admin.reload_model(str(ck))
    assert e.value.field_violations[0][0] == "checkpoint_path"
    assert admin.stats().model_id == before
    admin.close()


def test_the_last_chunk_is_searched_with_silence_after_it(demo_server, tts, session_config):
    x = tts("today we talk about the attention mechanism")
    hop = 15360
    chunks = [x[i : i + hop] for i in range(0, len(x), hop)]

    def reqs(extra: bool):
        yield session_config(score_threshold=0.2)
        for i, c in enumerate(chunks):
            yield retrieval_pb2.StreamRetrieveRequest(
                chunk=retrieval_pb2.AudioChunk(sequence=i, pcm=_pcm(c), last=i == len(chunks) - 1)
            )
        if extra:
            yield retrieval_pb2.StreamRetrieveRequest(
                chunk=retrieval_pb2.AudioChunk(sequence=len(chunks), pcm=_pcm(x[:1600]))
            )

    with grpc.insecure_channel(demo_server.address) as ch:
        stub = retrieval_pb2_grpc.TermRetrievalStub(ch)
        out = list(stub.StreamRetrieve(reqs(False), timeout=60))
        assert [r.sequence for r in out] == list(range(len(chunks)))
        end = len(x) / 16000
        assert out[-1].chunk_end_s == pytest.approx(end)
        assert all(h.end_s <= end + 1e-6 for r in out for h in r.hits)
        assert "attention mechanism" in {h.term for r in out for h in r.hits}
        with pytest.raises(grpc.RpcError) as e:
            list(stub.StreamRetrieve(reqs(True), timeout=60))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "last" in e.value.details()


def test_health_answers_while_a_big_glossary_is_parsed(live_server, tiny_checkpoint):
    """Parsing and checking a large put happen off the event loop: the health service and
    the data plane keep answering meanwhile."""
    import threading
    import time

    s = live_server(checkpoint=str(tiny_checkpoint))
    entries = [
        {"id": f"e{i}", "term": f"term number {i}", "translations": {"de": "x"}}
        for i in range(100_000)
    ]
    done = threading.Event()

    def put():
        c = Client(s.address, TOKEN, timeout=300)
        try:
            c.put_glossary("big", entries)
        finally:
            done.set()
            c.close()

    t = threading.Thread(target=put)
    worst = 0.0
    with grpc.insecure_channel(s.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        t.start()
        while not done.is_set():
            t0 = time.monotonic()
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
    t.join()
    assert s.state.store.get("big").version == 1
    # On the event loop, validating 100K entries held health checks for ~0.9 s here; off
    # it, the worst wait was ~0.04 s.
    assert worst < 0.4, f"a health check waited {worst:.2f} s"


def _configured(ckpt, **changes):
    """``ckpt`` (a directory of its own) with ``changes`` to its config; without a query
    normalisation unless one is given, so that scores compare between two servers."""
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "cohort_weight": 0.0, **changes}))
    return ckpt


def test_query_normalisation_is_served_moving_every_score_of_a_query_alike(
    live_server, default_checkpoint, tmp_path, tts
):
    """A checkpoint with a query normalisation, served with the demo glossary: the same
    hits in the same order, every score moved by one amount, twice as far at twice the
    weight; a request's threshold applies to the moved scores."""
    from rasst.client.api import Client
    from rasst.training.streaming_eval import with_operating_point

    clip = tts("today we look at semantic parsing in detail")
    got = []
    for weight in (0.0, 0.25, 0.5):
        ckpt = with_operating_point(default_checkpoint, 0.2, 6, tmp_path / str(weight))
        s = live_server(checkpoint=str(_configured(ckpt, cohort_weight=weight)))
        c = Client(s.address)
        got.append(list(c.retrieve(clip, "demo", "de", 20, -1.0).hits))
        if weight == 0.5:
            t = got[-1][2].score
            assert [h.term for h in c.retrieve(clip, "demo", "de", 20, t).hits] == [
                h.term for h in got[-1][:3]
            ]
        c.close()
    off, quarter, half = got
    assert [h.term for h in off] == [h.term for h in quarter] == [h.term for h in half]
    assert off[0].term == "semantic parsing"
    moved = [
        np.array([a.score - b.score for a, b in zip(off, x, strict=True)]) for x in (quarter, half)
    ]
    assert abs(moved[0][0]) > 1e-3
    assert np.allclose(moved[0], moved[0][0], atol=1e-4)
    assert np.allclose(moved[1], 2 * moved[0][0], atol=1e-4)


def test_window_agreement_is_served_lowering_near_misses_more_than_the_spoken_term(
    live_server, default_checkpoint, tmp_path, tts
):
    """A checkpoint with a window agreement penalty, served with the demo glossary: no
    score rises, the spoken term loses least of the entries both servers return and still
    ranks first, and the near misses few windows agree on lose more."""
    from rasst.client.api import Client
    from rasst.training.streaming_eval import with_operating_point

    clip = tts("today we look at semantic parsing in detail")
    scores = []
    for name, penalty, windows in (("off", 0.0, 0), ("on", 0.5, 12)):
        ckpt = _configured(
            with_operating_point(default_checkpoint, penalty, windows, tmp_path / name)
        )
        s = live_server(checkpoint=str(ckpt))
        c = Client(s.address)
        scores.append({h.term: h.score for h in c.retrieve(clip, "demo", "de", 20, -1.0).hits})
        c.close()
    off, on = scores
    assert max(on, key=on.get) == max(off, key=off.get) == "semantic parsing"
    drop = {t: off[t] - on[t] for t in on if t in off}
    assert all(-1e-5 <= d <= 0.5 + 1e-5 for d in drop.values())
    assert drop["semantic parsing"] == min(drop.values())
    assert max(drop.values()) > drop["semantic parsing"] + 0.1


def test_overlap_suppression_is_served_leaving_one_hit_per_stretch_of_speech(
    live_server, default_checkpoint, tmp_path, tts
):
    """A checkpoint with overlap suppression, served with the demo glossary: the spoken
    term still comes first with the same score, every hit it returns is returned with the
    same score without suppression, and no two of its hits (forms not nested) overlap by
    half the shorter window, while without it some do."""
    from rasst.client.api import Client
    from rasst.retriever.scoring import _nested
    from rasst.training.streaming_eval import with_operating_point

    clip = tts("today we look at semantic parsing in detail")
    got = []
    for name, fraction in (("off", 0.0), ("on", 0.5)):
        ckpt = with_operating_point(default_checkpoint, 0.0, 0, tmp_path / name)
        ckpt = _configured(ckpt, overlap_suppression=fraction)
        s = live_server(checkpoint=str(ckpt))
        c = Client(s.address)
        got.append(list(c.retrieve(clip, "demo", "de", 50, -1.0).hits))
        c.close()
    off, on = got

    def clashes(hits):
        return [
            (a.term, b.term)
            for i, a in enumerate(hits)
            for b in hits[i + 1 :]
            if min(a.end_s, b.end_s) - max(a.start_s, b.start_s)
            >= 0.5 * min(a.end_s - a.start_s, b.end_s - b.start_s)
            and not _nested(tuple(a.term.lower().split()), tuple(b.term.lower().split()))
        ]

    assert on[0].term == off[0].term == "semantic parsing"
    assert on[0].score == pytest.approx(off[0].score)
    before = {h.term: h.score for h in off}
    assert all(before[h.term] == pytest.approx(h.score) for h in on if h.term in before)
    assert len(on) < len(off) and clashes(off) and not clashes(on)


def test_a_glossary_searched_approximately_says_so(live_server, tiny_checkpoint):
    entries = [
        {"term": t, "translations": {"de": t.upper()}}
        for t in ("semantic parsing", "attention mechanism", "bleu score")
    ]
    exact = live_server(checkpoint=str(tiny_checkpoint), demo_glossary=False)
    c = Client(exact.address, TOKEN)
    assert list(c.put_glossary("g", entries).warnings) == []
    c.close()
    small = live_server(checkpoint=str(tiny_checkpoint), demo_glossary=False, exact_max=2)
    c = Client(small.address, TOKEN)
    (w,) = c.put_glossary("g", entries).warnings
    assert "3 index rows" in w and "exact_max (2)" in w and "HNSW" in w
    # A patch that leaves it under the limit is searched exactly again, without a warning.
    g = c.patch_glossary("g", [], delete_ids=[c.get_glossary("g", True).entries[0].id])
    assert list(g.warnings) == []
    c.close()
