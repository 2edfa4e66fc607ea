"""Second stage: rescore the dual encoder's candidates by how well their phonemes align.

The dual encoder compresses a window into one vector, so near misses at 100K entries
("parsing" / "sparing", "nepheline" / "Nephilim") sit close in its space. The phone
head reads the same front-end frames and gives per-frame phoneme posteriors (trained
with CTC on the term spans). A candidate's keyword score is the best CTC alignment of
its phoneme string to any stretch of frames inside its window, each frame scored
against the best label there (so the score is <= 0: 0 means the frames say exactly
these phonemes). The served score is

    fused = cosine + weight * keyword_score / n_phonemes

which is never above the cosine: a threshold on the fused score can first be applied to
the cosine, so only entries that could pass are rescored.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The score of a string that cannot align inside its region (more phonemes than frames).
_NEG = -1e9


class PhoneHead(nn.Module):
    """Front-end frames (B, T, D) -> per-frame phoneme log-probabilities (B, T, V + 1).

    Label 0 is CTC's blank; label i >= 1 is the text vocabulary's symbol i - 1 (spaces
    excluded, see ``phone_symbols``). ``kind``: "conv" (two residual blocks of depthwise
    convolution over 5 frames + pointwise mixing: no step-by-step recurrence, ~1 ms for a
    3 s clip on one CPU thread) or "gru" (a 2-layer BiGRU, ~10 ms for the same clip).
    """

    def __init__(self, in_dim: int, hidden: int, n_labels: int, kind: str = "conv"):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(in_dim)
        self.inp = nn.Linear(in_dim, hidden)
        if kind == "gru":
            self.rnn = nn.GRU(
                hidden, hidden // 2, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1
            )
        elif kind == "conv":
            self.blocks = nn.ModuleList(_ConvBlock(hidden) for _ in range(2))
        else:
            raise ValueError(f"phone head kind must be 'conv' or 'gru', got {kind!r}")
        self.out = nn.Linear(hidden, n_labels)

    @property
    def context(self) -> int | None:
        """Frames on each side an output frame depends on (None: the whole clip, a GRU)."""
        return 2 * len(self.blocks) if self.kind == "conv" else None

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = F.gelu(self.inp(self.norm(frames)))
        if self.kind == "conv":
            keep = None
            if lengths is not None:  # padding must not reach real frames' context
                t = torch.arange(x.shape[1], device=x.device)
                keep = (t[None] < lengths.to(x.device)[:, None]).unsqueeze(-1).to(x.dtype)
            for block in self.blocks:
                x = block(x, keep)
            return self.out(x).log_softmax(-1)
        if lengths is None:
            y, _ = self.rnn(x)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            y, _ = self.rnn(packed)
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.out(y).log_softmax(-1)


class _ConvBlock(nn.Module):
    """x + pointwise(GELU(depthwise conv over 5 frames(LayerNorm(x)))), on (B, T, C).

    The depthwise convolution is written as a weighted sum of shifted copies: the same
    arithmetic as ``nn.Conv1d(groups=C)``, whose backward pass is several times slower
    on a CPU.
    """

    def __init__(self, channels: int, kernel: int = 5):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.taps = nn.Parameter(torch.randn(kernel, channels) / kernel**0.5)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.pointwise = nn.Linear(channels, channels)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep`` (B, T, 1): 1 on real frames, 0 on padding (seen as silence-free zeros,
        as a clip's own edges are)."""
        k, T = len(self.taps), x.shape[1]
        h = self.norm(x)
        if keep is not None:
            h = h * keep
        h = F.pad(h, (0, 0, k // 2, k // 2))
        y = self.bias + sum(self.taps[i] * h[:, i : i + T] for i in range(k))
        return x + self.drop(self.pointwise(F.gelu(y)))


def phone_symbols(text_vocab: tuple[str, ...]) -> dict[str, int]:
    """Symbol -> CTC label (1-based; word spaces are not sounds, so they get none)."""
    return {s: i + 1 for i, s in enumerate(s for s in text_vocab if not s.isspace())}


def phone_labels(unit_strings: list[str], symbols: dict[str, int]) -> list[np.ndarray]:
    """Each unit string as CTC labels; unknown symbols are dropped (at least one label)."""
    out = []
    for s in unit_strings:
        ids = [symbols[c] for c in s if c in symbols]
        out.append(np.asarray(ids or [1], dtype=np.int64))
    return out


@torch.no_grad()
def relative_logprobs(head: PhoneHead, frames: torch.Tensor) -> np.ndarray:
    """(T, D) frames of one clip -> (T, V + 1) log-probs minus each frame's best (<= 0)."""
    head.eval()
    lp = head(frames.float()[None])[0]
    return (lp - lp.max(dim=1, keepdim=True).values).cpu().numpy()


def keyword_scores(rel: np.ndarray, labels: list[np.ndarray], regions: np.ndarray) -> np.ndarray:
    """Best free-boundary CTC alignment of each label string inside its frame region.

    rel: (T, V + 1) from ``relative_logprobs``; labels: n label arrays; regions: (n, 2)
    [start, end) frames. The alignment may start and end on any frame of the region; blank
    frames may sit between phonemes, not before the first or after the last. Returns (n,)
    scores <= 0 (``_NEG`` when a string has more phonemes than its region has frames, or
    none).
    """
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.float32)
    # Every string's states p1 0 p2 0 .. pL, end to end: string i is
    # states[offsets[i]:offsets[i + 1]].
    lens = np.array([len(lab) for lab in labels], np.int64)
    phonemes = np.concatenate(labels).astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.maximum(2 * lens - 1, 0), out=offsets[1:])
    states = np.zeros(int(offsets[-1]), np.int64)
    rank = np.arange(len(phonemes)) - np.repeat(np.cumsum(lens) - lens, lens)
    states[np.repeat(offsets[:-1], lens) + 2 * rank] = phonemes
    regions = np.clip(np.asarray(regions, np.int64).reshape(-1, 2), 0, len(rel))
    return _align(np.ascontiguousarray(rel, np.float32), states, offsets, regions, _NEG)


def _compiled(fn):
    """``fn`` compiled without the GIL, its machine code cached beside this file or in the
    user's cache directory (``NUMBA_CACHE_DIR`` overrides); where neither can be written,
    compiled afresh in each process (about a second, in the model's warm-up)."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # numba found no writable cache directory
        return numba.njit(nogil=True)(fn)


@_compiled
def _align(rel, states, offsets, regions, neg):  # pragma: no cover - compiled
    """The alignments of ``keyword_scores``, one string at a time, frame by frame (compiled;
    the GIL is released while it runs). On each frame state j comes from itself, from
    state j - 1, or from j - 2 over a blank when the two phonemes differ; the first state
    may also start afresh (from 0). ``neg`` where the last state is never reached."""
    n = len(offsets) - 1
    width = 0
    for i in range(n):
        width = max(width, offsets[i + 1] - offsets[i])
    alpha = np.empty(width)
    new = np.empty(width)
    out = np.empty(n, np.float32)
    for i in range(n):
        s = states[offsets[i] : offsets[i + 1]]
        last = len(s) - 1
        best = neg
        if last < 0:  # an empty string aligns nowhere
            out[i] = best
            continue
        alpha[: last + 1] = -np.inf
        for t in range(regions[i, 0], regions[i, 1]):
            for j in range(last + 1):
                v = alpha[j]
                came = alpha[j - 1] if j >= 1 else 0.0
                if came > v:
                    v = came
                if j >= 2 and s[j] != 0 and s[j] != s[j - 2] and alpha[j - 2] > v:
                    v = alpha[j - 2]
                new[j] = v + rel[t, s[j]]
            alpha, new = new, alpha
            if alpha[last] > best:
                best = alpha[last]
        out[i] = best
    return out


def fuse(
    cosine: np.ndarray, keyword: np.ndarray, n_labels: np.ndarray, weight: float
) -> np.ndarray:
    """The served score: cosine plus the per-phoneme keyword score, weighted (<= cosine)."""
    return (cosine + weight * keyword / np.maximum(n_labels, 1)).astype(np.float32)


def alignment_regions(windows: np.ndarray, margin: int, n_frames: int) -> np.ndarray:
    """(n, 2) [start, end) frames where each candidate may align: its best window widened
    by ``margin`` frames on each side, inside the clip's ``n_frames``."""
    return np.clip(np.asarray(windows, np.int64).reshape(-1, 2) + [-margin, margin], 0, n_frames)


def rescore(
    rel: np.ndarray,
    labels: list[np.ndarray],
    windows: np.ndarray,
    cosine: np.ndarray,
    weight: float,
    margin: int,
) -> np.ndarray:
    """Fused scores of candidates, each aligned inside its best window (start, end frames
    of the clip ``rel`` was computed on) widened by ``margin`` frames on each side."""
    if len(labels) == 0:
        return np.zeros(0, np.float32)
    keyword = keyword_scores(rel, labels, alignment_regions(windows, margin, len(rel)))
    return fuse(np.asarray(cosine), keyword, np.array([len(x) for x in labels]), weight)
