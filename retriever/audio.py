"""Audio decoding, resampling and log-mel features: one module, used by training and serving.

The log-mel recipe matches Whisper's (``openai/whisper`` ``audio.py``), because the
default speech front-end is Whisper's encoder and must see the features it was trained on.
torchaudio does not work with the pinned torch, so the STFT is ``torch.stft`` and the
filter bank comes from ``transformers.audio_utils.mel_filter_bank`` (Slaney, as librosa).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

# The wire's constants and encoder, shared with the client; re-exported for training code.
from rasst.pcm import MAX_INPUT_RATE, MIN_INPUT_RATE, SAMPLE_RATE, to_s16le  # noqa: F401

N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms hop -> 100 mel frames per second
N_MELS = 80
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
ENCODER_FRAMES_PER_SECOND = MEL_FRAMES_PER_SECOND // 2  # 50: Whisper's conv stem has stride 2
MAX_CLIP_SECONDS = 30.0  # Whisper's encoder has 1500 positions = 30 s

ENCODINGS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class AudioError(ValueError):
    """Audio that cannot be used; ``field`` names what was wrong for a BadRequest."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def decode_pcm(pcm: bytes, encoding: str, sample_rate: int, *, field: str = "audio") -> np.ndarray:
    """Decode mono PCM bytes to float32 samples at 16 kHz, validating everything.

    Returns a 1-D float32 array in [-1, 1]. Raises AudioError naming the bad field.
    """
    if encoding not in ENCODINGS:
        raise AudioError(
            f"{field}.encoding", f"encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}"
        )
    if not MIN_INPUT_RATE <= sample_rate <= MAX_INPUT_RATE:
        raise AudioError(
            f"{field}.sample_rate_hz",
            f"sample_rate_hz must be in [{MIN_INPUT_RATE}, {MAX_INPUT_RATE}], got {sample_rate}",
        )
    dtype = ENCODINGS[encoding]
    if len(pcm) == 0:
        raise AudioError(f"{field}.pcm", "pcm is empty")
    if len(pcm) % dtype.itemsize:
        raise AudioError(
            f"{field}.pcm",
            f"pcm length {len(pcm)} is not a multiple of the {encoding} sample width {dtype.itemsize}",
        )
    x = np.frombuffer(pcm, dtype=dtype)
    if encoding == "s16le":
        x = np.multiply(x, np.float32(1 / 32768), dtype=np.float32)  # one pass, exact
    else:
        if not np.isfinite(x).all():
            raise AudioError(f"{field}.pcm", "pcm contains NaN or Inf samples")
        x = np.clip(x, -1.0, 1.0).astype(np.float32)
    return resample(x, sample_rate)


def resample(x: np.ndarray, sample_rate: float) -> np.ndarray:
    """Resample a 1-D float32 signal to 16 kHz with soxr (no-op at 16 kHz)."""
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def load_audio(path: str | Path) -> np.ndarray:
    """Read an audio file as mono float32 at 16 kHz."""
    import soundfile as sf

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise AudioError("audio", f"cannot read audio file {path}: {e}") from e
    x = x.mean(axis=1)
    if not MIN_INPUT_RATE <= sr <= MAX_INPUT_RATE:
        raise AudioError(
            "audio", f"{path}: sample rate {sr} outside [{MIN_INPUT_RATE}, {MAX_INPUT_RATE}]"
        )
    return resample(x, sr)


def write_wav(path: str | Path, x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float32 samples as 16-bit PCM WAV."""
    import soundfile as sf

    sf.write(str(path), np.clip(x, -1, 1), sample_rate, subtype="PCM_16")


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney mel filter bank, as Whisper uses."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(fb.T.astype(np.float32))


@functools.lru_cache(maxsize=1)
def _hann() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def log_mel_spectrogram(
    audio: np.ndarray | torch.Tensor, n_mels: int = N_MELS, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Whisper-style log-mel spectrogram, computed on ``device``.

    audio: (samples,) or (batch, samples) at 16 kHz.
    Returns (n_mels, frames) or (batch, n_mels, frames), frames = samples // HOP_LENGTH.
    """
    x = torch.as_tensor(audio, dtype=torch.float32).to(device)
    squeeze = x.dim() == 1
    if squeeze:
        x = x.unsqueeze(0)
    window = _hann().to(x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels).to(x.device) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    # Whisper's dynamic-range clamp is per clip; per item here so batching changes nothing.
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec[0] if squeeze else log_spec
