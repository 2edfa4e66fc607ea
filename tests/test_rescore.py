"""The second stage: keyword alignment scores, fusion, and the phone head in checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from rasst.retriever.model import DualEncoder, ModelConfig
from rasst.retriever.rescore import fuse, keyword_scores, phone_labels, phone_symbols, rescore

V = 6  # labels 0 (blank) .. 5


def posteriorgram(path: list[int], confidence: float = 0.9) -> np.ndarray:
    """Relative log-probs (<= 0) whose best label on frame t is path[t]."""
    p = np.full((len(path), V), (1 - confidence) / (V - 1))
    p[np.arange(len(path)), path] = confidence
    lp = np.log(p)
    return lp - lp.max(1, keepdims=True)


def test_a_spoken_sequence_scores_zero_anywhere_in_its_region():
    rel = posteriorgram([0, 0, 3, 3, 0, 5, 5, 0, 0, 1])
    whole = [[0, len(rel)]]
    assert keyword_scores(rel, [np.array([3, 5])], whole)[0] == pytest.approx(0.0)
    # Blank frames between the phonemes are free; before and after they are outside it.
    assert keyword_scores(rel, [np.array([3])], whole)[0] == pytest.approx(0.0)
    other = keyword_scores(rel, [np.array([4, 2])], whole)[0]
    assert other < -2 * np.log(0.9 / 0.02) + 1e-3  # two frames each at least that far off


def test_scores_order_candidates_by_how_well_they_match():
    rel = posteriorgram([0, 2, 2, 3, 0, 4, 4, 0])
    seqs = [np.array([2, 3, 4]), np.array([2, 3, 5]), np.array([1, 1, 1]), np.array([2, 4])]
    s = keyword_scores(rel, seqs, np.tile([0, len(rel)], (len(seqs), 1)))
    assert s[0] == pytest.approx(0.0)
    assert s[0] > s[1] > s[2]
    # [2, 4] skips the 3: one frame of 3 must then go to 2, 4 or blank; costs something.
    assert s[3] < 0


def test_a_repeated_phoneme_needs_a_blank_or_another_frame_between():
    rel = posteriorgram([0, 3, 0, 3, 0])
    assert keyword_scores(rel, [np.array([3, 3])], [[0, 5]])[0] == pytest.approx(0.0)
    merged = posteriorgram([0, 3, 3, 0])
    # Two frames of 3 with no blank read as one 3: "3 3" has to pay for a blank.
    assert keyword_scores(merged, [np.array([3, 3])], [[0, 4]])[0] < -1.0


def test_regions_limit_where_a_candidate_may_align():
    rel = posteriorgram([3, 5, 0, 0, 0, 0, 1, 2])
    seqs = [np.array([3, 5]), np.array([3, 5]), np.array([1, 2])]
    s = keyword_scores(rel, seqs, np.array([[0, 3], [3, 8], [5, 8]]))
    assert s[0] == pytest.approx(0.0) and s[2] == pytest.approx(0.0)
    assert s[1] < -2.0
    # More phonemes than frames in the region: impossible.
    assert keyword_scores(rel, [np.array([3, 5, 1])], [[0, 2]])[0] < -1e6


def _one_alignment(rel: np.ndarray, labels: np.ndarray, start: int, end: int) -> float:
    """The alignment score of one string, frame by frame and state by state, written from
    its definition: states p1 0 p2 .. pL, a fresh start on any frame of [start, end), a
    blank only between phonemes, a skip over a blank only between different phonemes."""
    s = [int(x) for x in np.insert(labels, np.arange(1, len(labels)), 0)]
    alpha = [-np.inf] * len(s)
    best = -np.inf
    for t in range(start, end):
        new = []
        for j, label in enumerate(s):
            came = [alpha[j]] + ([alpha[j - 1]] if j >= 1 else [0.0])
            if j >= 2 and label != 0 and label != s[j - 2]:
                came.append(alpha[j - 2])
            new.append(max(came) + float(rel[t, label]))
        alpha = new
        best = max(best, alpha[-1])
    return best if np.isfinite(best) else -1e9


def test_scores_match_the_alignment_written_out_one_candidate_at_a_time():
    rng = np.random.default_rng(7)
    for _ in range(60):
        T, n = int(rng.integers(1, 25)), int(rng.integers(1, 8))
        lp = np.log(rng.dirichlet(np.full(V, 0.3), size=T))
        rel = lp - lp.max(1, keepdims=True)
        labels = [rng.integers(1, V, size=int(rng.integers(1, 7))) for _ in range(n)]
        start = rng.integers(0, T, size=n)
        regions = np.stack([start, np.minimum(start + rng.integers(0, T + 2, size=n), T)], 1)
        got = keyword_scores(rel, labels, regions)
        want = [_one_alignment(rel, lab, a, b) for lab, (a, b) in zip(labels, regions, strict=True)]
        np.testing.assert_allclose(got, np.array(want, np.float32), rtol=1e-5, atol=1e-4)


def test_fused_scores_never_exceed_the_cosine():
    rel = posteriorgram([0, 2, 3, 0, 4, 1])
    labels = [np.array([2, 3]), np.array([4, 4, 4, 4]), np.array([1])]
    cos = np.array([0.9, 0.95, 0.5])
    f = rescore(rel, labels, np.array([[0, 4], [2, 6], [0, 2]]), cos, 0.2, 1)
    assert np.all(f <= cos + 1e-6)
    assert f[0] == pytest.approx(0.9, abs=1e-5)  # a perfect match keeps its cosine
    assert f[1] < f[0]  # the better cosine with the wrong phonemes now ranks below
    assert fuse(np.array([0.8]), np.array([-1.0]), np.array([4]), 0.4)[0] == pytest.approx(0.7)
    assert rescore(rel, [], np.zeros((0, 2)), np.zeros(0), 0.2, 1).shape == (0,)


def test_phone_labels_skip_spaces_and_unknown_symbols():
    sym = phone_symbols((" ", "a", "b", "ə"))
    assert sym == {"a": 1, "b": 2, "ə": 3}
    assert [x.tolist() for x in phone_labels(["ab ə", "zz", ""], sym)] == [[1, 2, 3], [1], [1]]


def test_a_phone_head_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(text_vocab=(" ", "a", "b"), embed_dim=16, head_hidden=32, text_hidden=16)
    model = DualEncoder(cfg)
    assert model.phone is None and model.phone_logprobs(np.zeros((5, 384))) is None
    model.attach_phone_head(8)
    model.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["phone_hidden"] == 8
    back = DualEncoder.from_pretrained(tmp_path / "ck")
    frames = torch.randn(40, 384)
    rel = back.phone_logprobs(frames)
    assert rel.shape == (40, 3)  # blank + "a" + "b"
    assert np.allclose(rel.max(1), 0.0) and np.all(rel <= 0)
    assert np.allclose(rel, model.phone_logprobs(frames), atol=1e-5)
    # A checkpoint written before the second stage existed loads without one.
    d = json.loads((tmp_path / "ck" / "config.json").read_text())
    for key in ("phone_hidden", "rescore_weight", "rescore_top", "rescore_margin"):
        d.pop(key)
    assert ModelConfig.from_dict(d).phone_hidden == 0


@pytest.mark.parametrize(
    "field,value",
    [("phone_hidden", 7), ("phone_hidden", -2), ("rescore_weight", -0.1), ("rescore_top", 0)],
)
def test_bad_second_stage_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def _copy(checkpoint, out, phone: bool = True):
    """The checkpoint without its query normalisation (so that scores compare between
    copies), and without its phone head when ``phone`` is false: the dual encoder alone."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["cohort_weight"] = 0.0
    if not phone:
        cfg["phone_hidden"] = 0
    (out / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(checkpoint / "model.safetensors"))
    save_file(
        {k: v for k, v in w.items() if phone or not k.startswith("phone.")},
        str(out / "model.safetensors"),
    )
    return out


def test_the_engine_serves_fused_scores_below_the_cosine(default_checkpoint, tmp_path, tts):
    """The shipped model has a second stage: served scores are the fused ones, each at most
    the cosine the same entry gets from the dual encoder alone, and a term that was not
    said loses more than the one that was."""
    import asyncio

    from rasst.retriever.config import EngineConfig
    from rasst.retriever.engine import Engine
    from rasst.retriever.glossary import GlossaryStore, make_entry

    assert DualEncoder.load_config(default_checkpoint).phone_hidden > 0
    # Not "mantic parsing": a term said inside a longer one aligns as well (free boundaries).
    terms = ["semantic parsing", "semantic pairing", "romantic passing", "beam search"]
    clip = tts("today we look at semantic parsing in detail")
    scores = []
    two = _copy(default_checkpoint, tmp_path / "two-stage")
    plain = _copy(default_checkpoint, tmp_path / "plain", phone=False)
    for name, ck, second_stage in (
        ("two", two, True),
        ("plain", plain, True),
        ("switched-off", two, False),  # rasst serve --no-rescore
    ):
        e = Engine(
            GlossaryStore(tmp_path / name), EngineConfig(precision="float32", rescore=second_stage)
        )
        try:
            e.load_model(ck)
            entries = [make_entry({"term": t}, f"entries[{i}]") for i, t in enumerate(terms)]
            e.commit_glossary(e.store.prepare_put("g", entries))

            async def ask(engine=e):
                return await engine.submit(clip, "g", 10, -1.0, 30.0)

            result = asyncio.run(ask())
            scores.append({h.entry.term: h.score for h in result.hits})
        finally:
            e.close()
    assert scores[2] == pytest.approx(scores[1], abs=1e-6)
    scores = scores[:2]
    fused, cosine = scores
    assert max(fused, key=fused.get) == "semantic parsing"
    for term, s in fused.items():
        assert s <= cosine[term] + 1e-5
    drop = {t: cosine[t] - fused[t] for t in fused}
    assert drop["semantic parsing"] < min(drop[t] for t in fused if t != "semantic parsing")


@pytest.mark.parametrize("kind", ["conv", "gru"])
def test_padding_in_a_batch_does_not_change_a_clips_posteriors(kind):
    from rasst.retriever.rescore import PhoneHead

    torch.manual_seed(0)
    head = PhoneHead(12, 8, 5, kind).eval()
    short, long = torch.randn(7, 12), torch.randn(11, 12)
    batch = torch.nn.utils.rnn.pad_sequence([short, long], batch_first=True)
    with torch.no_grad():
        both = head(batch, torch.tensor([7, 11]))
        alone = head(short[None])[0]
    assert torch.allclose(both[0, :7], alone, atol=1e-5)
    assert torch.allclose(both[1], head(long[None])[0], atol=1e-5)


def test_the_first_phone_heads_load_as_grus():
    d = ModelConfig(text_vocab=("a",), phone_hidden=8).to_dict()
    d.pop("phone_kind")
    assert ModelConfig.from_dict(d).phone_kind == "gru"
    with pytest.raises(ValueError, match="phone_kind"):
        ModelConfig(phone_kind="lstm")


def test_serving_crops_a_convolution_head_to_what_the_alignments_reach(tmp_path):
    """rescore_clip runs the head on the candidates' regions plus its context only, and
    gives the scores the whole clip gives."""
    torch.manual_seed(0)
    model = DualEncoder(
        ModelConfig(text_vocab=(" ", "a", "b", "c"), embed_dim=16, head_hidden=32, text_hidden=16)
    )
    model.attach_phone_head(16, "conv")
    assert model.phone.context == 4
    frames = torch.randn(144, 384)
    labels = [np.array([1, 2]), np.array([3, 1, 3]), np.array([2])]
    windows = np.array([[100, 130], [90, 144], [110, 125]])
    cos = np.array([0.9, 0.8, 0.7])
    full = model.rescore(model.phone_logprobs(frames), labels, windows, cos)
    assert np.allclose(model.rescore_clip(frames, labels, windows, cos), full, atol=1e-5)
    # One query's calls: the head runs again only for a call that reaches past the crop.
    runs = []
    head = model.phone_logprobs
    model.phone_logprobs = lambda f: runs.append(len(f)) or head(f)
    rescore = model.clip_rescorer(frames)
    assert np.allclose(rescore(labels[:1], windows[:1], cos[:1]), full[:1], atol=1e-5)
    assert np.allclose(rescore(labels[2:], windows[2:], cos[2:]), full[2:], atol=1e-5)
    assert np.allclose(rescore(labels, windows, cos), full, atol=1e-5)
    assert runs == [144 - (100 - 15 - 4), 144 - (90 - 15 - 4)]  # to the clip's end


def test_an_empty_string_or_an_empty_region_aligns_nowhere():
    rel = posteriorgram([0, 3, 5, 0])
    s = keyword_scores(
        rel, [np.zeros(0, np.int64), np.array([3, 5]), np.array([3])], [[0, 4], [2, 2], [0, 4]]
    )
    assert s[0] < -1e6 and s[1] < -1e6
    assert s[2] == pytest.approx(0.0)


def test_the_alignment_compiles_where_no_cache_directory_can_be_written():
    # numba's cache locators all refuse (a read-only install and no writable home): the
    # module still imports and aligns, compiling in the process instead.
    code = (
        "import numpy as np\n"
        "from numba.core import caching\n"
        "caching.CacheImpl._locator_classes = []\n"
        "from rasst.retriever.rescore import keyword_scores\n"
        "rel = np.log(np.full((4, 3), 1 / 3))\n"
        "rel -= rel.max(1, keepdims=True)\n"
        "print(keyword_scores(rel, [np.array([1, 2])], np.array([[0, 4]]))[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) == pytest.approx(0.0)
