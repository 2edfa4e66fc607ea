"""Shared fixtures: one thread everywhere, TTS audio, a tiny checkpoint, a live server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RASST_FAISS_THREADS", "1")
# The tests' Ray instances are single-node: on loopback, not the machine's network address
# (read when ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "requires_cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def espeak(text: str, voice: str = "en-us", rate: int = 160) -> np.ndarray:
    """Speech for tests: espeak-ng rendered to 16 kHz float32."""
    from rasst.retriever.audio import load_audio

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `make setup` (apt-get install espeak-ng)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(rate), "-w", f.name, text],
            check=True,
            capture_output=True,
        )
        return load_audio(f.name)


@pytest.fixture(scope="session")
def tts():
    return espeak


@pytest.fixture(scope="session")
def demo_talk() -> np.ndarray:
    """The demo talk (retriever/demo/talk.txt says what it says), 16 kHz float32."""
    from rasst.retriever.audio import load_audio
    from rasst.retriever.server import DEMO_DIR

    return load_audio(DEMO_DIR / "talk.wav")


@pytest.fixture(scope="session")
def gpu_checkpoint(default_checkpoint) -> Path:
    """The checkpoint the GPU tests serve: the shipped one, or RASST_TEST_CHECKPOINT where
    its front-end package is not installed (a lent GPU machine: scripts/gpu_bench.sh sets
    it to the shipped model with its front-end ported by `rasst port-frontend`)."""
    path = os.environ.get("RASST_TEST_CHECKPOINT")
    return Path(path) if path else default_checkpoint


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    from rasst.retriever.model import default_checkpoint_dir

    d = default_checkpoint_dir()
    assert (d / "config.json").exists(), (
        "the shipped checkpoint is missing from retriever/default_checkpoint"
    )
    return d


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised model (real front-end, small head) saved as a checkpoint."""
    from rasst.retriever.g2p import phonemize
    from rasst.retriever.model import DualEncoder, ModelConfig

    vocab = tuple(
        sorted(
            set(
                "".join(
                    phonemize(
                        ["attention mechanism", "semantic parsing", "the quick brown fox jumps"]
                    )
                )
            )
        )
    )
    torch.manual_seed(0)
    model = DualEncoder(
        ModelConfig(text_vocab=vocab, embed_dim=32, head_hidden=64, text_embed=16, text_hidden=32)
    )
    return model.save_pretrained(
        tmp_path_factory.mktemp("tiny") / "ckpt", metrics={"note": "random init"}
    )


def encoded_units(monkeypatch) -> list[list[str]]:
    """From now on, the unit strings each ``DualEncoder.encode_units`` call embeds."""
    from rasst.retriever.model import DualEncoder

    encoded: list[list[str]] = []
    real = DualEncoder.encode_units

    def recording(self, unit_strings, *a, **kw):
        encoded.append(list(unit_strings))
        return real(self, unit_strings, *a, **kw)

    monkeypatch.setattr(DualEncoder, "encode_units", recording)
    return encoded


class LiveServer:
    """A real server on 127.0.0.1:0 running its own event loop in a thread."""

    def __init__(self, **cfg):
        from rasst.retriever.config import ServerConfig

        self.tmp = tempfile.TemporaryDirectory()
        cfg.setdefault("data_dir", self.tmp.name)
        cfg.setdefault("admin_token", "secret")
        cfg.setdefault("address", "127.0.0.1:0")
        self.config = ServerConfig(**cfg)
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def start(self):
        from rasst.retriever.server import create_server

        fut = asyncio.run_coroutine_threadsafe(create_server(self.config), self.loop)
        self.server, self.port, self.state = fut.result(timeout=300)
        self.address = f"127.0.0.1:{self.port}"
        return self

    def call(self, coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        from rasst.retriever.server import drain

        if self.stopped:
            return
        self.stopped = True
        try:
            self.call(drain(self.server, self.state, 0.5), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.tmp.cleanup()


class ServeProcess:
    """``python -m rasst serve ARGS`` as an operator runs it, in a child process. Its
    output (stdout and stderr) is read on a thread into ``lines``, so the pipe never
    fills and a failing test can show the tail."""

    def __init__(self, *args: str, env: dict | None = None, new_session: bool = False):
        self.lines: list[str] = []
        self.port: int | None = None
        self._started = threading.Event()  # the listening line, or the end of output
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rasst", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,  # its own process group
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.match(r"rasst listening on \S+:(\d+)", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._started.set()
        self._started.set()

    def wait_listening(self, timeout: float = 180) -> int:
        """The port, once the server says it listens (AssertionError with its output
        when it exits or stays silent)."""
        self._started.wait(timeout)
        assert self.port is not None, f"rasst serve did not start:\n{self.tail()}"
        return self.port

    def tail(self, n: int = 20) -> str:
        return "".join(self.lines[-n:])


@pytest.fixture
def live_server():
    servers = []

    def make(**cfg):
        s = LiveServer(**cfg).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def demo_server(default_checkpoint):
    """The shipped checkpoint with the demo glossary, shared by a module's tests."""
    s = LiveServer(checkpoint=str(default_checkpoint)).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_corpus_texts(tmp_path_factory):
    """A two-utterance manifest (real espeak speech, exact term spans) and its texts."""
    from rasst.training import synthesis as S
    from rasst.training import voices as V

    out = tmp_path_factory.mktemp("texts")
    voices = V.training_voices(0, n=1)
    S.synthesize(
        S.plan(["attention mechanism", "bleu score"], voices, 1, 0, 0.0, "tx"), out, workers=1
    )
    manifest = out / "manifest.jsonl"
    texts = [json.loads(line)["text"] for line in manifest.read_text().splitlines() if line]
    return manifest, texts


def config_request(**config):
    """The first message of a StreamRetrieve session: the demo glossary in German, s16le at
    16 kHz, unless ``config`` says otherwise."""
    from rasst.v1 import retrieval_pb2

    fields = dict(
        glossary_id="demo",
        target_lang="de",
        encoding=retrieval_pb2.AUDIO_ENCODING_S16LE,
        sample_rate_hz=16000,
    )
    fields.update(config)
    return retrieval_pb2.StreamRetrieveRequest(config=retrieval_pb2.SessionConfig(**fields))


@pytest.fixture
def session_config():
    return config_request
