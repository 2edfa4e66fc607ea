from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rasst.client.api import Session, SessionOptions, make_channel, read_audio
from rasst.client.merger import HintMerger, MergerOptions

from rasst.v1 import retrieval_pb2

ROOT = Path(__file__).resolve().parents[1]


def _resp(seq, hits, end):
    return retrieval_pb2.StreamRetrieveResponse(
        sequence=seq,
        chunk_start_s=end - 0.96,
        chunk_end_s=end,
        hits=[
            retrieval_pb2.Hit(
                entry_id=e, term=e, translation=e.upper(), score=s, start_s=t - 0.5, end_s=t
            )
            for e, s, t in hits
        ],
    )


def test_merger_dedups_by_entry_keeping_best_score_and_latest_time():
    m = HintMerger(MergerOptions(ttl_s=3.0, max_hints=10))
    m.add(_resp(0, [("a", 0.7, 0.9), ("b", 0.6, 0.5)], 0.96))
    m.add(_resp(1, [("a", 0.65, 1.8)], 1.92))
    r = m.step()
    a = next(h for h in r.hints if h.entry_id == "a")
    assert (round(a.score, 2), a.end_s, a.first_seq, a.last_seq) == (0.7, 1.8, 0, 1)
    assert [h.entry_id for h in r.hints] == ["a", "b"]
    assert {h.entry_id for h in r.fresh} == {"a", "b"}
    assert m.step().fresh == []  # nothing new since


def test_merger_expires_caps_and_filters():
    m = HintMerger(MergerOptions(ttl_s=1.0, max_hints=2, min_score=0.3))
    m.add(_resp(0, [("old", 0.9, 0.5), ("low", 0.2, 0.9)], 0.96))
    m.add(_resp(3, [("x", 0.5, 3.7), ("y", 0.6, 3.7), ("z", 0.4, 3.7)], 3.84))
    r = m.step()
    assert [h.entry_id for h in r.hints] == ["y", "x"]


def test_late_results_fold_into_the_next_step():
    async def go():
        m = HintMerger()
        t = asyncio.get_running_loop().time()
        r0 = await m.wait_step(0, budget_ms=30)
        waited = asyncio.get_running_loop().time() - t
        assert not r0.on_time and r0.hints == [] and waited < 0.5
        m.add(_resp(0, [("late", 0.8, 0.9)], 0.96))  # arrives after its step's budget
        m.add(_resp(1, [], 1.92))
        r1 = await m.wait_step(1, budget_ms=30)
        assert r1.on_time and [h.entry_id for h in r1.fresh] == ["late"]

    asyncio.run(go())


def test_wait_step_returns_as_soon_as_the_answer_arrives():
    async def go():
        m = HintMerger()

        async def later():
            await asyncio.sleep(0.05)
            m.add(_resp(0, [("a", 0.9, 0.5)], 0.96))

        asyncio.create_task(later())
        r = await m.wait_step(0, budget_ms=2000)
        assert r.on_time and r.waited_ms < 1000 and r.hints[0].entry_id == "a"

    asyncio.run(go())


def test_client_commands_do_not_import_torch_or_faiss(tmp_path):
    code = (
        "import sys, rasst.cli, rasst.client.translate, rasst.client.admin, rasst.client.api, "
        "rasst.client.merger; "
        "print(sorted(m for m in ('torch', 'faiss', 'client', 'retriever', 'training') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout.strip()
    assert out == "[]"


def test_the_wheel_installs_one_namespace(tmp_path):
    """Everything installed lives under ``rasst``: no generic top-level package names."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # built from a copy: setuptools writes build/ beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("rasst", "client", "retriever", "training"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rasst-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"rasst"}
    for module in (
        "rasst/v1/retrieval_pb2.py",
        "rasst/client/api.py",
        "rasst/cli.py",
        "rasst/retriever/server.py",
        "rasst/retriever/default_checkpoint/config.json",
        "rasst/training/train.py",
        "rasst/training/bench/cli.py",
    ):
        assert module in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "rasst = rasst.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_cli_exit_codes():
    def rasst(*args):
        return subprocess.run(
            [sys.executable, "-m", "rasst", *args], capture_output=True, text=True, cwd=ROOT
        )

    assert rasst("--help").returncode == 0
    assert rasst().returncode == 2
    r = rasst("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr
    assert rasst("translate", "--help").returncode == 0
    r = rasst("translate", "/nonexistent.wav", "--glossary", "g", "--lang", "de")
    assert r.returncode == 1 and r.stderr.startswith("rasst translate:")
    assert (
        rasst("translate", "x.wav", "--glossary", "g", "--lang", "de", "--chunk", "99").returncode
        == 2
    )


DEMO_WAV = ROOT / "retriever" / "demo" / "talk.wav"


def _translate(
    address: str, glossary: str, *extra: str, wav: Path = DEMO_WAV
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "rasst",
        "translate",
        str(wav),
        "--server",
        address,
        "--glossary",
        glossary,
        "--lang",
        "de",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_translate_cli_prints_hints_step_by_step(demo_server):
    r = _translate(demo_server.address, "demo", "--json", "--budget-ms", "500")
    assert r.returncode == 0, r.stderr
    steps = [json.loads(line) for line in r.stdout.splitlines()]
    x, rate = read_audio(str(DEMO_WAV))
    assert len(steps) == int(np.ceil(len(x) / rate / 0.96))
    said = {h["term"] for s in steps for h in s["hints"]}
    assert {"semantic parsing", "attention mechanism", "machine translation"} & said
    assert all("Glossary" in s["prompt"] or s["prompt"] == "(no glossary hints)" for s in steps)


def test_translate_cli_reports_server_errors(demo_server):
    r = _translate(demo_server.address, "nope")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr


def test_session_reconnects_and_resumes(live_server, default_checkpoint, tts):
    """The server goes away mid-session; a new one on the same port takes over; nothing is lost."""
    first = live_server(checkpoint=str(default_checkpoint))
    port = first.port
    x = np.concatenate([tts("we report the bleu score for machine translation")] * 2)
    hop = 8000
    chunks = [x[i : i + hop] for i in range(0, len(x), hop)]

    async def go():
        got = []
        channel = make_channel(first.address)
        s = await Session(
            channel,
            SessionOptions(
                "demo", "de", chunk_s=0.5, max_retries=10, backoff_s=0.2, max_in_flight=2
            ),
            lambda r, t: got.append(r),
        ).start()
        for i, c in enumerate(chunks):
            await s.send(c)
            if i == 2:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(first.stop)
                second = await asyncio.to_thread(
                    lambda: live_server(
                        checkpoint=str(default_checkpoint), address=f"127.0.0.1:{port}"
                    )
                )
                assert second.port == port
        await s.close(timeout=120)
        await channel.close()
        return got, s.reconnects

    got, reconnects = asyncio.run(go())
    assert reconnects >= 1
    assert sorted(r.sequence for r in got) == list(range(len(chunks)))
    ends = {r.sequence: r.chunk_end_s for r in got}
    assert ends[len(chunks) - 1] == pytest.approx(len(x) / 16000, abs=1e-3)


def test_send_never_blocks_after_the_session_failed(demo_server):
    """More chunks than the flow-control window, to a glossary that does not exist: the
    error surfaces from send() instead of leaving the caller waiting for a free slot."""
    from rasst.client.api import NotFound

    async def go():
        channel = make_channel(demo_server.address)
        s = await Session(channel, SessionOptions("nope", "de", max_in_flight=2)).start()
        with pytest.raises(NotFound):
            for _ in range(50):
                await asyncio.wait_for(s.send(np.zeros(1600, np.float32)), 10)
        await channel.close()

    asyncio.run(go())


def test_translator_stops_when_the_glossary_disappears_mid_session(live_server, tiny_checkpoint):
    """Paced playback waits for late answers, but never past the session's failure."""
    from rasst.client.api import Client, NotFound
    from rasst.client.translate import run_translator

    s = live_server(checkpoint=str(tiny_checkpoint))
    admin = Client(s.address, "secret")
    admin.put_glossary(
        "tmp", [{"id": "a", "term": "semantic parsing", "translations": {"de": "x"}}]
    )

    def hook(prompt, hints, step):
        if step == 1:
            admin.delete_glossary("tmp")
        return ""

    async def go():
        channel = make_channel(s.address)
        x = np.zeros(16000 * 10, np.float32)
        with pytest.raises(NotFound):
            await asyncio.wait_for(
                run_translator(channel, x, 16000, SessionOptions("tmp", "de"), 1.0, hook=hook), 30
            )
        await channel.close()

    asyncio.run(go())
    admin.close()


@pytest.mark.parametrize(
    "fmt,subtype",
    [
        ("WAV", "PCM_24"),
        ("WAV", "FLOAT"),
        ("WAV", "PCM_U8"),
        ("FLAC", "PCM_16"),
        ("OGG", "VORBIS"),
        ("MP3", "MPEG_LAYER_III"),
    ],
)
def test_translate_reads_any_audio_file(demo_server, tmp_path, fmt, subtype):
    """Stereo at 44.1 kHz in any format libsndfile writes: read, mixed down, resampled."""
    import soundfile as sf
    import soxr

    x, _ = read_audio(DEMO_WAV)
    x = soxr.resample(x[: 16000 * 5], 16000, 44100)
    path = tmp_path / f"talk.{fmt.lower()}"
    sf.write(str(path), np.stack([x, 0.5 * x], axis=1), 44100, format=fmt, subtype=subtype)
    r = _translate(demo_server.address, "demo", "--json", "--budget-ms", "500", wav=path)
    assert r.returncode == 0, r.stderr
    said = {h["term"] for line in r.stdout.splitlines() for h in json.loads(line)["hints"]}
    assert "semantic parsing" in said


@pytest.mark.parametrize("content", [b"", b"this is a text file, not audio\n", b"RIFF\x00\x00"])
def test_translate_refuses_what_is_not_audio_in_one_line(demo_server, tmp_path, content):
    path = tmp_path / "talk.wav"
    path.write_bytes(content)
    r = _translate(demo_server.address, "demo", wav=path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rasst translate: ") and str(path) in lines[0]
    r = _translate(demo_server.address, "demo", wav=tmp_path / "missing.wav")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


def test_int16_and_stereo_arrays_are_audio_not_silence(demo_server, tts):
    from rasst.client.api import Client, PcmError

    x = tts("today we talk about the attention mechanism in more detail")
    c = Client(demo_server.address)
    want = [(h.entry_id, round(h.score, 4)) for h in c.retrieve(x, "demo", "de").hits]
    assert want
    as_int16 = (x * 32767).astype(np.int16)
    for same in (as_int16, np.stack([x, x], axis=1)):
        got = [(h.entry_id, round(h.score, 3)) for h in c.retrieve(same, "demo", "de").hits]
        assert [g[0] for g in got] == [w[0] for w in want]
    for bad in (np.stack([x, x]), x.astype(np.int32), x[None, None, :]):
        with pytest.raises(PcmError):
            c.retrieve(bad, "demo", "de")
    c.close()


def test_a_callback_error_reaches_the_caller(demo_server, tts):
    class Boom(Exception):
        pass

    def on_response(resp, sent_at):
        raise Boom("the translator's bug")

    async def go():
        channel = make_channel(demo_server.address)
        s = await Session(channel, SessionOptions("demo", "de"), on_response).start()
        await s.send(tts("hello there"))
        with pytest.raises(Boom, match="translator's bug"):
            for _ in range(100):
                await asyncio.sleep(0.05)
                await s.send(np.zeros(1600, np.float32))
        with pytest.raises(Boom):
            await s.close()
        await channel.close()

    asyncio.run(go())


def _glossary_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rasst", "glossary", *args],
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
    )


def test_glossary_cli_human_and_json_output(demo_server, tmp_path):
    import re

    f = tmp_path / "g.jsonl"
    f.write_text(
        "\n".join(
            json.dumps({"id": f"t{i}", "term": f"term {i}", "translations": {"de": f"T{i}"}})
            for i in range(30)
        )
        + '\n{"id": "bare", "term": "no translation here"}\n'
    )
    # Connection options after the subcommand, as users type them.
    r = _glossary_cli("put", "cli", str(f), "--server", demo_server.address, "--token", "secret")
    assert r.returncode == 0, r.stderr
    assert "warning: 1 of 31 entries have no translations" in r.stderr
    assert re.search(r"updated\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", r.stdout)
    conn = ("--server", demo_server.address, "--token", "secret")
    r = _glossary_cli(*conn, "get", "cli", "--entries", "--page-size", "7")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 31
    assert lines[0].split()[:4] == ["t0", "term", "0", "de=T0"]
    assert "{" not in r.stdout
    r = _glossary_cli(*conn, "--json", "get", "cli", "--entries")
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()][-1] == "bare"
    r = _glossary_cli(*conn, "list")
    assert r.stdout.splitlines()[0].split()[:3] == ["GLOSSARY", "VERSION", "ENTRIES"]
    r = _glossary_cli(*conn, "stats")
    assert r.returncode == 0 and r.stdout.startswith("model ")
    assert json.loads(_glossary_cli(*conn, "stats", "--json").stdout)["model_id"]
    _glossary_cli(*conn, "delete", "cli")


def test_glossary_cli_refuses_an_empty_patch_and_reports_errors_once(demo_server):
    conn = ("--server", demo_server.address, "--token", "secret")
    r = _glossary_cli(*conn, "patch", "demo")
    assert r.returncode == 2 and "--upsert" in r.stderr
    r = _glossary_cli(*conn, "get", "no-such-glossary")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line
    assert r.stderr.count("no-such-glossary") == 1


def test_glossary_cli_into_a_closed_pipe_exits_quietly(demo_server, tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_text(
        "\n".join(
            json.dumps({"term": f"pipe term {i}", "translations": {"de": "x" * 40}})
            for i in range(3000)
        )
    )
    conn = f"--server {demo_server.address} --token secret"
    rasst = f"{sys.executable} -m rasst glossary {conn}"
    r = subprocess.run(
        ["bash", "-c", f"{rasst} put pipes {f} && {rasst} --json get pipes --entries | head -1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0
    assert json.loads(r.stdout.splitlines()[-1])["term"] == "pipe term 0"
    assert "Broken pipe" not in r.stderr and "Traceback" not in r.stderr
    _glossary_cli("--server", demo_server.address, "--token", "secret", "delete", "pipes")
