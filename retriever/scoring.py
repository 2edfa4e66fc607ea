"""How a query's window vectors become scored entries: the one path that serving and
every evaluation take.

search (the caller's, per window) -> best entry per window (``TermIndex.best_entries``)
-> specificity prior -> second-stage rescoring (phone alignment, fused with the cosine)
-> window agreement -> query normalisation -> threshold -> overlap suppression (hints
only) -> top-k.

The second stage rescores a pool of candidates: the best by cosine among the entries
whose cosine less their prior reaches the threshold (the fused score is never above
that, so no other entry can pass). Without a second stage the scores are the cosines less
the prior. The window agreement penalty only lowers scores, so it keeps that pruning
exact. The query normalisation subtracts one number from every score of a query, known
before any candidate is gathered (the threshold is raised by it), so it keeps the pruning
exact and changes no ranking. Overlap suppression decides hints, not rankings: offline
retrieval (Recall@k) ranks without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .index import TermIndex

# A threshold below every score (scores are cosines less penalties, in [-1, 1]): ranks
# every entry an index returns, for offline evaluation.
RANK_ALL = -2.0

# The lowest score an entry counts with in a query's cohort (:class:`Cohort`).
COHORT_FLOOR = -1.0

# (phoneme labels, best windows, cosines less prior) -> fused scores, over one clip.
Rescore = Callable[[list[np.ndarray], np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Agreement:
    """How many of a query's windows must agree on an entry before it keeps its score.

    A spoken term is the best row of many of the windows that overlap it (the window
    lengths and offsets around it); a near miss of ordinary speech wins one or two. An
    entry that is the best row of ``v`` windows loses ``penalty * max(0, windows - v) /
    windows``. The weight and the count come from the checkpoint (``ModelConfig``)."""

    penalty: float = 0.0
    windows: int = 0

    def __bool__(self) -> bool:
        return self.penalty > 0 and self.windows > 0

    def penalties(self, index: TermIndex, I: np.ndarray, entries: np.ndarray) -> np.ndarray:
        """The penalty (>= 0) of each of ``entries`` given the search ``I`` (rows per
        window, best first)."""
        entries = np.asarray(entries, np.int64)
        if not self or len(entries) == 0:
            return np.zeros(len(entries), np.float32)
        top = I[:, 0][I[:, 0] >= 0] if I.shape[1] else np.zeros(0, np.int64)
        won, votes = np.unique(index.row_entry[top], return_counts=True)
        pos = np.searchsorted(won, entries)
        found = (pos < len(won)) & (won[np.minimum(pos, len(won) - 1)] == entries)
        v = np.where(found, votes[np.minimum(pos, len(won) - 1)], 0)
        return (self.penalty * np.maximum(0, self.windows - v) / self.windows).astype(np.float32)


@dataclass(frozen=True)
class Cohort:
    """Query normalisation: every score of a query loses ``weight`` times the mean score
    of the query's ``size`` best entries by cosine less prior, each scored as any
    candidate is (second stage, window agreement).

    Speech the phone head reads less surely (a voice unlike the training voices, noise,
    babble) lets every entry align a little better, the wrong ones too: near misses then
    pass a threshold calibrated on clean training voices. The query's own best entries
    measure how lenient the scoring is on this stretch of audio, and the shift takes it
    back, so that a threshold's precision moves less with the voice and the room (how
    far, and at what recall, is measured in docs/results.md). It is one number per query:
    rankings do not change. The weight and the size come from the
    checkpoint (``ModelConfig.cohort_weight``, ``cohort_size``; 0 = none)."""

    weight: float = 0.0
    size: int = 0

    def __bool__(self) -> bool:
        return self.weight > 0 and self.size > 0

    def shift(
        self,
        index: TermIndex,
        D: np.ndarray,
        I: np.ndarray,
        rescore: Rescore | None = None,
        row_phones: Sequence[np.ndarray] = (),
        spans: np.ndarray | None = None,
        agreement: Agreement | None = None,
    ) -> float:
        """What every score of the query ``D``, ``I`` loses (0 without a cohort or hits)."""
        if not self:
            return 0.0
        hits = index.best_entries(D, I, RANK_ALL, self.size, prior=True)
        if not hits:
            return 0.0
        scores = np.array([h.score for h in hits], np.float32)
        if rescore is not None and len(row_phones) and spans is not None:
            scores = rescore(
                [row_phones[h.row] for h in hits], np.array([spans[h.window] for h in hits]), scores
            )
        if agreement:
            scores = scores - agreement.penalties(index, I, [h.entry for h in hits])
        # An entry whose phonemes cannot align in its window scores far below -1 (more
        # phonemes than frames): it counts as the worst cosine, not as minus infinity.
        return self.weight * float(np.mean(np.maximum(scores, COHORT_FLOOR)))


@dataclass(frozen=True)
class Suppression:
    """Two entries found in the same stretch of speech are a spoken term and its near miss
    (or two near misses): the better one stands. A hit whose window overlaps a better
    hit's by at least ``fraction`` of the shorter window is dropped, unless one's form
    nests in the other's ("stem cell" in "stem cell transplant"): both of those are kept.
    The fraction comes from the checkpoint (``ModelConfig.overlap_suppression``; 0 =
    none)."""

    fraction: float = 0.0

    def __bool__(self) -> bool:
        return self.fraction > 0

    def keep(
        self,
        starts: Sequence[float],
        ends: Sequence[float],
        forms: Sequence[str],
        limit: int | None = None,
    ) -> list[bool]:
        """Which of some hits, given best first by their windows' ``starts`` and ``ends``
        and their forms, survive (greedy: a dropped hit drops nothing). With ``limit``,
        only the first ``limit`` survivors are marked (later hits cannot change them)."""
        kept: list[int] = []
        words: dict[int, tuple[str, ...]] = {}

        def words_of(i: int) -> tuple[str, ...]:
            if i not in words:
                words[i] = tuple(forms[i].lower().split())
            return words[i]

        out = [False] * len(starts)
        for i in range(len(starts)):
            if limit is not None and len(kept) >= limit:
                break
            a, b = starts[i], ends[i]
            ok = True
            for k in kept:
                inter = min(b, ends[k]) - max(a, starts[k])
                shorter = min(b - a, ends[k] - starts[k])
                if (
                    inter > 0
                    and inter >= self.fraction * shorter
                    and not _nested(words_of(i), words_of(k))
                ):
                    ok = False
                    break
            out[i] = ok
            if ok:
                kept.append(i)
        return out


def _nested(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether the shorter word sequence is a contiguous run of the longer one."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    n = len(short)
    return n > 0 and any(long_[i : i + n] == short for i in range(len(long_) - n + 1))


@dataclass(frozen=True)
class Scored:
    entry: int  # index of the entry in its glossary
    row: int  # the index row (entry or alias form) that scored best
    window: int  # the query window that found it
    score: float


def score_entries(
    index: TermIndex,
    D: np.ndarray,
    I: np.ndarray,
    threshold: float,
    top_k: int,
    *,
    row_phones: tuple[np.ndarray, ...] | list[np.ndarray] = (),
    spans: np.ndarray | None = None,
    rescore: Rescore | None = None,
    pool: int = 0,
    agreement: Agreement | None = None,
    suppression: Suppression | None = None,
    row_forms: Sequence[str] = (),
    cohort: Cohort | None = None,
) -> list[Scored]:
    """The best ``top_k`` entries at or above ``threshold``, best first.

    ``D``, ``I``: the index's search of the query's windows. For the second stage give
    ``rescore`` (see :data:`Rescore`), each row's phoneme labels ``row_phones``, the
    windows' ``spans`` (start, end frames) and the candidate ``pool`` size (at least
    ``top_k``); without it the cosines less the prior are the scores. ``agreement``: the
    window agreement penalty (none without it), subtracted from the second stage's pool
    (or every entry found, without one) before the best ``top_k`` are kept.
    ``suppression``: hits that pass the threshold are thinned by window overlap
    (:class:`Suppression`; it needs ``spans`` and each row's form ``row_forms``) before
    the best ``top_k`` are kept. ``cohort``: the query normalisation (:class:`Cohort`;
    none without it), subtracted from every score.
    """
    second = rescore is not None and len(row_phones) > 0
    agree = bool(agreement)  # None or a zero penalty: no agreement
    suppress = bool(suppression) and spans is not None
    shift = 0.0
    if cohort:
        shift = cohort.shift(index, D, I, rescore if second else None, row_phones, spans, agreement)
    # A score reaches the threshold only if it did before the shift was subtracted.
    gather = threshold + shift if threshold > RANK_ALL else threshold
    # The pool the penalties and the suppression may reorder or thin: the second stage's,
    # else every entry found.
    n = max(top_k, pool) if second else (max(top_k, I.size) if agree or suppress else top_k)
    hits = index.best_entries(D, I, gather, n, prior=not second)
    if not hits or not (second or agree or suppress):
        return [Scored(h.entry, h.row, h.window, h.score - shift) for h in hits]
    if second:
        cosine = np.array([h.score for h in hits]) - index.penalty([h.row for h in hits])
        scores = rescore(
            [row_phones[h.row] for h in hits], np.array([spans[h.window] for h in hits]), cosine
        )
    else:
        scores = np.array([h.score for h in hits], np.float32)
    if agree:
        scores = scores - agreement.penalties(index, I, [h.entry for h in hits])
    scores = scores - np.float32(shift)
    keep = [k for k in np.argsort(-scores, kind="stable") if scores[k] >= threshold]
    if suppress:
        win = np.asarray(spans)[[hits[k].window for k in keep]].reshape(-1, 2)
        forms = [row_forms[hits[k].row] for k in keep]
        survive = suppression.keep(win[:, 0], win[:, 1], forms, limit=top_k)
        keep = [k for k, ok in zip(keep, survive, strict=True) if ok]
    return [
        Scored(hits[k].entry, hits[k].row, hits[k].window, float(scores[k])) for k in keep[:top_k]
    ]
