"""How a term sounds: grapheme-to-phoneme with espeak-ng's rules, no apt needed.

The espeak-ng library and its data come from the ``espeakng-loader`` wheel and are
driven through ``phonemizer``. A text side that models pronunciation is what lets the
encoder retrieve terms it never saw.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata

logger = logging.getLogger(__name__)

_lock = threading.Lock()  # espeak-ng's C library is not re-entrant
_SPACES = re.compile(r"\s+")


def normalize_term(text: str) -> str:
    """Canonical spoken form used for G2P and for matching duplicates: NFKC, single spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("_", " ")
    return _SPACES.sub(" ", text).strip()


@functools.lru_cache(maxsize=4)
def _backend(language: str, with_stress: bool = False):
    try:
        import espeakng_loader
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
    except ImportError as e:
        raise RuntimeError(
            "phoneme text side needs `pip install rasst[server]` (phonemizer, espeakng-loader)"
        ) from e
    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    # phonemizer warns on every batch where espeak splits words differently from the
    # input ("words count mismatch"); harmless for G2P of terms, so keep it quiet.
    quiet = logging.getLogger("rasst.g2p.phonemizer")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(
        language,
        preserve_punctuation=False,
        with_stress=with_stress,
        language_switch="remove-flags",
        logger=quiet,
    )


def phonemize(terms: list[str], language: str = "en-us", stress: bool = False) -> list[str]:
    """IPA strings, one per term (batched: ~0.03 ms a term). Empty input gives ''.

    ``stress`` keeps espeak's stress marks (a TTS wants them; the text encoder does not).
    """
    if not terms:
        return []
    texts = [normalize_term(t) for t in terms]
    with _lock:
        out = _backend(language, stress).phonemize(texts, strip=True, njobs=1)
    return [o if o else t.lower() for o, t in zip(out, texts, strict=True)]


def spell(terms: list[str]) -> list[str]:
    """Letter sequences (the letters ablation of the text side)."""
    return [normalize_term(t).lower() for t in terms]


def units(terms: list[str], kind: str, language: str = "en-us") -> list[str]:
    """The symbol string a text encoder reads: ``kind`` is 'phonemes' or 'letters'."""
    if kind == "phonemes":
        return phonemize(terms, language)
    if kind == "letters":
        return spell(terms)
    raise ValueError(f"text unit must be 'phonemes' or 'letters', got {kind!r}")
