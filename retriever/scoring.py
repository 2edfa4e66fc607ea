"""How a query's window vectors become scored entries: the one path that serving and
every evaluation take.

search (the caller's, per window) -> best entry per window (``TermIndex.best_entries``)
-> specificity prior -> second-stage rescoring (phone alignment, fused with the cosine)
-> threshold -> top-k.

The second stage rescores a pool of candidates: the best by cosine among the entries
whose cosine less their prior reaches the threshold (the fused score is never above
that, so no other entry can pass). Without a second stage the scores are the cosines less
the prior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .index import TermIndex

# A threshold below every score (scores are cosines less penalties, in [-1, 1]): ranks
# every entry an index returns, for offline evaluation.
RANK_ALL = -2.0

# (phoneme labels, best windows, cosines less prior) -> fused scores, over one clip.
Rescore = Callable[[list[np.ndarray], np.ndarray, np.ndarray], np.ndarray]


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
) -> list[Scored]:
    """The best ``top_k`` entries at or above ``threshold``, best first.

    ``D``, ``I``: the index's search of the query's windows. For the second stage give
    ``rescore`` (see :data:`Rescore`), each row's phoneme labels ``row_phones``, the
    windows' ``spans`` (start, end frames) and the candidate ``pool`` size (at least
    ``top_k``); without it the cosines less the prior are the scores.
    """
    second = rescore is not None and len(row_phones) > 0
    hits = index.best_entries(
        D, I, threshold, max(top_k, pool) if second else top_k, prior=not second
    )
    if not second or not hits:
        return [Scored(h.entry, h.row, h.window, h.score) for h in hits]
    cosine = np.array([h.score for h in hits]) - index.penalty([h.row for h in hits])
    fused = rescore(
        [row_phones[h.row] for h in hits], np.array([spans[h.window] for h in hits]), cosine
    )
    keep = [k for k in np.argsort(-fused, kind="stable") if fused[k] >= threshold][:top_k]
    return [Scored(hits[k].entry, hits[k].row, hits[k].window, float(fused[k])) for k in keep]
