from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import (
    OccurrenceVectors,
    build_glossary,
    covering_windows,
    print_table,
    retrieval_metrics,
)
from training.streaming_eval import score


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
    from client.v1 import retrieval_pb2
    from training.streaming_eval import replay

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
