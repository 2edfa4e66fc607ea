"""Offline retrieval evaluation and threshold calibration.

For each term occurrence the windows covering it (IoU with the span >= 0.5, from the
same multi-scale layout the server uses) are searched against a glossary of the test
terms padded with distractors to each size; an entry's score is its best window.
Reports Recall@1/5/10 and MRR per glossary size.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rasst.retriever.g2p import normalize_term
from rasst.retriever.index import TermIndex
from rasst.retriever.model import DualEncoder, int8_speech_head
from rasst.retriever.rescore import alignment_regions, keyword_scores
from rasst.retriever.scoring import RANK_ALL, Agreement, score_entries

from .features import FeatureCache

logger = logging.getLogger(__name__)

COVER_IOU = 0.5


def covering_windows(spans: np.ndarray, a: int, b: int, min_iou: float = COVER_IOU) -> np.ndarray:
    """Indices of windows [s, e) whose IoU with [a, b) is at least ``min_iou`` (the best one if none)."""
    inter = np.clip(np.minimum(spans[:, 1], b) - np.maximum(spans[:, 0], a), 0, None)
    union = np.maximum(spans[:, 1], b) - np.minimum(spans[:, 0], a)
    iou = inter / np.maximum(union, 1)
    idx = np.nonzero(iou >= min_iou)[0]
    return idx if len(idx) else np.array([int(iou.argmax())])


@dataclass
class OccurrenceVectors:
    vectors: list[np.ndarray]  # per occurrence: (n_windows, E) covering windows
    all_vectors: list[np.ndarray]  # per utterance: (n_windows, E) every window
    terms: list[str]
    occ_utt: np.ndarray
    # Per occurrence, its covering windows' [start, end) frames; per utterance, every
    # window's (the second stage aligns in them, hints are thinned by their overlap); and
    # the phone head's relative log-probs (empty without one).
    spans: list[np.ndarray] = field(default_factory=list)
    all_spans: list[np.ndarray] = field(default_factory=list)
    phone_logprobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class Rescorer:
    """A model's second stage over one glossary: each row's phoneme labels."""

    model: DualEncoder
    row_phones: list[np.ndarray]

    @classmethod
    def of(cls, model: DualEncoder, unit_strings: list[str]) -> Rescorer | None:
        """Over a glossary given as ``model.term_units`` of its rows (None without a phone
        head)."""
        if model.phone is None:
            return None
        return cls(model, model.phone_labels(unit_strings))

    def candidates(
        self,
        index: TermIndex,
        vectors,
        spans,
        rel,
        threshold: float,
        top_k: int = 0,
        per_window: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A query's best ``max(rescore_top, top_k)`` entries by cosine among those whose
        cosine less their prior reaches ``threshold``, with what fusing needs: (entries,
        cosines less their prior, keyword scores, phoneme counts). The query is its
        windows' ``vectors`` and ``spans`` over a clip whose phone log-probs are ``rel``;
        each window votes for its ``per_window`` nearest rows (default: ``rescore_top``)."""
        c = self.model.config
        D, I = index.search(vectors, min(per_window or c.rescore_top, index.ntotal))
        # The pool is chosen by cosine; the prior is subtracted from the candidates' scores.
        hits = index.best_entries(
            D, I, threshold=threshold, top_k=max(c.rescore_top, top_k), prior=False
        )
        labels = [self.row_phones[h.row] for h in hits]
        windows = np.array([spans[h.window] for h in hits], np.int64)
        regions = alignment_regions(windows, c.rescore_margin, len(rel))
        return (
            np.array([h.entry for h in hits], np.int64),
            np.array([h.score for h in hits], np.float32) - index.penalty([h.row for h in hits]),
            keyword_scores(rel, labels, regions),
            np.array([len(x) for x in labels], np.int64),
        )

    def hits(
        self,
        index: TermIndex,
        vectors,
        spans,
        rel,
        threshold: float,
        top_k: int,
        forms: Sequence[str] | None = None,
        per_window=None,
    ):
        """(entry, fused score) of a query's best ``top_k`` entries at or above
        ``threshold``, scored as the server scores them (``rasst.retriever.scoring``); each
        window votes for its ``per_window`` nearest rows (default: ``rescore_top``). With
        the rows' ``forms``, thinned by the model's overlap suppression as served hints
        are; without them, a ranking (Recall@k)."""
        c = self.model.config
        D, I = index.search(vectors, min(per_window or c.rescore_top, index.ntotal))
        scored = score_entries(
            index,
            D,
            I,
            threshold,
            top_k,
            row_phones=self.row_phones,
            spans=spans,
            rescore=functools.partial(self.model.rescore, rel),
            pool=c.rescore_top,
            agreement=self.model.agreement,
            suppression=self.model.suppression if forms is not None else None,
            row_forms=forms or (),
            cohort=self.model.cohort,
        )
        return [(h.entry, h.score) for h in scored]


@torch.no_grad()
def encode_occurrences(
    model: DualEncoder, cache: FeatureCache, precision: str = "float32"
) -> OccurrenceVectors:
    """Window vectors of every utterance; ``precision="int8"`` uses the server's int8 head."""
    model.eval()
    head = int8_speech_head(model.speech) if precision == "int8" else None
    per_utt: list[np.ndarray] = []
    per_utt_spans: list[np.ndarray] = []
    rel: list[np.ndarray] = []
    for u in range(len(cache.offsets) - 1):
        fr = torch.from_numpy(cache.utt_frames(u).astype(np.float32))
        v, spans = model.encode_audio(fr, head=head)
        per_utt.append(v)
        per_utt_spans.append(spans)
        if model.phone is not None:
            rel.append(model.phone_logprobs(fr))
    vecs, occ_spans = [], []
    for i, u in enumerate(cache.occ_utt):
        a, b = cache.occ_span[i]
        cover = covering_windows(per_utt_spans[u], a, b)
        vecs.append(per_utt[u][cover])
        occ_spans.append(per_utt_spans[u][cover])
    return OccurrenceVectors(
        vecs,
        per_utt,
        list(cache.occ_term),
        cache.occ_utt,
        occ_spans,
        per_utt_spans,
        rel,
    )


def prefix(prior: np.ndarray | None, size: int) -> np.ndarray | None:
    """The first ``size`` rows of a nested glossary's prior (``DualEncoder.row_penalty``)."""
    return None if prior is None else prior[:size]


def nested_index(
    vecs: np.ndarray, row_term: np.ndarray, prior: np.ndarray | None, size: int, **kw
) -> TermIndex:
    """The index of a nested glossary's first ``size`` terms: the prefix of its rows
    (``DualEncoder.glossary_rows``) that spell them."""
    n = int(np.searchsorted(row_term, size))
    return TermIndex(vecs[:n], row_term[:n], row_prior=prefix(prior, n), **kw)


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(normalize_term(text).lower()))


def drop_spoken(
    distractors: list[str], transcripts: list[str], test_terms: list[str]
) -> tuple[list[str], int]:
    """Distractors that are never spoken: without those whose words occur as a word
    sequence in any transcript (a hint for one of them is a right answer, not a false
    alarm) or inside a test term (a sub-phrase of what is said). Returns (kept, dropped)."""
    spans = [_words(t) for t in (*transcripts, *test_terms)]
    longest = max((len(_words(d)) for d in distractors), default=0)
    said: set[tuple[str, ...]] = set()
    for w in spans:
        for n in range(1, min(longest, len(w)) + 1):
            said.update(w[i : i + n] for i in range(len(w) - n + 1))
    kept = [d for d in distractors if _words(d) and _words(d) not in said]
    return kept, len(distractors) - len(kept)


def build_glossary(
    test_terms: list[str], distractors: list[str], size: int, seed: int = 0
) -> list[str]:
    """Test terms first, then distractors (not equal to any test term) up to ``size``."""
    seen = {normalize_term(t).lower() for t in test_terms}
    uniq = list(dict.fromkeys(test_terms))
    rng = np.random.default_rng(seed)
    pool = [d for d in distractors if normalize_term(d).lower() not in seen]
    need = max(0, size - len(uniq))
    if need > len(pool):
        raise ValueError(
            f"glossary size {size} needs {need} distractors, only {len(pool)} available"
        )
    pick = rng.choice(len(pool), size=need, replace=False) if need else []
    return uniq + [pool[i] for i in sorted(pick)]


def ranked_entries(
    index: TermIndex,
    vectors: np.ndarray,
    rescorer: Rescorer | None = None,
    spans: np.ndarray | None = None,
    rel: np.ndarray | None = None,
    top_k: int = 64,
    agreement: Agreement | None = None,
) -> list[int]:
    """A term occurrence's best ``top_k`` entries, best first, from its covering windows'
    ``vectors``: by cosine, or by fused score with ``rescorer`` (which needs the windows'
    ``spans`` and the clip's phone log-probs ``rel``; it brings its model's window
    agreement, ``agreement`` applies without one)."""
    if rescorer is not None:
        return [e for e, _ in rescorer.hits(index, vectors, spans, rel, RANK_ALL, top_k)]
    D, I = index.search(vectors, min(top_k, index.ntotal))
    return [h.entry for h in score_entries(index, D, I, RANK_ALL, top_k, agreement=agreement)]


def retrieval_metrics(
    occ: OccurrenceVectors,
    glossary_vecs: np.ndarray,
    glossary_terms: list[str],
    ks=(1, 5, 10),
    groups: list[str] | None = None,
    precision: str = "float32",
    rescorer: Rescorer | None = None,
    row_prior: np.ndarray | None = None,
    agreement: Agreement | None = None,
    row_entry: np.ndarray | None = None,
) -> dict:
    """Recall@k and MRR over occurrences; with ``groups`` (one label per occurrence, e.g.
    the TTS engine), recall@k per group too. ``row_entry``: the glossary term each row of
    ``glossary_vecs`` spells (default: one row per term). ``precision``: the exact index's arithmetic;
    ``rescorer``: the second stage, over the same glossary (needs ``occ`` with spans);
    ``row_prior``: the model's specificity prior of each glossary row; ``agreement``: the
    model's window agreement penalty."""
    if row_entry is None:
        row_entry = np.arange(len(glossary_terms))
    index = TermIndex(glossary_vecs, row_entry, precision=precision, row_prior=row_prior)
    pos = {normalize_term(t).lower(): i for i, t in enumerate(glossary_terms)}
    kmax = max(ks)
    ranks = []
    for i, (v, term) in enumerate(zip(occ.vectors, occ.terms, strict=True)):
        if rescorer is not None:
            order = ranked_entries(
                index, v, rescorer, occ.spans[i], occ.phone_logprobs[occ.occ_utt[i]]
            )
        else:
            order = ranked_entries(index, v, agreement=agreement)
        target = pos[normalize_term(term).lower()]
        ranks.append(order.index(target) + 1 if target in order else 10**9)
    r = np.asarray(ranks)
    out = {f"recall@{k}": float((r <= k).mean()) for k in ks}
    out["mrr"] = float(np.where(r <= kmax * 10, 1.0 / r, 0.0).mean())
    out["n_occurrences"] = len(r)
    out["index"] = index.kind
    if groups is not None:
        g = np.asarray(groups)
        out["by_group"] = {
            name: {
                **{f"recall@{k}": float((r[g == name] <= k).mean()) for k in ks},
                "n": int((g == name).sum()),
            }
            for name in sorted(set(groups))
        }
    return out


def evaluate(
    model: DualEncoder,
    cache: FeatureCache,
    distractors: list[str],
    sizes: list[int],
    glossary_terms: list[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    precision: str = "float32",
    transcripts: list[str] | None = None,
) -> dict:
    """Recall@k and MRR at each glossary size. With ``transcripts`` (the manifest's texts),
    distractors that are spoken in them or inside a test term are left out first."""
    occ = encode_occurrences(model, cache, precision)
    test_terms = glossary_terms or list(dict.fromkeys(occ.terms))
    report: dict = {"sizes": {}}
    if transcripts is not None:
        distractors, report["distractors_dropped"] = drop_spoken(
            distractors, transcripts, test_terms
        )
    # Group occurrences by speech source ("flite", "piper", "espeak-ng", "human"...).
    engines = [cache.utt_speaker[u].split(":")[0] or "?" for u in occ.occ_utt]
    biggest = build_glossary(test_terms, distractors, max(sizes), seed)
    unit_strings, row_term = model.glossary_rows(biggest)
    vecs = model.encode_units(unit_strings, progress=progress)
    rescorer = Rescorer.of(model, unit_strings)
    prior = model.row_penalty(vecs, unit_strings)
    for size in sizes:
        # Nested glossaries: each size is a prefix of the biggest, test terms always in.
        n = int(np.searchsorted(row_term, size))
        report["sizes"][str(size)] = retrieval_metrics(
            occ,
            vecs[:n],
            biggest[:size],
            groups=engines,
            precision=precision,
            rescorer=rescorer,
            row_prior=prefix(prior, n),
            agreement=model.agreement,
            row_entry=row_term[:n],
        )
        report["sizes"][str(size)]["rows"] = n
    return report


CALIBRATION_SIZES = (1000, 10_000, 100_000)


def calibrate_thresholds(
    model: DualEncoder,
    cache: FeatureCache,
    distractors: list[str],
    sizes: tuple[int, ...] = CALIBRATION_SIZES,
    top_k: int = 10,
    seed: int = 0,
    occ: OccurrenceVectors | None = None,
    precision_target: float = 0.9,
) -> list[dict]:
    """Per glossary size, the score threshold that maximises hit F1 on held-in (dev)
    utterances, and the best recall at ``precision_target`` or above (``recall_at_p``, at
    ``threshold_at_p``).
    Sizes the terms and distractors cannot fill are skipped. ``occ``: the cache's
    ``encode_occurrences``, when already computed.

    Per utterance, every window is searched; an entry is returned when its best window
    scores above the threshold (at most top_k). A returned entry is correct when it was
    spoken in the utterance. Glossaries are nested (each a prefix of the largest), so a
    larger size only adds near misses; its threshold is kept at least the smaller one's.
    """
    occ = occ or encode_occurrences(model, cache)
    terms = list(dict.fromkeys(occ.terms))
    sizes = tuple(s for s in sorted(set(sizes)) if s <= len(terms) + len(distractors))
    if not sizes:
        return []
    biggest = build_glossary(terms, distractors, sizes[-1], seed)
    unit_strings, row_term = model.glossary_rows(biggest)
    row_forms = [biggest[i] for i in row_term]
    vecs = model.encode_units(unit_strings)
    rescorer = Rescorer.of(model, unit_strings)
    prior = model.row_penalty(vecs, unit_strings)
    pos = {normalize_term(t).lower(): i for i, t in enumerate(biggest)}
    spoken: dict[int, set[int]] = {}
    for u, t in zip(occ.occ_utt, occ.terms, strict=True):
        spoken.setdefault(int(u), set()).add(pos[normalize_term(t).lower()])
    n_pos = sum(len(w) for w in spoken.values())
    out = []
    for size in sizes:
        index = nested_index(vecs, row_term, prior, size)
        scored = []  # (score, correct)
        for u, want in spoken.items():
            if rescorer is not None:
                found = rescorer.hits(
                    index,
                    occ.all_vectors[u],
                    occ.all_spans[u],
                    occ.phone_logprobs[u],
                    RANK_ALL,
                    top_k,
                    row_forms,
                )
            else:
                D, I = index.search(occ.all_vectors[u], 16)
                found = [
                    (h.entry, h.score)
                    for h in score_entries(
                        index,
                        D,
                        I,
                        RANK_ALL,
                        top_k,
                        spans=occ.all_spans[u],
                        agreement=model.agreement,
                        suppression=model.suppression,
                        row_forms=row_forms,
                        cohort=model.cohort,
                    )
                ]
            scored += [(score, entry in want) for entry, score in found]
        scored.sort(key=lambda x: -x[0])
        tp = fp = 0
        best = (0.0, 0.5, 0.0, 0.0)
        recall_at_p, threshold_at_p = 0.0, 1.0
        for s, ok in scored:
            tp += ok
            fp += not ok
            p, r = tp / (tp + fp), tp / n_pos
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            if f1 > best[0]:
                best = (f1, s, p, r)
            if p >= precision_target and r > recall_at_p:
                recall_at_p, threshold_at_p = r, s
        thr = round(float(best[1]) - 1e-4, 4)
        if out:
            thr = max(thr, out[-1]["threshold"])
        out.append(
            {
                "threshold": thr,
                "f1": best[0],
                "precision": best[2],
                "recall": best[3],
                "recall_at_p": recall_at_p,
                "threshold_at_p": round(float(threshold_at_p) - 1e-4, 4),
                "precision_target": precision_target,
                "glossary_size": size,
            }
        )
    return out


def print_table(report: dict) -> str:
    lines = [
        "| glossary size | R@1 | R@5 | R@10 | MRR | occurrences |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size, m in report["sizes"].items():
        lines.append(
            f"| {int(size):,} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {m['mrr']:.3f} | {m['n_occurrences']} |"
        )
    return "\n".join(lines)


def plot_recall(report: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in report["sizes"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in (1, 5, 10):
        ax.plot(
            sizes,
            [report["sizes"][str(s)][f"recall@{k}"] for s in sizes],
            marker="o",
            label=f"R@{k}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("glossary entries")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "recall vs glossary size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def condition_table(report: dict) -> str:
    """One row per acoustic condition: R@1 / R@10 at each size (offline reports), or hint
    precision / recall (streaming reports)."""
    conds = report["by_condition"]
    sizes = list(next(iter(conds.values()))["sizes"])
    streaming = "hint_recall" in next(iter(conds.values()))["sizes"][sizes[0]]
    cols = ("P", "R") if streaming else ("R@1", "R@10")
    keys = ("hint_precision", "hint_recall") if streaming else ("recall@1", "recall@10")
    head = " | ".join(f"{c} @{int(s):,}" for s in sizes for c in cols)
    lines = [f"| condition | {head} |", "|---|" + "---:|" * (len(sizes) * 2)]
    for name, rep in conds.items():
        cells = " | ".join(f"{rep['sizes'][s][k]:.3f}" for s in sizes for k in keys)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def plot_conditions(report: dict, path: Path, title: str = "") -> None:
    """Recall@10 (or hint recall) against glossary size, one line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, rep in report["by_condition"].items():
        sizes = [int(s) for s in rep["sizes"]]
        first = rep["sizes"][str(sizes[0])]
        key = "hint_recall" if "hint_recall" in first else "recall@10"
        ax.plot(sizes, [rep["sizes"][str(s)][key] for s in sizes], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("glossary entries")
    ax.set_ylabel(key.replace("_", " ").replace("recall@10", "R@10"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "by acoustic condition")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
