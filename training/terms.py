"""Term lists for corpora and distractors: WordNet, FOLDOC and wamerican, normalised,
deduplicated and split train/dev/test by term; the ACL glossaries are kept out (test-only
material).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from rasst.retriever.g2p import normalize_term

from .manifests import atomic_write_text

logger = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDS_FILE = Path("/usr/share/dict/american-english")
FOLDOC_INDEX = Path("/usr/share/dictd/foldoc.index")
# The five ACL 60/60 paper glossaries (MIT, notice beside them): test-only terms.
ACL_GLOSSARIES = Path(__file__).resolve().parents[1] / "retriever" / "demo" / "acl6060"

_TERM_OK = re.compile(r"^[A-Za-z][A-Za-z' .-]*[A-Za-z]$")

# Carrier sentences: the term sits between a prefix and a suffix, as in a talk.

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
    """Terms of the ACL glossaries: test-only material, never trained on."""
    out = set()
    for f in sorted(ACL_GLOSSARIES.glob("*.json")):
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
        atomic_write_text(out_dir / f"{name}.txt", "\n".join(ts) + "\n")
    counts = {k: len(v) for k, v in splits.items()}
    kinds: dict[str, int] = {}
    for t in terms:
        kinds[term_kind(t)] = kinds.get(term_kind(t), 0) + 1
    atomic_write_text(
        out_dir / "stats.json",
        json.dumps({"splits": counts, "kinds": kinds, "seed": seed}, indent=2),
    )
    return counts


def default_distractors() -> list[str]:
    """Offline word lists (WordNet, FOLDOC, wamerican) as distractor terms."""
    return collect_terms()


def read_lines(path: Path) -> list[str]:
    return [s for s in (line.strip() for line in Path(path).read_text().splitlines()) if s]
