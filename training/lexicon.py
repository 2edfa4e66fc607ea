"""A second pronunciation of the training terms: festival's CMU lexicon and its
letter-to-sound rules, spoken by the espeak-ng training voices.

The text side reads every term through espeak-ng's own rules (``retriever.g2p``), and an
espeak voice says a term exactly as those rules spell it, so without other speech the
model learns one pronunciation per spelling. Other engines and people pronounce rare
words otherwise: on the held-out flite voices, terms whose CMU pronunciation lies 20% or
more of their phonemes away from espeak's have a far lower Recall@1 than the rest
(docs/results.md). ``respellings`` finds the training terms where the two disagree and
writes festival's pronunciation in espeak's phoneme input (``[[...]]``), so that the
espeak voices, dozens of them, can say it.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

from rasst.retriever import pronounce

# A term qualifies when festival's pronunciation differs from espeak's by at least this
# share of espeak's phonemes (``pronounce.distance``).
MIN_DISTANCE = 0.1

# ARPAbet (festival's CMU phone set) -> espeak-ng's English phoneme mnemonics; unstressed
# "ah" and "er" are espeak's schwa and r-coloured schwa.
_ESPEAK = {p: mnemonic for p, (mnemonic, _) in pronounce.ARPABET.items()}
_UNSTRESSED = {p: mnemonic for p, (mnemonic, _) in pronounce.UNSTRESSED.items()}

Syllables = list[tuple[list[str], int]]  # per syllable: ARPAbet phones, stress (0/1/2)

_ENTRY = re.compile(r'^\("(.*?)" \S+ \((.*)\)\)$')
_SYLLABLE = re.compile(r"\(\(([a-z ]+)\) (\d)\)")


def _lookup(words: list[str]) -> dict[str, Syllables]:
    script = "".join(f'(print (lex.lookup "{w}" nil))\n' for w in words)
    out = subprocess.run(
        ["festival", "--pipe"], input=script, capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, Syllables] = {}
    for line in out.splitlines():
        m = _ENTRY.match(line.strip())
        if m:
            sylls = [(p.split(), int(s)) for p, s in _SYLLABLE.findall(m.group(2))]
            if sylls:
                found[m.group(1)] = sylls
    return found


def festival_lexicon(words: list[str], workers: int = 2) -> dict[str, Syllables]:
    """festival's pronunciation (its default English lexicon, letter-to-sound rules for the
    words it lacks) of each of ``words``, in ``workers`` interpreters (about 50 words a
    second each). Needs ``festival`` on the PATH."""
    words = sorted(set(words))
    parts = [words[i::workers] for i in range(max(1, workers))]
    with ThreadPoolExecutor(len(parts)) as ex:
        found: dict[str, Syllables] = {}
        for d in ex.map(_lookup, parts):
            found.update(d)
    return found


def espeak_input(words: list[Syllables]) -> str:
    """Words given as syllables in espeak-ng's phoneme input: ``[[...]]`` with a primary
    stress mark before a word's first stressed syllable and secondary marks before the
    others."""
    out = []
    for sylls in words:
        parts, first = [], True
        for phones, stress in sylls:
            mark = ""
            if stress:
                mark, first = ("'" if first else ","), False
            parts.append(
                mark
                + "".join(
                    (_ESPEAK[p] if stress else _UNSTRESSED.get(p, _ESPEAK[p]))
                    for p in phones
                    if p in _ESPEAK
                )
            )
        out.append("".join(parts))
    return "[[" + " ".join(out) + "]]"


def distance(espeak_ipa: str, words: list[Syllables]) -> float:
    """How far festival's pronunciation lies from espeak's (``pronounce.distance``)."""
    theirs = "".join(
        pronounce.ARPABET[p][1] for sylls in words for phones, _ in sylls for p in phones
    )
    return pronounce.distance(espeak_ipa, theirs)


def respellings(
    terms: list[str], min_distance: float = MIN_DISTANCE, workers: int = 2
) -> list[tuple[str, str]]:
    """(term, espeak phoneme input) for each of ``terms`` whose festival pronunciation
    differs from espeak's by at least ``min_distance`` (``distance``), in ``terms``' order."""
    from rasst.retriever.g2p import phonemize

    split = [(t, pronounce.words_of(t)) for t in terms]
    split = [(t, w) for t, w in split if w]
    lex = festival_lexicon([w for _, ws in split for w in ws], workers)
    split = [(t, ws) for t, ws in split if all(w in lex for w in ws)]
    ipa = phonemize([t for t, _ in split])
    out = []
    for (term, ws), e in zip(split, ipa, strict=True):
        sylls = [lex[w] for w in ws]
        if distance(e, sylls) >= min_distance:
            out.append((term, espeak_input(sylls)))
    return out
