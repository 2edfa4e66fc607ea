from __future__ import annotations

import numpy as np
import pytest
from rasst.training.evaluate import (
    OccurrenceVectors,
    build_glossary,
    covering_windows,
    print_table,
    retrieval_metrics,
)
from rasst.training.streaming_eval import score


def test_covering_windows_by_iou():
    spans = np.array([[0, 10], [5, 15], [20, 30], [4, 16]])
    assert covering_windows(spans, 5, 15).tolist() == [1, 3]
    assert covering_windows(spans, 28, 40).tolist() == [2]  # none qualifies: the best one


def test_build_glossary_pads_and_keeps_test_terms():
    g = build_glossary(["a", "b"], ["a", "c", "d", "e"], 4)
    assert g[:2] == ["a", "b"] and len(g) == 4 and len(set(g)) == 4
    with pytest.raises(ValueError, match="distractors"):
        build_glossary(["a"], ["b"], 10)


def test_retrieval_metrics_ranks_and_groups():
    xb = np.eye(4, dtype=np.float32)
    occ = OccurrenceVectors([xb[[0]], xb[[1]] * 0.5 + xb[[2]]], [], ["t0", "t1"], np.array([0, 1]))
    occ.vectors[1] /= np.linalg.norm(occ.vectors[1])
    m = retrieval_metrics(occ, xb, ["t0", "t1", "t2", "t3"], groups=["x", "y"])
    assert m["recall@1"] == 0.5 and m["recall@5"] == 1.0 and m["mrr"] == pytest.approx(0.75)
    assert m["by_group"]["y"]["recall@1"] == 0.0
    assert "| 4 |" in print_table({"sizes": {"4": m}})


class _R:
    def __init__(self, step, end, fresh):
        self.step, self.chunk_end_s, self.fresh = step, end, fresh


def test_streaming_score_definitions():
    # Term "x" spoken 1.0-1.5 s (chunk 1 with 0.96 s chunks); delivered at step 2 -> recalled.
    occs = [[{"term": "x", "start": 1.0, "end": 1.5}]]
    recs = [[_R(0, 0.96, ["e9"]), _R(1, 1.92, []), _R(2, 2.88, ["e0"])]]
    m = score(recs, occs, 0.96, 1.92, {"x": "e0"})
    assert m["hint_recall"] == 1.0 and m["hint_precision"] == 0.5
    late = [[_R(0, 0.96, []), _R(1, 1.92, []), _R(2, 2.88, []), _R(3, 3.84, ["e0"])]]
    assert score(late, occs, 0.96, 1.92, {"x": "e0"})["hint_recall"] == 0.0


def test_replay_applies_the_threshold_and_keeps_step_times():
    from rasst.training.streaming_eval import replay

    from rasst.v1 import retrieval_pb2

    def resp(seq, end, hits):
        r = retrieval_pb2.StreamRetrieveResponse(sequence=seq, chunk_end_s=end)
        for eid, s in hits:
            r.hits.add(entry_id=eid, term=eid, score=s, start_s=end - 0.5, end_s=end)
        return r

    recorded = [resp(0, 0.96, [("a", 0.9), ("b", 0.5)]), resp(2, 2.88, [("c", 0.85)])]
    out = replay(recorded, 3, 0.96, 1.92, 0.8)
    assert [r.step for r in out] == [0, 1, 2]
    assert [r.chunk_end_s for r in out] == [0.96, 0.0, 2.88]  # step 1 had no response
    assert out[0].fresh == ["a"] and out[1].fresh == [] and out[2].fresh == ["c"]
    assert replay(recorded, 3, 0.96, 1.92, 0.4)[0].fresh == ["a", "b"]


def test_operating_point_takes_the_most_recall_at_the_precision_target():
    from rasst.training.streaming_eval import Played, StreamOptions, operating_point

    from rasst.v1 import retrieval_pb2

    def resp(seq, hits):
        end = 0.96 * (seq + 1)
        r = retrieval_pb2.StreamRetrieveResponse(sequence=seq, chunk_end_s=end)
        for eid, s in hits:
            r.hits.add(entry_id=eid, term=eid, score=s, start_s=end - 0.5, end_s=end)
        return r

    # Ten talks, each with one term spoken in its first chunk. The spoken entry scores
    # 0.5 + 0.04 * talk; a never-spoken entry scores 0.6 in talks 0-4 and 0.3 elsewhere.
    raw, occs = [], []
    for k in range(10):
        raw.append([resp(0, [(f"t{k}", 0.5 + 0.04 * k), ("d", 0.6 if k < 5 else 0.3)])])
        occs.append([{"term": f"t{k}", "start": 0.1, "end": 0.6}])
    id_of = {f"t{k}": f"t{k}" for k in range(10)} | {"d": "d"}
    played = Played([[None]] * 10, raw, occs, id_of, 9.6, 11, 0.0, -1.0, [0.96] * 10, 0)
    opt = StreamOptions()
    point = operating_point(played, opt, precision_target=0.9)
    # Above 0.6 no false hint passes: talks 3-9 (scores 0.62..0.86) are recalled, P = 1.
    # At 0.6 or below, five false hints join at least eight true ones: P < 0.9.
    assert point["rule"] == "recall at precision"
    assert 0.6 < point["threshold"] <= 0.62 + 1e-9
    assert point["hint_precision"] == 1.0 and point["hint_recall"] == pytest.approx(0.7)
    # A target no threshold meets falls back to the best F1.
    none = operating_point(played, opt, precision_target=1.01)
    assert none["rule"] == "best F1" and none["hint_f1"] > 0.8


def test_offline_scoring_gives_the_server_s_entries_and_scores(
    live_server, default_checkpoint, tts
):
    """The offline evaluation's path (frames -> windows -> index -> scoring.score_entries)
    and a running server agree on one clip: same entries, same scores."""
    import torch
    from rasst.client.api import Client
    from rasst.retriever.engine import embed_glossary
    from rasst.retriever.model import DualEncoder, build_frontend
    from rasst.training.evaluate import Rescorer

    s = live_server(checkpoint=str(default_checkpoint), precision="float32")
    clip = tts("today we talk about the attention mechanism and semantic parsing")
    c = Client(s.address)
    served = c.retrieve(clip, "demo", "de", top_k=10, threshold=0.2)
    c.close()
    assert served.hits

    model = DualEncoder.from_pretrained(default_checkpoint)
    glossary = s.state.store.get("demo")
    sg = embed_glossary(model, glossary, precision="float32")
    from rasst.pcm import from_s16le, to_s16le

    wire = from_s16le(to_s16le(clip))  # the samples the server decodes
    frames = build_frontend(model.config.frontend).frames([wire])[0]
    vectors, spans = model.encode_audio(torch.from_numpy(np.asarray(frames, np.float32)))
    rescorer = Rescorer(model, list(sg.row_phones))
    rel = model.phone_logprobs(torch.from_numpy(np.asarray(frames, np.float32)))
    offline = rescorer.hits(sg.index, vectors, spans, rel, 0.2, 10, sg.row_form, per_window=2)
    assert [glossary.entries[e].id for e, _ in offline] == [h.entry_id for h in served.hits]
    np.testing.assert_allclose(
        [score for _, score in offline], [h.score for h in served.hits], atol=1e-4
    )


def test_spoken_distractors_are_dropped():
    from rasst.training.evaluate import drop_spoken

    kept, dropped = drop_spoken(
        ["factor", "scale", "neural", "factory", "in more detail", "More Detail", "zebra"],
        ["Today we talk about the scale factor in more detail."],
        ["neural network"],
    )
    assert kept == ["factory", "zebra"] and dropped == 5


def test_a_spoken_distractor_no_longer_counts_against_precision(tiny_corpus_texts):
    """A distractor the carrier sentence says ("detail") would be a right hint counted as a
    false one; the streaming evaluation leaves it out of the glossary."""
    from rasst.training.streaming_eval import StreamOptions, play_manifest

    manifest, texts = tiny_corpus_texts
    said = texts[0].split()[-1].strip(".").lower()
    played = play_manifest(manifest, _default_ckpt(), [said, "zebra crossing"], 3, StreamOptions())
    assert played.distractors_dropped == 1
    assert said not in played.id_of and "zebra crossing" in played.id_of
    spoken_ids = {played.id_of[o["term"].lower()] for occs in played.occs for o in occs}
    wrong = {
        h
        for recs in played.records
        for r in recs
        for h in r.fresh
        if h not in spoken_ids and h != played.id_of["zebra crossing"]
    }
    assert wrong == set()


def _default_ckpt():
    from rasst.retriever.model import default_checkpoint_dir

    return default_checkpoint_dir()


def test_replay_subtracts_a_penalty_before_the_threshold():
    from rasst.training.streaming_eval import replay

    from rasst.v1 import retrieval_pb2

    r = retrieval_pb2.StreamRetrieveResponse(sequence=0, chunk_end_s=0.96)
    r.hits.add(entry_id="short", term="x", score=0.6, start_s=0.1, end_s=0.5)
    r.hits.add(entry_id="long", term="y", score=0.6, start_s=0.1, end_s=0.5)
    (step,) = replay([r], 1, 0.96, 1.92, 0.5, {"short": 0.2})
    assert step.fresh == ["long"]
    assert r.hits[0].score == pytest.approx(0.6)  # the recording is left as it was


def test_recorded_responses_are_thinned_as_the_server_suppresses_overlaps():
    """The calibration applies overlap suppression to unsuppressed recordings: the better of
    two overlapping hits stays whichever threshold is replayed after, a nested form and a
    hit elsewhere stay, and the recording is left as it was."""
    from rasst.retriever.scoring import Suppression
    from rasst.training.streaming_eval import adjusted, replay

    from rasst.v1 import retrieval_pb2

    r = retrieval_pb2.StreamRetrieveResponse(sequence=0, chunk_end_s=0.96)
    r.hits.add(entry_id="near", term="sparing", score=0.55, start_s=0.2, end_s=0.7)
    r.hits.add(entry_id="term", term="semantic parsing", score=0.7, start_s=0.1, end_s=0.8)
    r.hits.add(entry_id="part", term="parsing", score=0.6, start_s=0.4, end_s=0.8)
    r.hits.add(entry_id="apart", term="later", score=0.5, start_s=0.85, end_s=0.95)
    (thin,) = adjusted([r], suppression=Suppression(0.5))
    assert [h.entry_id for h in thin.hits] == ["term", "part", "apart"]
    assert len(r.hits) == 4
    for t in (0.4, 0.58, 0.65):
        (plain,) = replay([r], 1, 0.96, 1.92, t)
        (step,) = replay([thin], 1, 0.96, 1.92, t)
        assert step.fresh == [e for e in plain.fresh if e != "near"]
    assert adjusted([r], {"term": 0.2}, Suppression(0.5))[0].hits[0].entry_id == "part"
