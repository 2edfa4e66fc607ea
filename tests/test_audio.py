from __future__ import annotations

import numpy as np
import pytest
import torch
from rasst.retriever import audio as A


def test_decode_s16_and_f32_agree():
    x = (np.sin(np.arange(1600) / 7) * 0.5).astype(np.float32)
    a = A.decode_pcm(A.to_s16le(x), "s16le", 16000)
    b = A.decode_pcm(x.astype("<f4").tobytes(), "f32le", 16000)
    assert np.abs(a - b).max() < 1e-3


@pytest.mark.parametrize(
    "pcm,enc,rate,field",
    [
        (b"", "s16le", 16000, "audio.pcm"),
        (b"\x00", "s16le", 16000, "audio.pcm"),
        (b"\x00\x00", "mp3", 16000, "audio.encoding"),
        (b"\x00\x00", "s16le", 4000, "audio.sample_rate_hz"),
        (b"\x00\x00", "s16le", 96000, "audio.sample_rate_hz"),
        (np.array([np.nan], "<f4").tobytes(), "f32le", 16000, "audio.pcm"),
    ],
)
def test_decode_rejects(pcm, enc, rate, field):
    with pytest.raises(A.AudioError) as e:
        A.decode_pcm(pcm, enc, rate)
    assert e.value.field == field


def test_resample_keeps_duration():
    x = np.random.default_rng(0).standard_normal(44100).astype(np.float32) * 0.1
    y = A.resample(x, 44100)
    assert abs(len(y) - 16000) <= 2


def test_log_mel_matches_whisper_layout():
    x = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    m = A.log_mel_spectrogram(x)
    assert m.shape == (A.N_MELS, 200)
    # Whisper's normalisation: at most 2 units of dynamic range below the clip's peak.
    assert float(m.max() - m.min()) <= 2.0 + 1e-5
    batch = A.log_mel_spectrogram(torch.from_numpy(np.stack([x, x[::-1].copy()])))
    assert torch.allclose(batch[0], m, atol=1e-5)


def test_mel_filters_shape_and_coverage():
    fb = A.mel_filters()
    assert fb.shape == (80, 201)
    assert (fb.sum(1) > 0).all()
