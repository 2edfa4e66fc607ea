from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from rasst.retriever.model import (
    DualEncoder,
    FrontendConfig,
    HFAudioFrontend,
    ModelConfig,
    build_frontend,
    pool_windows,
    window_layout,
)


def test_window_layout_covers_the_clip_end():
    spans = window_layout(144, (15, 50, 200), 5)
    assert (spans[:, 1] > spans[:, 0]).all()
    assert spans[:, 1].max() == 144 and spans[:, 0].min() == 0
    assert {tuple(s) for s in spans if s[1] - s[0] == 50} >= {(0, 50), (94, 144)}
    assert [0, 144] in spans.tolist()  # the 200-frame window collapses to the whole clip


def test_window_hop_fraction_spaces_long_windows_further():
    fixed = window_layout(144, (15, 100), 5)
    spaced = window_layout(144, (15, 100), 5, hop_fraction=0.2)
    short = lambda sp: sp[sp[:, 1] - sp[:, 0] == 15].tolist()  # noqa: E731
    long_ = lambda sp: sp[sp[:, 1] - sp[:, 0] == 100][:, 0].tolist()  # noqa: E731
    assert short(fixed) == short(spaced)  # round(15 * 0.2) = 3 < stride 5: unchanged
    assert long_(spaced) == [0, 20, 40, 44]  # hop 20, and the clip's end is still covered
    assert len(long_(fixed)) == 10
    with pytest.raises(ValueError, match="window_hop_fraction"):
        ModelConfig(window_hop_fraction=0.9)


def test_pool_windows_matches_direct_means():
    fr = torch.randn(60, 8)
    spans = torch.tensor([[0, 60], [10, 22], [5, 8]])
    out = pool_windows(fr, spans)
    for i, (s, e) in enumerate(spans.tolist()):
        assert torch.allclose(out[i, :8], fr[s:e].mean(0), atol=1e-5)
        third = (e - s) // 3
        assert torch.allclose(out[i, 8:16], fr[s : s + third].mean(0), atol=1e-5)
    # Any number of segments, and the training-side pooling of one window agrees.
    from rasst.training.train import pool_one

    for segments in (0, 1, 6):
        out = pool_windows(fr, spans, segments)
        assert out.shape == (3, 8 * (1 + segments))
        for i, (s, e) in enumerate(spans.tolist()):
            assert np.allclose(out[i].numpy(), pool_one(fr.numpy(), s, e, segments), atol=1e-5)
    # Checkpoints written before pool_segments existed still load.
    assert ModelConfig.from_dict({"pool_thirds": True}).pool_segments == 3
    assert ModelConfig.from_dict({"pool_thirds": False}).pool_segments == 0


def test_encoders_return_unit_vectors(tiny_checkpoint, tts):
    m = DualEncoder.from_pretrained(tiny_checkpoint)
    fe = build_frontend(m.config.frontend)
    frames = fe.frames([tts("attention mechanism")])[0]
    assert frames.shape[1] == 384 and frames.shape[0] > 20
    v, spans = m.encode_audio(frames)
    assert v.shape == (len(spans), 32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    t = m.encode_terms(["attention mechanism", "BiLSTM-CRF", "x"])
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)


def test_checkpoint_roundtrip_is_exact(tiny_checkpoint, tmp_path):
    m = DualEncoder.from_pretrained(tiny_checkpoint)
    again = DualEncoder.from_pretrained(m.save_pretrained(tmp_path / "copy"))
    terms = ["semantic parsing", "fox"]
    assert np.allclose(m.encode_terms(terms), again.encode_terms(terms))
    cfg = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert cfg["frontend"]["kind"] == "ctranslate2"


def test_specificity_prior_penalises_entries_near_background_speech(tiny_checkpoint, tmp_path):
    m = DualEncoder.from_pretrained(tiny_checkpoint)
    vecs = m.encode_terms(["attention mechanism", "semantic parsing", "fox"])
    # A checkpoint from before the prior has no background: no penalty.
    assert m.config.background_size == 0 and m.entry_prior(vecs) is None
    # Background: near "fox" (a hub), far from the other two.
    rng = np.random.default_rng(0)
    bank = vecs[2] + 0.05 * rng.standard_normal((20, vecs.shape[1])).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    m.set_background(bank, k=5)
    h = m.hubness(vecs)
    exact = np.sort(vecs @ bank.astype(np.float16).astype(np.float32).T, axis=1)[:, -5:].mean(1)
    assert np.allclose(h, exact, atol=1e-4) and h[2] > 0.9
    assert m.entry_prior(vecs) is None  # weight 0 until one is chosen
    m.config = dataclasses.replace(m.config, prior_weight=0.5, prior_ref=float(h[:2].max()))
    prior = m.entry_prior(vecs)
    assert prior[0] == prior[1] == 0.0 and abs(prior[2] - 0.5 * (h[2] - h[:2].max())) < 1e-5
    # The background travels with the checkpoint.
    again = DualEncoder.from_pretrained(m.save_pretrained(tmp_path / "with_prior"))
    assert again.config.background_size == 20 and np.allclose(again.entry_prior(vecs), prior)
    # A served glossary's index carries the penalty of each row (term and alias alike).
    from rasst.retriever.engine import embed_glossary
    from rasst.retriever.glossary import Entry, Glossary

    g = Glossary(
        "g",
        1,
        (Entry("a", "attention mechanism"), Entry("f", "semantic parsing", aliases=("fox",))),
        0.0,
    )
    served = embed_glossary(again, g)
    assert served.row_form == ("attention mechanism", "semantic parsing", "fox")
    assert np.allclose(served.index.row_prior, prior, atol=1e-5)
    with pytest.raises(ValueError, match="background must be"):
        m.set_background(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="prior_k"):
        ModelConfig(background_size=4, prior_k=5)


def test_bad_checkpoints_fail_clearly(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a rasst checkpoint"):
        DualEncoder.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(
        (tiny_checkpoint / "config.json").read_text().replace('"embed_dim": 32', '"embed_dim": 48')
    )
    (bad / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        DualEncoder.from_pretrained(bad)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="text_unit"):
        ModelConfig(text_unit="morse")


def test_threshold_follows_glossary_size():
    c = ModelConfig(threshold=0.8, thresholds=((1000, 0.8), (10_000, 0.86), (100_000, 0.9)))
    assert c.threshold_for(10) == 0.8  # clamped below the smallest calibrated size
    assert c.threshold_for(1000) == 0.8
    assert c.threshold_for(3162) == pytest.approx(0.83, abs=1e-3)  # halfway in log size
    assert c.threshold_for(10_000) == pytest.approx(0.86)
    assert c.threshold_for(5_000_000) == 0.9
    assert ModelConfig(threshold=0.7).threshold_for(50_000) == 0.7  # none calibrated
    again = ModelConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again.thresholds == c.thresholds
    with pytest.raises(ValueError, match="increasing sizes"):
        ModelConfig(thresholds=((10_000, 0.9), (1000, 0.8)))
    with pytest.raises(ValueError, match=r"lie in \[-1, 1\]"):
        ModelConfig(thresholds=((1000, 1.5),))


def test_transformers_frontend_from_a_locally_saved_model(tmp_path, tts):
    """The real from_pretrained path, on a tiny Whisper saved with save_pretrained."""
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        max_source_positions=1500,
        max_target_positions=16,
    )
    WhisperModel(cfg).save_pretrained(tmp_path / "whisper")
    fe = build_frontend(FrontendConfig(kind="transformers", path=str(tmp_path / "whisper"), dim=64))
    assert isinstance(fe, HFAudioFrontend)
    x = tts("hello world")
    fr = fe.frames([x])[0]
    assert fr.shape == ((len(x) // 160 - (len(x) // 160) % 2) // 2, 64)
    # The same front-end built from a config dict (offline, from scratch).
    fe2 = build_frontend(
        FrontendConfig(
            kind="transformers",
            hf_config={
                "model_type": "wav2vec2",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "conv_dim": (32,) * 7,
            },
            dim=32,
        )
    )
    assert fe2.frames([x])[0].shape[1] == 32
    with pytest.raises(RuntimeError, match="cannot load"):
        build_frontend(FrontendConfig(kind="transformers", path=str(tmp_path / "missing")))


def test_int8_speech_head_keeps_the_embeddings(default_checkpoint):
    from rasst.retriever.model import Int8Linear, int8_speech_head

    model = DualEncoder.from_pretrained(default_checkpoint)
    frames = torch.randn(144, model.config.frontend.dim)
    ref, spans = model.encode_audio(frames)
    q = int8_speech_head(model.speech)
    assert isinstance(q.mlp[0], Int8Linear) and isinstance(q.mlp[3], Int8Linear)
    got, spans2 = model.encode_audio(frames, head=q)
    assert np.array_equal(spans, spans2)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (ref * got).sum(1).min() > 0.999
    # The model's own head is untouched; a zero row does not divide by zero.
    assert not isinstance(model.speech.mlp[0], Int8Linear)
    assert torch.isfinite(q.mlp[0](torch.zeros(2, q.mlp[0].w_t.shape[0]))).all()


def test_window_layout_is_cached_but_each_caller_gets_its_own_copy(default_checkpoint):
    model = DualEncoder.from_pretrained(default_checkpoint)
    a = model.windows(144)
    a[:] = 0
    assert model.windows(144).any()


def test_row_penalty_adds_a_length_penalty_on_phonemes(tiny_checkpoint):
    import dataclasses

    from rasst.retriever.model import DualEncoder

    m = DualEncoder.from_pretrained(tiny_checkpoint)
    vecs = np.zeros((3, m.config.embed_dim), np.float32)
    units = ["a b", "abcdef", "abcdefghijklmn"]  # 2, 6 and 14 phonemes
    assert m.row_penalty(vecs, units) is None  # off
    m.config = dataclasses.replace(m.config, length_penalty=0.2, length_ref=12)
    p = m.row_penalty(vecs, units)
    np.testing.assert_allclose(p, [0.2 * 10 / 12, 0.2 * 6 / 12, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="length_penalty must be in"):
        dataclasses.replace(m.config, length_penalty=2.0)
