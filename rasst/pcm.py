"""PCM audio as it travels on the wire, and the stream defaults both ends share.

numpy only: the client imports this without torch. The server decodes what this
encodes (``rasst.retriever.audio.decode_pcm``).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000  # Hz: every model in rasst sees 16 kHz mono
MIN_INPUT_RATE = 8000  # Hz: lower rates carry too little of the speech band to be useful
MAX_INPUT_RATE = 48000  # Hz: higher rates are almost always a caller's unit mistake
# A session's default chunk: 48 Whisper encoder frames of 20 ms, about one second of speech,
# the step of a simultaneous translator.
CHUNK_S = 0.96
# Audio kept before each chunk: two chunks, so the longest window (2.4 s) that ends in the
# new chunk is heard whole.
LOOKBACK_S = 2 * CHUNK_S  # 1.92 s
S16_SCALE = 32767  # float 1.0 -> the largest int16 sample


class PcmError(ValueError):
    """Samples that cannot be sent as mono PCM."""


def as_mono_float(samples, *, where: str = "samples") -> np.ndarray:
    """Samples as a 1-D float32 array in [-1, 1].

    Accepts float arrays (any float dtype), int16 arrays (scaled by 1/32768), and 2-D
    channels-last arrays ``(frames, channels)`` with up to 8 channels (averaged to mono).
    Raises :class:`PcmError` for anything else rather than guessing: other integer types,
    channels-first shapes, more dimensions, NaN or Inf.
    """
    x = np.asarray(samples)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    else:
        raise PcmError(
            f"{where}: dtype {x.dtype} is not audio here; pass float samples in [-1, 1] or int16"
        )
    if x.ndim == 2:
        frames, channels = x.shape
        if not 1 <= channels <= 8 or channels > frames:
            raise PcmError(
                f"{where}: shape {x.shape} is not (frames, channels) with 1-8 channels; "
                "pass channels last"
            )
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise PcmError(f"{where}: expected 1-D mono or 2-D (frames, channels), got shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise PcmError(f"{where}: contains NaN or Inf")
    return x


def to_s16le(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to little-endian int16 bytes (clipped): the wire format."""
    return (np.clip(samples, -1, 1) * S16_SCALE).astype("<i2").tobytes()


def from_s16le(pcm: bytes) -> np.ndarray:
    """Little-endian int16 bytes to float32 samples in [-1, 1)."""
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
