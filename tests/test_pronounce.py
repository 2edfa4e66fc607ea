"""Second pronunciations from the CMU Pronouncing Dictionary, written as espeak-ng writes
IPA, and the index rows they add."""

import shutil

import pytest
from conftest import encoded_units
from rasst.retriever import pronounce as P
from rasst.retriever.g2p import phonemize


def test_a_misread_word_gets_the_dictionary_reading_and_a_well_read_one_none():
    terms = ["quinoa", "gnocchi", "data", "attention mechanism", "bologna"]
    got = P.variants(terms, phonemize(terms))
    assert got[0] == "kiːnoʊə"  # the rules say "kwɪnoʊə"
    assert got[1] == "noʊki"  # the rules say "nɑːkaɪ"
    assert got[2:] == [None, None, None]  # the dictionary agrees with the rules


def test_terms_the_dictionary_cannot_spell_keep_one_reading():
    terms = ["GPT-4", "xqzvy quinoa", "Schrödinger", "don't"]
    assert P.dictionary_ipa(terms) == [None, None, None, None]
    assert P.variants(terms, phonemize(terms)) == [None, None, None, None]


def test_words_stay_apart_and_r_links_across_them():
    # "computer aided": the r-coloured schwa links to the next word's vowel with "ɹ".
    assert P.dictionary_ipa(["computer aided"]) == ["kəmpjuːɾɚɹ eɪdᵻd"]
    assert P.dictionary_ipa(["bar exam"]) == ["bɑːɹ ɪɡzæm"]
    assert P.dictionary_ipa(["car", "molar"]) == ["kɑːɹ", "moʊlɚ"]


def test_words_of_a_term():
    assert P.words_of("Rough-and-tumble") == ["rough", "and", "tumble"]
    assert P.words_of("brewer's yeast") is None and P.words_of("b12") is None


def test_distance_is_a_share_of_the_rules_reading():
    assert P.distance("kwɪnoʊə", "kiːnoʊə") == pytest.approx(2 / 7)
    assert P.distance("deɪɾə", "deɪtə") == 0.0  # a flap is a /t/ to the comparison
    assert P.edit_distance("kitten", "sitting") == 3


def test_where_dictionary_and_rules_agree_the_rows_are_the_same_string():
    """Rendered in espeak-ng's conventions (length marks, flaps, r-colouring, linking r,
    "-ed" / "-es" endings, hyphenated words joined), a word the rules read as the
    dictionary does gives the very string of the rules: a dictionary row reads like the
    rows the text encoder learned from."""
    words = [
        "data", "water", "computer", "party", "car", "bird", "carrot", "thinking", "newton",
        "routing", "molar", "boxes", "north", "long", "cloth", "salt", "all", "meeting",
        "daughter", "sofa", "computer aided", "nutmeg-shaped", "three-ply", "concurs",
        "often", "strong", "motor oil",
    ]  # fmt: skip
    assert P.dictionary_ipa(words) == phonemize(words)


def test_a_dictionary_model_indexes_both_readings_for_one_entry(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """With ``pronunciations`` "rules+dictionary" a form with a dictionary reading gets two
    rows, both for its entry; a patch embeds only the unit strings it adds."""
    import json

    from rasst.retriever.config import EngineConfig
    from rasst.retriever.engine import Engine
    from rasst.retriever.glossary import GlossaryStore, make_entry

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["pronunciations"] = "rules+dictionary"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    e = Engine(GlossaryStore(tmp_path / "data"), EngineConfig(workers=1))
    e.load_model(str(ckpt))
    entries = [
        make_entry({"id": "q", "term": "quinoa", "aliases": ["gnocchi"]}, "e"),
        make_entry({"id": "d", "term": "data rate"}, "e"),
    ]
    e.commit_glossary(e.store.prepare_put("g", entries))
    served = e.snapshot.glossaries["g"]
    assert served.row_form == ("quinoa", "quinoa", "gnocchi", "gnocchi", "data rate")
    assert served.index.row_entry.tolist() == [0, 0, 0, 0, 1]
    assert served.rows.units[1] == "kiːnoʊə"
    encoded = encoded_units(monkeypatch)
    new = make_entry({"id": "m", "term": "mauve"}, "e")
    e.commit_glossary(e.store.prepare_patch("g", [new], ["d"]))
    assert encoded == [["moʊv", "mɔːv"]]
    assert e.snapshot.glossaries["g"].row_form[-2:] == ("mauve", "mauve")
    e.close()


def test_a_letters_model_cannot_take_dictionary_readings():
    from rasst.retriever.model import ModelConfig, validate_config

    with pytest.raises(ValueError, match="needs English phonemes as text units"):
        validate_config(ModelConfig(text_unit="letters", pronunciations="rules+dictionary"))
    with pytest.raises(ValueError, match=r"pronunciations must be one of \['rules'"):
        validate_config(ModelConfig(pronunciations="ipa"))
