"""Front-end frames precomputed once per corpus (the front-end is frozen).

A cache is one ``.npz``: every utterance's frames cropped to its term spans plus
``CONTEXT_FRAMES`` on each side, concatenated (float16), with offsets, spans (in
frames, relative to the crop) and the terms.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasst.retriever import audio as A
from rasst.retriever.model import FrontendConfig, build_frontend

logger = logging.getLogger(__name__)

CONTEXT_FRAMES = 60  # 1.2 s each side at 50 fps: room for windows around the term


@dataclass
class FeatureCache:
    frames: np.ndarray  # (total_frames, dim) float16
    offsets: np.ndarray  # (n_utts + 1,) int64 into frames
    occ_utt: np.ndarray  # (n_occ,) utterance of each term occurrence
    occ_span: np.ndarray  # (n_occ, 2) [start, end) frames relative to the utterance crop
    occ_term: list[str]  # term of each occurrence
    utt_speaker: list[str]
    frame_rate: int

    def utt_frames(self, u: int) -> np.ndarray:
        return self.frames[self.offsets[u] : self.offsets[u + 1]]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            frames=self.frames,
            offsets=self.offsets,
            occ_utt=self.occ_utt,
            occ_span=self.occ_span,
            meta=np.frombuffer(
                json.dumps(
                    {
                        "occ_term": self.occ_term,
                        "utt_speaker": self.utt_speaker,
                        "frame_rate": self.frame_rate,
                    }
                ).encode(),
                dtype=np.uint8,
            ),
        )
        os.replace(tmp, path)

    @classmethod
    def concat(cls, caches: list[FeatureCache]) -> FeatureCache:
        """One cache holding the utterances of several (e.g. speed-perturbed copies)."""
        if len({c.frame_rate for c in caches}) != 1:
            raise ValueError("caches to join must share one frame rate")
        offsets, occ_utt, n_utt, n_frames = [np.zeros(1, np.int64)], [], 0, 0
        for c in caches:
            offsets.append(c.offsets[1:] + n_frames)
            occ_utt.append(c.occ_utt + n_utt)
            n_utt += len(c.offsets) - 1
            n_frames += int(c.offsets[-1])
        return cls(
            np.concatenate([c.frames for c in caches]),
            np.concatenate(offsets),
            np.concatenate(occ_utt),
            np.concatenate([c.occ_span for c in caches]),
            [t for c in caches for t in c.occ_term],
            [s for c in caches for s in c.utt_speaker],
            caches[0].frame_rate,
        )

    @classmethod
    def load(cls, path: Path) -> FeatureCache:
        z = np.load(path)
        meta = json.loads(bytes(z["meta"]).decode())
        return cls(
            z["frames"],
            z["offsets"],
            z["occ_utt"],
            z["occ_span"],
            meta["occ_term"],
            meta["utt_speaker"],
            meta["frame_rate"],
        )


_FRONTEND = None
_SPEED = 1.0
_AUGMENT = 0  # which augmented copy (0: the audio as it is)
_BABBLE: list[np.ndarray] | None = None  # term-free speech for babble (augmented copies)


def _init(cfg_dict: dict, speed: float = 1.0, augment: int = 0) -> None:
    global _FRONTEND, _SPEED, _AUGMENT
    import torch

    torch.set_num_threads(1)
    _FRONTEND = build_frontend(FrontendConfig(**cfg_dict), threads=1)
    _SPEED = speed
    _AUGMENT = augment


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: play the clip ``factor`` times faster (tempo and
    pitch together), by resampling it as if it had been recorded at ``factor`` x 16 kHz."""
    return x if factor == 1.0 else A.resample(x, A.SAMPLE_RATE * factor)


def _condition(x: np.ndarray, i: int) -> np.ndarray:
    """Utterance ``i`` of augmented copy ``_AUGMENT`` under its own draw from the training
    mix (the copy and the index seed it; babble never uses the utterance itself)."""
    from .conditions import apply, training_condition

    rng = np.random.default_rng([_AUGMENT, i])
    pool = _BABBLE
    if pool is not None and i < len(pool) and len(pool) > 1:
        pool = pool[:i] + pool[i + 1 :]
    return apply(x, training_condition(rng), rng, pool)


def _one(item: tuple[int, dict]):
    i, row = item
    x = speed_perturb(A.load_audio(row["audio_path"]), _SPEED)
    if _AUGMENT:
        x = _condition(x, i)
    fr = _FRONTEND.frames([x])[0]
    rate = _FRONTEND.frame_rate / _SPEED  # frames per second of the original timeline
    spans = [
        (
            int(round(t["start"] * rate)),
            max(int(round(t["end"] * rate)), int(round(t["start"] * rate)) + 1),
        )
        for t in row["terms"]
    ]
    lo = max(0, min(s for s, _ in spans) - CONTEXT_FRAMES) if spans else 0
    hi = min(len(fr), max(e for _, e in spans) + CONTEXT_FRAMES) if spans else len(fr)
    crop = fr[lo:hi].astype(np.float16)
    rel = [(max(0, s - lo), min(hi - lo, e - lo)) for s, e in spans]
    speaker = row.get("speaker", "")
    if _SPEED != 1.0:
        speaker = f"{speaker}@speed{_SPEED:g}"
    if _AUGMENT:
        speaker = f"{speaker}@aug{_AUGMENT}"
    return crop, rel, [t["term"] for t in row["terms"]], speaker


def build_cache(
    rows: list[dict],
    frontend: FrontendConfig,
    workers: int = 2,
    desc: str = "frames",
    speed: float = 1.0,
    augment: int = 0,
) -> FeatureCache:
    """Run the frozen front-end over every utterance (parallel, with a progress bar),
    optionally on speed-perturbed copies of the audio (term spans follow), or with
    ``augment`` >= 1 on augmented copy number ``augment``: each utterance under a room drawn
    from the training mix (``conditions.TRAIN_MIX``), babble cut from the rows' own
    term-free speech."""
    from dataclasses import asdict
    from multiprocessing import get_context

    from tqdm import tqdm

    global _BABBLE
    if augment:
        from .conditions import term_free_speech

        _BABBLE = term_free_speech(rows)
    cfg = asdict(frontend)
    items = list(enumerate(rows))
    try:
        if workers > 1:
            with get_context("fork").Pool(
                workers, initializer=_init, initargs=(cfg, speed, augment)
            ) as pool:
                results = list(
                    tqdm(
                        pool.imap(_one, items, chunksize=8),
                        total=len(rows),
                        desc=desc,
                        unit="utt",
                    )
                )
        else:
            _init(cfg, speed, augment)
            results = [_one(it) for it in tqdm(items, desc=desc, unit="utt")]
    finally:
        _BABBLE = None
    offsets = np.zeros(len(results) + 1, dtype=np.int64)
    occ_utt, occ_span, occ_term, speakers = [], [], [], []
    for u, (crop, rel, terms, spk) in enumerate(results):
        offsets[u + 1] = offsets[u] + len(crop)
        speakers.append(spk)
        for span, term in zip(rel, terms, strict=True):
            occ_utt.append(u)
            occ_span.append(span)
            occ_term.append(term)
    frames = (
        np.concatenate([r[0] for r in results])
        if results
        else np.zeros((0, frontend.dim), np.float16)
    )
    return FeatureCache(
        frames,
        offsets,
        np.asarray(occ_utt, np.int64),
        np.asarray(occ_span, np.int64).reshape(-1, 2),
        occ_term,
        speakers,
        frontend.frame_rate,
    )


def cached(
    manifest: Path,
    frontend: FrontendConfig,
    cache_dir: Path,
    workers: int = 2,
    speed: float = 1.0,
    augment: int = 0,
) -> FeatureCache:
    """Load the cache for a manifest, building it first when missing or stale (``speed``
    and ``augment`` as in ``build_cache``; each copy has its own cache)."""
    from .manifests import read_manifest

    if not 0.5 <= speed <= 2.0:
        raise ValueError(f"speed perturbation factor must be in [0.5, 2], got {speed}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if augment < 0:
        raise ValueError(f"augmented copy number must be >= 0, got {augment}")
    suffix = ("" if speed == 1.0 else f"_speed{speed:g}") + (f"_aug{augment}" if augment else "")
    # A split's manifest.jsonl is keyed by its folder; any other manifest also by its own
    # name, so two manifests in one folder never share (and silently reuse) frames.
    name = manifest.parent.name + ("" if manifest.name == "manifest.jsonl" else f"-{manifest.stem}")
    key = f"{name}_{frontend.kind}_{Path(frontend.path).name or frontend.package}{suffix}.npz"
    path = cache_dir / key
    if path.exists() and path.stat().st_mtime >= manifest.stat().st_mtime:
        return FeatureCache.load(path)
    cache = build_cache(
        read_manifest(manifest),
        frontend,
        workers,
        desc=f"frames {name}{suffix}",
        speed=speed,
        augment=augment,
    )
    cache.save(path)
    return cache
