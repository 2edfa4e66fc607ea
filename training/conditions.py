"""Acoustic conditions as data: any manifest made reverberant, noisy, babbly, telephone-band
or lossy, reproducibly, with every term span kept exact.

``rasst data augment MANIFEST --condition reverb|noise:SNR[:color]|babble:SNR|phone[:law]|
codec[:name] --out DIR [--seed N]`` writes DIR/manifest.jsonl and DIR/wav/. Each condition
keeps the audio's length, so spans stay where they were:

- ``reverb``: sox's ``reverb`` with a room drawn per utterance (reverberance 40-90 %, HF
  damping 20-80 %, room scale 50-100 %, stereo depth 100 %), dry and wet mixed, tail cut;
- ``noise:SNR[:white|pink|brown]``: coloured noise at SNR dB over the speech's power
  (pink by default);
- ``babble:SNR``: three other talkers at SNR dB, cut from term-free carrier speech of the
  babble manifest (its term spans removed), so babble never says a glossary term;
- ``phone[:mulaw|alaw]``: 300-3400 Hz band, 8 kHz, G.711 companding (mu-law by default);
- ``codec[:vorbis|opus|mp3]``: a low-bitrate lossy round trip through libsndfile
  (Vorbis by default).

The seed and the utterance's index fix every random draw: the same command writes the
same audio.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
KINDS = ("clean", "reverb", "noise", "babble", "phone", "codec")
NOISE_COLORS = ("white", "pink", "brown")
LAWS = {"mulaw": "ULAW", "alaw": "ALAW"}
CODECS = {"vorbis": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III")}
BABBLE_TALKERS = 3


@dataclass(frozen=True)
class Chain:
    """Conditions applied one after another, e.g. ``reverb+babble:10`` (a room, then
    talkers in it)."""

    parts: tuple[Condition, ...]

    @property
    def name(self) -> str:
        return "+".join(c.name for c in self.parts)

    @property
    def kind(self) -> str:
        return "+".join(c.kind for c in self.parts)


@dataclass(frozen=True)
class Condition:
    kind: str
    snr_db: float | None = None
    variant: str = ""

    @property
    def name(self) -> str:
        """A file-system safe name, e.g. ``babble10`` or ``noise5-brown``."""
        s = self.kind
        if self.snr_db is not None:
            s += f"{self.snr_db:g}"
        if self.variant:
            s += f"-{self.variant}"
        return s


def parse_condition(spec: str) -> Condition | Chain:
    """``reverb``, ``noise:10``, ``noise:10:brown``, ``babble:5``, ``phone:alaw``,
    ``codec:opus`` or ``clean``, or several joined by ``+`` (applied in that order);
    raises ValueError naming what is allowed."""
    if "+" in spec:
        return Chain(tuple(_parse_one(s) for s in spec.split("+")))
    return _parse_one(spec)


def _parse_one(spec: str) -> Condition:
    parts = spec.strip().lower().split(":")
    kind, args = parts[0], parts[1:]
    if kind not in KINDS:
        raise ValueError(f"condition must be one of {', '.join(KINDS)}, got {spec!r}")
    if kind in ("noise", "babble"):
        if not args:
            raise ValueError(f"{kind} needs an SNR in dB, e.g. {kind}:10")
        try:
            snr = float(args[0])
        except ValueError:
            raise ValueError(f"{kind}: SNR must be a number of dB, got {args[0]!r}") from None
        if not -10 <= snr <= 60:
            raise ValueError(f"{kind}: SNR must be in [-10, 60] dB, got {snr:g}")
        color = args[1] if len(args) > 1 else ("pink" if kind == "noise" else "")
        if kind == "noise" and color not in NOISE_COLORS:
            raise ValueError(
                f"noise colour must be one of {', '.join(NOISE_COLORS)}, got {color!r}"
            )
        if kind == "babble" and len(args) > 1:
            raise ValueError(f"babble takes only an SNR, got {spec!r}")
        return Condition(kind, snr, color if kind == "noise" else "")
    if kind == "phone":
        law = args[0] if args else "mulaw"
        if law not in LAWS:
            raise ValueError(f"phone law must be one of {', '.join(LAWS)}, got {law!r}")
        return Condition(kind, None, law)
    if kind == "codec":
        codec = args[0] if args else "vorbis"
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        return Condition(kind, None, codec)
    if args:
        raise ValueError(f"{kind} takes no parameters, got {spec!r}")
    return Condition(kind)


def _power(x: np.ndarray) -> float:
    return float((x.astype(np.float64) ** 2).mean()) + 1e-12


def _mix(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = noise[: len(x)]
    noise = noise * np.sqrt(_power(x) / (_power(noise) * 10 ** (snr_db / 10)))
    y = x + noise.astype(np.float32)
    peak = float(np.abs(y).max())
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


def coloured_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise of ``n`` samples."""
    white = rng.standard_normal(n)
    if color == "white":
        return white.astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spec /= f ** (0.5 if color == "pink" else 1.0)
    return np.fft.irfft(spec, n).astype(np.float32)


def _bandpass(x: np.ndarray, rate: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / rate)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, len(x)).astype(np.float32)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr

    return soxr.resample(x, src, dst, quality="HQ").astype(np.float32)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad to ``n`` samples (codecs and resamplers move the length a little)."""
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    room = (
        float(rng.uniform(40, 90)),  # reverberance %
        float(rng.uniform(20, 80)),  # HF damping %
        float(rng.uniform(50, 100)),  # room scale %
    )
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.wav", Path(d) / "out.wav"
        import soundfile as sf

        sf.write(str(src), x, SAMPLE_RATE, subtype="FLOAT")
        cmd = ["sox", str(src), str(dst), "reverb", *(f"{v:.0f}" for v in room), "100", "0"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"sox reverb failed: {r.stderr.strip()[:200]}")
        y, _ = sf.read(str(dst), dtype="float32", always_2d=True)
    y = _fit(y.mean(axis=1), len(x))
    peak = float(np.abs(y).max())
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


def phone(x: np.ndarray, law: str) -> np.ndarray:
    import soundfile as sf

    narrow = _bandpass(_resample(x, SAMPLE_RATE, 8000), 8000, 300, 3400)
    buf = io.BytesIO()
    sf.write(buf, np.clip(narrow, -1, 1), 8000, format="WAV", subtype=LAWS[law])
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return _fit(_resample(y, 8000, SAMPLE_RATE), len(x))


def codec(x: np.ndarray, name: str) -> np.ndarray:
    import soundfile as sf

    fmt, subtype = CODECS[name]
    rate = 48000 if name == "opus" else SAMPLE_RATE  # Opus in Ogg runs at 48 kHz
    y = _resample(x, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else x
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"c.{fmt.lower()}"
        # compression_level 1.0 = the lowest bitrate libsndfile writes.
        sf.write(
            str(p), np.clip(y, -1, 1), rate, format=fmt, subtype=subtype, compression_level=0.9
        )
        z, zr = sf.read(str(p), dtype="float32", always_2d=True)
    z = z.mean(axis=1)
    return _fit(_resample(z, zr, SAMPLE_RATE) if zr != SAMPLE_RATE else z, len(x))


def term_free_speech(rows: list[dict], limit: int = 200) -> list[np.ndarray]:
    """Carrier speech of up to ``limit`` utterances with their term spans cut out."""
    from rasst.retriever.audio import load_audio

    out = []
    for r in rows[:limit]:
        x = load_audio(r["audio_path"])
        keep = np.ones(len(x), bool)
        for t in r["terms"]:
            keep[int(t["start"] * SAMPLE_RATE) : int(np.ceil(t["end"] * SAMPLE_RATE))] = False
        if keep.sum() > SAMPLE_RATE // 2:
            out.append(x[keep])
    if not out:
        raise ValueError("the babble manifest has no term-free speech")
    return out


def babble(x: np.ndarray, pool: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    mix = np.zeros(len(x), np.float32)
    for _ in range(BABBLE_TALKERS):
        talker = pool[int(rng.integers(len(pool)))]
        reps = int(np.ceil((len(x) + len(talker)) / len(talker)))
        loop = np.tile(talker, reps)
        start = int(rng.integers(len(talker)))
        part = loop[start : start + len(x)]
        mix += part / np.sqrt(_power(part))
    return mix


def apply(
    x: np.ndarray,
    cond: Condition | Chain,
    rng: np.random.Generator,
    babble_pool: list[np.ndarray] | None = None,
) -> np.ndarray:
    """``x`` (16 kHz float32) under ``cond``, the same length."""
    if isinstance(cond, Chain):
        for c in cond.parts:
            x = apply(x, c, rng, babble_pool)
        return x
    if cond.kind == "clean":
        return x
    if cond.kind == "reverb":
        return reverb(x, rng)
    if cond.kind == "noise":
        return _mix(x, coloured_noise(len(x), cond.variant, rng), cond.snr_db)
    if cond.kind == "babble":
        if not babble_pool:
            raise ValueError("babble needs term-free speech (a babble manifest)")
        return _mix(x, babble(x, babble_pool, rng), cond.snr_db)
    if cond.kind == "phone":
        return phone(x, cond.variant)
    if cond.kind == "codec":
        return codec(x, cond.variant)
    raise ValueError(f"unknown condition {cond.kind!r}")


# The training mix: every augmented copy of a training utterance draws one of these, SNRs
# uniform in [0, 20] dB, so the model hears each room at many levels. Weights sum to 1.
TRAIN_MIX = (
    ("reverb", 0.15),
    ("noise", 0.20),
    ("babble", 0.25),
    ("reverb+babble", 0.15),
    ("reverb+noise", 0.05),
    ("phone", 0.10),
    ("codec", 0.10),
)
TRAIN_SNR_DB = (0.0, 20.0)


def training_condition(rng: np.random.Generator) -> Condition | Chain:
    """One draw from ``TRAIN_MIX``: kind by weight, then its SNR, noise colour, companding
    law or codec."""
    kinds = [k for k, _ in TRAIN_MIX]
    kind = kinds[int(rng.choice(len(kinds), p=[w for _, w in TRAIN_MIX]))]
    parts = []
    for k in kind.split("+"):
        snr = round(float(rng.uniform(*TRAIN_SNR_DB)), 1)
        if k == "noise":
            parts.append(Condition(k, snr, NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]))
        elif k == "babble":
            parts.append(Condition(k, snr))
        elif k == "phone":
            parts.append(Condition(k, None, list(LAWS)[int(rng.integers(len(LAWS)))]))
        elif k == "codec":
            parts.append(Condition(k, None, ("vorbis", "opus")[int(rng.integers(2))]))
        else:
            parts.append(Condition(k))
    return parts[0] if len(parts) == 1 else Chain(tuple(parts))


def augment_manifest(
    manifest: Path,
    condition: str,
    out_dir: Path,
    seed: int = 0,
    babble_manifest: Path | None = None,
    progress: bool = False,
) -> Path:
    """Write ``out_dir/manifest.jsonl`` and ``out_dir/wav/``: every utterance of
    ``manifest`` under ``condition``, its spans unchanged. Babble comes from
    ``babble_manifest`` (default: the manifest itself; the talker is never the utterance
    it is mixed into). Returns the new manifest's path."""
    import soundfile as sf
    from rasst.retriever.audio import load_audio

    from .manifests import atomic_write_text, read_manifest

    cond = parse_condition(condition)
    rows = read_manifest(manifest, check_audio=True)
    pool = None
    if "babble" in cond.kind.split("+"):
        pool = term_free_speech(read_manifest(babble_manifest or manifest))
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    it = enumerate(rows)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(rows), desc=cond.name, unit="utt")
    out_rows = []
    for i, r in it:
        rng = np.random.default_rng([seed, i, *(KINDS.index(k) for k in cond.kind.split("+"))])
        x = load_audio(r["audio_path"])
        others = pool
        if pool is not None and babble_manifest is None and len(pool) > 1:
            others = pool[:i] + pool[i + 1 :] if i < len(pool) else pool
        y = apply(x, cond, rng, others)
        name = f"{Path(r['audio']).stem}.wav"
        sf.write(str(wav_dir / name), y, SAMPLE_RATE, subtype="PCM_16")
        row = {k: v for k, v in r.items() if k != "audio_path"}
        row["audio"] = f"wav/{name}"
        row["condition"] = cond.name
        out_rows.append(row)
    out = out_dir / "manifest.jsonl"
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows))
    (out_dir / "condition.json").write_text(
        json.dumps(
            {"condition": condition, "name": cond.name, "seed": seed, "source": str(manifest)}
        )
    )
    return out


def condition_manifest(manifest: Path, spec: str, seed: int = 0) -> Path:
    """The manifest under condition ``spec``: ``manifest`` itself for ``clean``, else
    ``<its folder>/conditions/<name>/manifest.jsonl``, made once and reused while the
    condition, seed and source match."""
    cond = parse_condition(spec)
    if cond.kind == "clean":
        return manifest
    out_dir = manifest.parent / "conditions" / cond.name
    out = out_dir / "manifest.jsonl"
    meta = out_dir / "condition.json"
    want = {"condition": spec, "name": cond.name, "seed": seed, "source": str(manifest)}
    if out.exists() and meta.exists():
        try:
            if (
                json.loads(meta.read_text()) == want
                and out.stat().st_mtime >= manifest.stat().st_mtime
            ):
                return out
        except (OSError, ValueError):
            pass
    return augment_manifest(manifest, spec, out_dir, seed, progress=True)
