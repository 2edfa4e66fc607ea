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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Log-probability of an impossible path; finite so that sums stay finite.
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
    scores <= 0 (``_NEG`` when a string has more phonemes than its region has frames).
    """
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.float32)
    states = [np.insert(lab, np.arange(1, len(lab)), 0) for lab in labels]  # p1 0 p2 0 .. pL
    S = max(len(s) for s in states)
    # Each string is right-aligned in S columns, so every last state is column S - 1. The
    # columns before a string's first state are "ready" states: they hold 0 and emit 0, so
    # the first state may be entered from them on any frame (a fresh start).
    lab = np.zeros((n, S), np.int64)
    valid = np.zeros((n, S), bool)
    skip = np.zeros((n, S), bool)  # p_{k-1} -> p_k without a blank between (labels differ)
    for i, s in enumerate(states):
        c = S - len(s)
        lab[i, c:] = s
        valid[i, c:] = True
        skip[i, c + 2 :] = (s[2:] != 0) & (s[2:] != s[:-2])
    regions = np.asarray(regions, dtype=np.int64)
    t0, t1 = int(regions[:, 0].min()), max(int(regions[:, 1].max()), int(regions[:, 0].min()))
    t = np.arange(t0, t1)[:, None]
    inside = (regions[:, 0] <= t) & (t < regions[:, 1])  # (T, n)
    # Every frame's emissions at once: a state on a frame outside its candidate's region
    # emits _NEG (so nothing passes through it); a ready state emits 0.
    emit = np.where(inside[..., None], rel[t0:t1][:, lab], _NEG)  # (T, n, S)
    emit[:, ~valid] = 0.0
    jump_cost = np.where(skip, 0.0, _NEG)
    # Two buffers of alpha, swapped each frame, each with two ready columns in front
    # (alpha[j-1], alpha[j-2] of the first columns). Nothing is clamped: a value that went
    # through a _NEG emission stays below _NEG (float64 holds it), and ``best`` starts at
    # _NEG, so an impossible string still scores exactly _NEG.
    prev = np.zeros((n, S + 2))
    prev[:, 2:] = np.where(valid, _NEG, 0.0)
    cur = prev.copy()
    jump = np.empty((n, S))
    best = np.full(n, _NEG)
    for k in range(t1 - t0):
        alpha = cur[:, 2:]
        np.maximum(prev[:, 2:], prev[:, 1:-1], out=alpha)
        np.add(prev[:, :-2], jump_cost, out=jump)
        np.maximum(alpha, jump, out=alpha)
        alpha += emit[k]
        np.maximum(best, alpha[:, -1], out=best)
        prev, cur = cur, prev
    return best.astype(np.float32)


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
