"""Streaming hint quality: play a manifest through the real client.

Utterances are joined into talks of ``TALK_UTTERANCES`` each and streamed chunk by
chunk under a latency budget. Definitions:

- an occurrence is *recalled* when its entry is delivered (returned with fresh evidence)
  at a step from the one where it starts to the one after the chunk where it ends;
- a delivered hint is *correct* when its entry was spoken inside that step's look-back
  span (the chunk plus ``lookback_s`` before it, and the previous chunk for a late hint).

Without ``--server`` an in-process server is started on 127.0.0.1:0 with the checkpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasst.client.api import Client, SessionOptions, make_channel
from rasst.client.merger import HintMerger, MergerOptions
from rasst.client.translate import run_translator
from rasst.retriever.config import EngineConfig
from rasst.retriever.scoring import Suppression

from rasst.pcm import CHUNK_S, LOOKBACK_S

logger = logging.getLogger(__name__)

TALK_UTTERANCES = 10
SAMPLE_RATE = 16000


def make_talks(
    rows: list[dict], per_talk: int = TALK_UTTERANCES
) -> list[tuple[np.ndarray, list[dict]]]:
    """Join utterances into talks; returns (samples, occurrences with talk-relative times)."""
    from rasst.retriever.audio import load_audio

    talks = []
    for i in range(0, len(rows), per_talk):
        xs, occs, t = [], [], 0.0
        for r in rows[i : i + per_talk]:
            x = load_audio(r["audio_path"])
            for term in r["terms"]:
                occs.append(
                    {"term": term["term"], "start": t + term["start"], "end": t + term["end"]}
                )
            xs.append(x)
            t += len(x) / SAMPLE_RATE
        talks.append((np.concatenate(xs), occs))
    return talks


EDGE_S = 0.3  # an occurrence this close to a stream's start or end is at its edge


def score(
    records_by_talk: list[list],
    occs_by_talk: list[list[dict]],
    chunk_s: float,
    lookback_s: float,
    id_of: dict[str, str],
    durations: list[float] | None = None,
) -> dict:
    """Hint precision, recall and F1 (see the module docstring). With each talk's
    ``durations``, recall is also split by where the occurrence lies: starting within
    ``EDGE_S`` of the stream's start, ending within ``EDGE_S`` of its end, or between."""
    tp_hints = n_hints = 0
    recalled = n_occ = 0
    edges = {"start": [0, 0], "end": [0, 0], "middle": [0, 0]}  # [recalled, occurrences]
    for t, (records, occs) in enumerate(zip(records_by_talk, occs_by_talk, strict=True)):
        spoken = [(id_of[o["term"].lower()], o["start"], o["end"]) for o in occs]
        delivered: dict[str, list[int]] = {}
        for r in records:
            step_end = r.chunk_end_s
            span_start = (
                step_end - chunk_s - lookback_s - chunk_s
            )  # one extra chunk: late hints fold in
            for eid in r.fresh:
                n_hints += 1
                delivered.setdefault(eid, []).append(r.step)
                if any(e == eid and s < step_end and en > span_start for e, s, en in spoken):
                    tp_hints += 1
        for eid, s, e in spoken:
            n_occ += 1
            first, last = int(s // chunk_s), int(e // chunk_s) + 1
            hit = any(first <= st <= last for st in delivered.get(eid, []))
            recalled += hit
            if durations is not None:
                where = "start" if s < EDGE_S else "end" if e > durations[t] - EDGE_S else "middle"
                edges[where][0] += hit
                edges[where][1] += 1
    p = tp_hints / n_hints if n_hints else 0.0
    r = recalled / n_occ if n_occ else 0.0
    out = {
        "hint_precision": p,
        "hint_recall": r,
        "hint_f1": 2 * p * r / (p + r) if p + r else 0.0,
        "n_hints": n_hints,
        "n_occurrences": n_occ,
    }
    if durations is not None:
        out["recall_by_position"] = {
            k: {"recall": a / n if n else None, "n": n} for k, (a, n) in edges.items()
        }
    return out


async def _play(
    address: str,
    talks,
    glossary_id: str,
    opt: StreamOptions,
    threshold: float,
    concurrency: int = 2,
):
    # The server returns its top-k with no threshold; the merger applies the model's
    # threshold (the same hints as a server-side threshold unless more than top-k pass),
    # so the recorded responses can be replayed at other thresholds for a PR curve.
    opts = SessionOptions(
        glossary_id=glossary_id,
        target_lang=opt.lang,
        chunk_s=opt.chunk,
        lookback_s=opt.lookback,
        deadline_ms=5000,
        score_threshold=-1.0,
    )
    sem = asyncio.Semaphore(concurrency)
    channel = make_channel(address)
    results: list = [None] * len(talks)
    raw: list = [None] * len(talks)

    async def one(i, samples):
        async with sem:
            responses: list = []
            recs, _ = await run_translator(
                channel,
                samples,
                SAMPLE_RATE,
                opts,
                opt.budget_ms,
                opt.realtime,
                merger_options=MergerOptions(ttl_s=opt.chunk + opt.lookback, min_score=threshold),
                responses=responses,
            )
            results[i] = recs
            raw[i] = responses

    from tqdm import tqdm

    tasks = [asyncio.create_task(one(i, s)) for i, (s, _) in enumerate(talks)]
    for t in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc="streaming", unit="talk"):
        await t
    await channel.close()
    return results, raw


def _penalised(resp, penalty: dict[str, float]):
    out = type(resp)()
    out.CopyFrom(resp)
    for h in out.hits:
        h.score -= penalty.get(h.entry_id, 0.0)
    return out


def _suppressed(resp, suppression: Suppression):
    """``resp`` with its hits thinned as the server's overlap suppression would (hits best
    first; a suppressed hit is never above one that suppresses it, so the result is the
    same whichever threshold is applied after)."""
    out = type(resp)()
    out.CopyFrom(resp)
    hits = sorted(out.hits, key=lambda h: -h.score)
    keep = suppression.keep(
        [h.start_s for h in hits], [h.end_s for h in hits], [h.term for h in hits]
    )
    kept = [h for h, ok in zip(hits, keep, strict=True) if ok]
    del out.hits[:]
    out.hits.extend(kept)
    return out


def adjusted(
    responses: list, penalty: dict[str, float] | None = None, suppression: Suppression | None = None
) -> list:
    """Recorded responses as a server with ``penalty`` (entry id -> score penalty) and
    ``suppression`` would have sent them."""
    if penalty:
        responses = [_penalised(r, penalty) for r in responses]
    if suppression:
        responses = [_suppressed(r, suppression) for r in responses]
    return responses


@dataclass
class _Replayed:
    step: int
    chunk_end_s: float
    fresh: list[str]


def replay(
    responses: list,
    n_steps: int,
    chunk_s: float,
    lookback_s: float,
    threshold: float,
    penalty: dict[str, float] | None = None,
) -> list[_Replayed]:
    """Re-merge recorded responses at another threshold, each arriving in its own step;
    ``penalty`` (entry id -> score penalty) is subtracted from the recorded scores first."""
    m = HintMerger(MergerOptions(ttl_s=chunk_s + lookback_s, min_score=threshold))
    by_seq = {r.sequence: r for r in adjusted(responses, penalty)}
    out = []
    for i in range(n_steps):
        resp = by_seq.get(i)
        if resp is not None:
            m.add(resp)
        res = m.step(resp.chunk_end_s if resp is not None else None)
        end = resp.chunk_end_s if resp is not None else 0.0
        out.append(_Replayed(i, end, [h.entry_id for h in res.fresh]))
    return out


@dataclass
class StreamOptions:
    """How a manifest is played (``rasst eval --streaming``'s flags)."""

    lang: str = "de"
    chunk: float = CHUNK_S
    lookback: float = LOOKBACK_S
    budget_ms: float = 100.0
    realtime: bool = False
    # In-process server only, defaults as ``rasst serve``'s:
    threads: int = EngineConfig.threads
    window_top: int = EngineConfig.window_top
    precision: str = EngineConfig.precision
    rescore_candidates: int = EngineConfig.rescore_candidates


@dataclass
class Played:
    """A manifest played through the client: what every step received."""

    records: list  # per talk, the translator's step records
    raw: list  # per talk, the server's responses (all hits: no threshold)
    occs: list[list[dict]]  # per talk, the spoken occurrences (talk-relative times)
    id_of: dict[str, str]  # lower-cased term -> glossary entry id
    talks_audio_s: float
    glossary_size: int
    wall_s: float
    threshold: float  # the merger's: what ``records`` kept
    durations: list[float]  # per talk, seconds of audio
    distractors_dropped: int  # spoken in the manifest or inside a test term


def play_manifest(
    manifest,
    checkpoint,
    distractors: list[str],
    size: int,
    opt: StreamOptions,
    threshold: float | None = None,
    server: str | None = None,
    glossary_id: str | None = None,
    per_talk: int = TALK_UTTERANCES,
) -> Played:
    """Join the manifest's utterances into talks and play them through the real client,
    against ``server`` or an in-process server on 127.0.0.1:0 holding ``checkpoint``, with
    a glossary of the manifest's terms plus ``distractors`` up to ``size`` entries (more
    when the manifest has more terms). The merger keeps hints at ``threshold`` or above
    (None: the model's own default for the glossary as built, as the server would use);
    the raw responses keep everything. Distractors spoken in the manifest's transcripts, or
    inside one of its terms, are left out (``Played.distractors_dropped``). ``per_talk``:
    utterances per stream (1 streams each utterance as its own session)."""
    from rasst.retriever.config import ServerConfig
    from rasst.retriever.model import DualEncoder
    from rasst.retriever.server import create_server, drain

    from .evaluate import build_glossary, drop_spoken
    from .manifests import read_manifest

    rows = read_manifest(manifest)
    talks = make_talks(rows, per_talk)
    terms = list(dict.fromkeys(o["term"] for _, occs in talks for o in occs))
    distractors, dropped = drop_spoken(distractors, [r.get("text", "") for r in rows], terms)
    gl_terms = build_glossary(terms, distractors, size)
    if threshold is None:
        threshold = DualEncoder.load_config(checkpoint).threshold_for(len(gl_terms))
    # Word-list distractors have no translations: the term stands in for it.
    entries = [
        {"id": f"e{i}", "term": t, "translations": {opt.lang: t}} for i, t in enumerate(gl_terms)
    ]
    id_of = {t.lower(): f"e{i}" for i, t in enumerate(gl_terms)}
    content = "".join(json.dumps(e) + "\n" for e in entries).encode()

    async def go():
        srv = state = tmp = None
        address, token = server, None
        if address is None:
            tmp = tempfile.TemporaryDirectory()
            cfg = ServerConfig(
                address="127.0.0.1:0",
                checkpoint=str(checkpoint),
                data_dir=tmp.name,
                admin_token="eval",
                demo_glossary=False,
                threads=opt.threads,
                window_top=opt.window_top,
                precision=opt.precision,
                rescore_candidates=opt.rescore_candidates,
            )
            srv, port, state = await create_server(cfg)
            address, token = f"127.0.0.1:{port}", "eval"
        import os

        token = token or os.environ.get("RASST_ADMIN_TOKEN")
        gid = glossary_id or "streaming-eval"
        try:
            if not glossary_id:
                c = Client(address, token, timeout=600)
                try:
                    g = await asyncio.to_thread(c.put_glossary, gid, None, content, "jsonl")
                    for w in g.warnings:  # e.g. a glossary searched approximately
                        logger.warning("glossary %s: %s", gid, w)
                finally:
                    c.close()
            t0 = time.time()
            records, raw = await _play(address, talks, gid, opt, threshold)
            return records, raw, time.time() - t0
        finally:
            if srv is not None:
                await drain(srv, state, 1.0)
                tmp.cleanup()

    records, raw, wall = asyncio.run(go())
    return Played(
        records,
        raw,
        [o for _, o in talks],
        id_of,
        sum(len(s) for s, _ in talks) / SAMPLE_RATE,
        len(gl_terms),
        wall,
        threshold,
        [len(x) / SAMPLE_RATE for x, _ in talks],
        dropped,
    )


def rescore_at(
    played: Played,
    opt: StreamOptions,
    threshold: float,
    penalty: dict[str, float] | None = None,
    suppression: Suppression | None = None,
    raw: list | None = None,
) -> dict:
    """Hint precision / recall / F1 had the merger kept hints at ``threshold`` (the recorded
    responses replayed, each arriving in its own step: no new audio), with ``penalty``
    subtracted from each entry's recorded scores and ``suppression`` applied (or ``raw``,
    per talk the responses already ``adjusted``)."""
    if raw is None:
        raw = [adjusted(r, penalty, suppression) for r in played.raw]
    replayed = [
        replay(r, len(rec), opt.chunk, opt.lookback, float(threshold))
        for r, rec in zip(raw, played.records, strict=True)
    ]
    return score(replayed, played.occs, opt.chunk, opt.lookback, played.id_of)


def operating_point(
    played: Played,
    opt: StreamOptions,
    precision_target: float = 0.9,
    step: float = 0.005,
    penalty: dict[str, float] | None = None,
    suppression: Suppression | None = None,
) -> dict:
    """The threshold with the most hint recall at ``precision_target`` or above (the
    best-F1 one when none reaches it), searched on a grid over the recorded scores (less
    ``penalty``, thinned by ``suppression``)."""
    raw = [adjusted(r, penalty, suppression) for r in played.raw]
    scores = [h.score for rs in raw for r in rs for h in r.hits]
    if not scores:
        raise ValueError("no hits were recorded: nothing to calibrate")
    lo, hi = np.floor(min(scores) / step) * step, np.ceil(max(scores) / step) * step
    best_p = best_f = None
    for t in np.arange(lo, hi + step, step):
        m = {"threshold": round(float(t), 4), **rescore_at(played, opt, float(t), raw=raw)}
        if m["hint_precision"] >= precision_target and (
            best_p is None or m["hint_recall"] > best_p["hint_recall"]
        ):
            best_p = m
        if best_f is None or m["hint_f1"] > best_f["hint_f1"]:
            best_f = m
    chosen = best_p or best_f
    return {**chosen, "rule": "recall at precision" if best_p else "best F1"}


# The hint precision the served threshold must reach at each glossary size (the smallest
# listed size at or above a glossary's applies; 0.9 beyond): a bigger glossary offers more
# near misses, and most users of one trade a little precision for recall.
PRECISION_TARGETS = ((1000, 0.92), (10_000, 0.90), (100_000, 0.85))
LENGTH_PENALTIES = (0.0, 0.1, 0.2, 0.3)  # candidates, chosen on dev with the thresholds
LENGTH_REF = 12  # phonemes: forms shorter than this are penalised
# Window agreement candidates (agreement_penalty, agreement_windows), chosen on dev with
# the thresholds; (0, 0) is none.
AGREEMENTS = ((0.0, 0), (0.2, 6), (0.3, 10))
# Overlap suppression candidates (``overlap_suppression``), chosen on dev with the
# thresholds; 0 is none.
SUPPRESSIONS = (0.0, 0.5, 0.8)
# The query normalisation (``cohort_weight``) the thresholds are calibrated with; 0 = none.
# At 0.25, held-out hint precision rose at every size and most in babble, for a little
# recall (docs/results.md).
COHORT_WEIGHT = 0.25


def precision_target_for(size: int) -> float:
    return next((p for n, p in PRECISION_TARGETS if size <= n), 0.9)


def phoneme_shortfall(model, terms: list[str], ref: int = LENGTH_REF) -> list[int]:
    """How many phonemes each term has fewer than ``ref``: its length penalty at weight
    ``w`` is ``w * shortfall / ref`` (``DualEncoder.row_penalty``'s length part)."""
    units = model.term_units(terms)
    return [max(0, ref - sum(not ch.isspace() for ch in u)) for u in units]


def with_operating_point(
    checkpoint, penalty: float, windows: int, out_dir, length_penalty: float | None = None
) -> Path:
    """A copy of ``checkpoint`` in ``out_dir`` (its weights linked, not copied) whose
    window agreement is ``penalty`` / ``windows`` (and length penalty ``length_penalty``,
    when given), without overlap suppression (the calibration applies its candidates to
    the recorded responses)."""
    src, out = Path(checkpoint), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (out / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(agreement_penalty=penalty, agreement_windows=windows, overlap_suppression=0.0)
    if length_penalty is not None:
        cfg.update(length_penalty=length_penalty, length_ref=LENGTH_REF)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


@dataclass(frozen=True)
class Calibration:
    """The served operating point chosen on dev (``calibrate_streaming``)."""

    points: list[dict]  # per glossary size: threshold, hint precision / recall, target
    length_penalty: float
    agreement: tuple[float, int]  # (agreement_penalty, agreement_windows)
    suppression: float = 0.0  # overlap_suppression
    # Every candidate with its mean hint recall over the sizes at their targets.
    candidates: list[dict] = field(default_factory=list)


def calibrate_streaming(
    checkpoint,
    manifest,
    distractors: list[str],
    sizes: tuple[int, ...],
    opt: StreamOptions | None = None,
    length_penalties: tuple[float, ...] = LENGTH_PENALTIES,
    agreements: tuple[tuple[float, int], ...] = AGREEMENTS,
    suppressions: tuple[float, ...] = SUPPRESSIONS,
) -> Calibration:
    """The served operating point, from ``manifest`` (dev: unseen terms, training voices)
    streamed through the real client: per size, the threshold with the most hint recall
    at that size's precision target (``PRECISION_TARGETS``; ``operating_point``), and one
    length penalty, one window agreement and one overlap suppression for every size, the
    combination with the most recall on average. Dev is streamed once per glossary size
    and agreement candidate (the server applies the agreement); each length penalty is
    subtracted from the recorded scores, so the checkpoint must have none, and each
    suppression thins them. With a query normalisation (``cohort_weight``) the server
    applies each length penalty too (the cohort's scores include it), and dev is streamed
    once per length penalty as well. Sizes the terms and distractors cannot fill are
    skipped (no points when none can be filled)."""
    from rasst.retriever.model import DualEncoder

    from .manifests import read_manifest

    opt = opt or StreamOptions()
    model = DualEncoder.from_pretrained(checkpoint)
    if model.config.length_penalty:
        raise ValueError(f"{checkpoint} has a length penalty: calibrate it without one")
    n_terms = len({t["term"] for r in read_manifest(manifest) for t in r["terms"]})
    sizes = tuple(n for n in sorted(set(sizes)) if n <= n_terms + len(distractors))
    points: dict[tuple[float, float, int, float], list[dict]] = {}
    short: dict[str, int] = {}  # each term's phoneme shortfall, phonemised once
    # With a normalisation the server applies each length penalty: (server's, replayed).
    served = [(w, (w,)) for w in length_penalties]
    if not model.config.cohort_weight:
        served = [(None, length_penalties)]
    with tempfile.TemporaryDirectory() as tmp:
        for (a_pen, a_win), (lp, replayed) in itertools.product(agreements, served):
            ckpt = with_operating_point(
                checkpoint, a_pen, a_win, Path(tmp) / f"{a_pen}-{a_win}-{lp}", lp
            )
            for size in sizes:
                played = play_manifest(manifest, ckpt, distractors, size, opt, -1.0)
                terms = list(played.id_of)
                new = [t for t in terms if t not in short]
                short.update(zip(new, phoneme_shortfall(model, new), strict=True))
                target = precision_target_for(played.glossary_size)
                for w in replayed:
                    penalty = None
                    if w and lp is None:
                        penalty = {played.id_of[t]: w * short[t] / LENGTH_REF for t in terms}
                    for sup in suppressions:
                        point = operating_point(
                            played, opt, target, penalty=penalty, suppression=Suppression(sup)
                        )
                        points.setdefault((w, a_pen, a_win, sup), []).append(
                            {
                                **point,
                                "glossary_size": played.glossary_size,
                                "precision_target": target,
                            }
                        )
    if not points:
        return Calibration([], 0.0, (0.0, 0))
    recall = {k: float(np.mean([p["hint_recall"] for p in pts])) for k, pts in points.items()}
    best = max(points, key=lambda k: (recall[k], -k[0], -k[1], -k[3]))
    w, a_pen, a_win, sup = best
    for p in points[best]:
        logger.info(
            "streaming calibration at %d entries, length penalty %.2f, agreement %.2f over %d "
            "windows, suppression %.2f: threshold %.4f, P %.3f R %.3f (%s)",
            p["glossary_size"],
            w,
            a_pen,
            a_win,
            sup,
            p["threshold"],
            p["hint_precision"],
            p["hint_recall"],
            p["rule"],
        )
    candidates = [
        {
            "length_penalty": float(k[0]),
            "agreement": [float(k[1]), int(k[2])],
            "overlap_suppression": float(k[3]),
            "mean_hint_recall": r,
        }
        for k, r in recall.items()
    ]
    return Calibration(points[best], float(w), (float(a_pen), int(a_win)), float(sup), candidates)


@dataclass
class StreamEval:
    """What ``rasst eval --streaming`` runs."""

    manifest: Path
    checkpoint: Path | None = None  # None: the shipped checkpoint
    distractors: list[str] | None = None  # None: the offline word lists
    sizes: tuple[int, ...] = (1000,)
    threshold: float | None = None  # None: the model's own for each glossary as built
    server: str | None = None  # a running server instead of an in-process one
    glossary_id: str | None = None  # with server: a glossary already loaded there
    single: bool = False  # every utterance its own session instead of talks
    stream: StreamOptions = field(default_factory=StreamOptions)


def _size_block(played: Played, opt: StreamOptions) -> dict:
    threshold = played.threshold
    report = score(
        played.records, played.occs, opt.chunk, opt.lookback, played.id_of, played.durations
    )
    report["threshold"] = threshold
    # Precision/recall at other thresholds: the recorded responses replayed (no new audio).
    sweep = []
    for t in np.round(np.arange(threshold - 0.3, threshold + 0.06, 0.05), 3):
        m = rescore_at(played, opt, float(t))
        sweep.append(
            {
                "threshold": float(t),
                **{k: round(v, 4) for k, v in m.items() if k.startswith("hint_")},
            }
        )
    report["threshold_sweep"] = sweep
    lat = np.array(
        [r.latency_ms for recs in played.records for r in recs if r.latency_ms is not None]
    )
    on_time = np.mean([r.on_time for recs in played.records for r in recs])
    report.update(
        {
            "on_time": float(on_time),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "glossary_size": played.glossary_size,
            "audio_s": round(played.talks_audio_s, 1),
            "wall_s": round(played.wall_s, 1),
        }
    )
    return report


def run_streaming_eval(e: StreamEval) -> dict:
    """Stream the manifest at each glossary size; one block of figures per size."""
    from rasst.retriever.model import default_checkpoint_dir

    from .terms import default_distractors

    ckpt_dir = e.checkpoint or default_checkpoint_dir()
    distractors = e.distractors if e.distractors is not None else default_distractors()
    opt = e.stream
    report: dict = {
        "manifest": str(e.manifest),
        "checkpoint": str(ckpt_dir),
        "mode": "single" if e.single else f"talks of {TALK_UTTERANCES} utterances",
        "budget_ms": opt.budget_ms,
        "chunk_s": opt.chunk,
        "lookback_s": opt.lookback,
        "sizes": {},
    }
    for size in e.sizes:
        played = play_manifest(
            e.manifest,
            ckpt_dir,
            distractors,
            size,
            opt,
            e.threshold,
            server=e.server,
            glossary_id=e.glossary_id,
            per_talk=1 if e.single else TALK_UTTERANCES,
        )
        report["distractors_dropped"] = played.distractors_dropped
        report["sizes"][str(size)] = _size_block(played, opt)
        b = report["sizes"][str(size)]
        logger.info(
            "streamed at %d entries: P %.3f R %.3f on time %.3f",
            b["glossary_size"],
            b["hint_precision"],
            b["hint_recall"],
            b["on_time"],
        )
    return report
