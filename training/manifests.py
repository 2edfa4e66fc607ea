"""Manifests: one JSON object per line, audio paths relative to the manifest:
``{"audio": "wav/x.wav", "text": ..., "terms": [{"term", "start", "end"}], "speaker": ...}``.
Reading and validating them, importing a user's corpus, the real-human smoke set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

from rasst.retriever import audio as A

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- manifests

# Speaker suffix of a synthesised utterance whose term the voice said from given phonemes
# (``synthesis.UttSpec.say``) rather than as the text side spells it.
RESPELLED = "@respelled"


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
    atomic_write_text(out, "".join(lines))
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
    atomic_write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    return manifest


# --------------------------------------------------------------------------- helpers


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: a temp file beside ``path``, fsynced, renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
