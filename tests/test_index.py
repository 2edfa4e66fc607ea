from __future__ import annotations

import numpy as np
import pytest
from rasst.retriever.index import TermIndex, build_index, exact_search, recall_at


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_is_exact():
    xb, xq = _unit(2000, 64, 0), _unit(50, 64, 1)
    D, I = build_index(xb, use_gpu=False).search(xq, 10)
    De, Ie = exact_search(xq, xb, 10)
    assert (I == Ie).all()
    assert np.allclose(D, De, atol=1e-5)


def test_hnsw_above_exact_max_has_high_recall():
    xb, xq = _unit(5000, 32, 2), _unit(200, 32, 3)
    idx = build_index(xb, exact_max=1000, use_gpu=False)
    assert "HNSW" in type(idx).__name__
    _, I = idx.search(xq, 10)
    _, Ie = exact_search(xq, xb, 10)
    assert recall_at(I, Ie, 10) > 0.9


def test_best_entries_max_pools_over_windows_and_aliases():
    # Entry 0 has two rows (term + alias); entry 1 one row.
    xb = np.eye(3, dtype=np.float32)
    ti = TermIndex(xb, np.array([0, 0, 1]), use_gpu=False)
    xq = np.array([[0.9, 0.1, 0.0], [0.0, 0.95, 0.0], [0.0, 0.0, 0.5]], dtype=np.float32)
    D, I = ti.search(xq, 3)
    hits = ti.best_entries(D, I, threshold=0.4, top_k=5)
    assert [(h.entry, h.row, h.window) for h in hits] == [(0, 1, 1), (1, 2, 2)]
    assert abs(hits[0].score - 0.95) < 1e-6
    assert ti.best_entries(D, I, threshold=0.99, top_k=5) == []
    assert len(ti.best_entries(D, I, threshold=0.0, top_k=1)) == 1


def test_row_prior_is_subtracted_before_the_threshold_and_the_ranking():
    xb = np.eye(3, dtype=np.float32)
    xq = np.array([[0.9, 0.8, 0.0]], dtype=np.float32)
    plain = TermIndex(xb, np.arange(3), use_gpu=False)
    D, I = plain.search(xq, 3)
    assert [h.entry for h in plain.best_entries(D, I, 0.5, 5)] == [0, 1]
    # Entry 0 is a hub: its penalty puts entry 1 first and keeps it under 0.75.
    ti = TermIndex(xb, np.arange(3), use_gpu=False, row_prior=np.array([0.2, 0.0, 0.0]))
    hits = ti.best_entries(D, I, 0.5, 5)
    assert [h.entry for h in hits] == [1, 0]
    assert abs(hits[1].score - 0.7) < 1e-6
    assert [h.entry for h in ti.best_entries(D, I, 0.75, 5)] == [1]
    # A second stage's pool: the same threshold on the penalised score, ranked by cosine.
    pool = ti.best_entries(D, I, 0.5, 5, prior=False)
    assert [(h.entry, round(h.score, 6)) for h in pool] == [(0, 0.9), (1, 0.8)]
    assert [h.entry for h in ti.best_entries(D, I, 0.75, 5, prior=False)] == [1]
    assert np.allclose(ti.penalty([0, 2]), [0.2, 0.0]) and not plain.penalty([0]).any()
    with pytest.raises(ValueError, match=r"row_prior must be \(3,\)"):
        TermIndex(xb, np.arange(3), use_gpu=False, row_prior=np.zeros(2))


def test_empty_index():
    ti = TermIndex(np.zeros((0, 8), np.float32), np.zeros(0))
    D, I = ti.search(_unit(3, 8, 0), 5)
    assert D.shape == (3, 0) and ti.best_entries(D, I, 0.0, 5) == []


def test_torch_flat_index_matches_exact_search():
    """The GPU fallback's search contract, run on the CPU (float32 there)."""
    from rasst.retriever.index import TorchFlatIndex

    xb, xq = _unit(3000, 64, 4), _unit(40, 64, 5)
    idx = TorchFlatIndex(64, "cpu")
    idx.add(xb[:1000])
    idx.add(xb[1000:])
    assert idx.ntotal == 3000
    D, I = idx.search(xq, 10)
    De, Ie = exact_search(xq, xb, 10)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert (I == Ie).all()
    assert np.allclose(D, De, atol=1e-5)
    with np.testing.assert_raises(ValueError):
        idx.add(_unit(3, 32, 6))


def test_int8_index_finds_the_exact_neighbours():
    from rasst.retriever.index import Int8FlatIndex

    xb, xq = _unit(5000, 256, 9), _unit(66, 256, 10)
    idx = build_index(xb, use_gpu=False, precision="int8")
    assert isinstance(idx, Int8FlatIndex) and idx.ntotal == 5000
    D, I = idx.search(xq, 10)
    De, Ie = exact_search(xq, xb, 10)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert recall_at(I, Ie, 10) >= 0.97
    assert np.abs(D - De).max() < 0.02  # per-row int8: relative error ~1/127 per element
    # One query, and a query equal to a database row, still work.
    D1, I1 = idx.search(xb[3:4], 1)
    assert I1[0, 0] == 3 and abs(D1[0, 0] - 1.0) < 0.01
    # HNSW above exact_max ignores the precision; unknown precisions are refused.
    assert "HNSW" in type(build_index(xb, exact_max=100, use_gpu=False, precision="int8")).__name__
    with pytest.raises(ValueError, match="precision must be one of"):
        build_index(xb, precision="int4")
    with pytest.raises(ValueError, match="vectors must be"):
        idx.add(_unit(2, 32, 11))


@pytest.mark.requires_cuda
def test_gpu_exact_index_is_exact_up_to_float16_ties():
    from rasst.retriever.index import TorchFlatIndex, faiss_gpu_available

    xb, xq = _unit(20000, 256, 7), _unit(66, 256, 8)
    idx = build_index(xb, use_gpu=True)
    if not faiss_gpu_available():
        assert isinstance(idx, TorchFlatIndex)
    D, I = idx.search(xq, 10)
    De, Ie = exact_search(xq, xb, 10)
    assert recall_at(I, Ie, 10) >= 0.99
    assert np.abs(D - De).max() < 5e-3
    # On a GPU exact search goes well past the CPU's exact_max (no HNSW).
    big = build_index(xb, exact_max=1000, use_gpu=True)
    assert "HNSW" not in type(big).__name__


def test_int8_index_searches_block_by_block_like_one_pass(monkeypatch):
    from rasst.retriever.index import Int8FlatIndex

    xb, xq = _unit(1000, 64, 12), _unit(9, 64, 13)
    one = build_index(xb, use_gpu=False, precision="int8")
    D1, I1 = one.search(xq, 5)
    monkeypatch.setattr(Int8FlatIndex, "BLOCK_ROWS", 128)  # 8 blocks, the last one short
    D8, I8 = one.search(xq, 5)
    assert np.array_equal(I1, I8) and np.allclose(D1, D8)
    D, I = one.search(xq, 2000)  # k above ntotal
    assert D.shape == (9, 1000) and sorted(I[0]) == list(range(1000))


def test_a_100k_entry_glossary_with_aliases_is_searched_exactly():
    # 100K entries, some with aliases or a second pronunciation: more rows than entries.
    n = 120_000
    idx = TermIndex(_unit(n, 8, 16), np.arange(n) * 100_000 // n, precision="int8")
    assert idx.kind in ("Int8FlatIndex", "IndexFlatIP"), idx.kind


def test_int8_search_split_over_threads_equals_one_thread(monkeypatch):
    import threading

    from rasst.retriever import index as ix

    xb, xq = _unit(1000, 64, 14), _unit(9, 64, 15)
    idx = TermIndex(xb, np.arange(1000), precision="int8")
    monkeypatch.setattr(ix.Int8FlatIndex, "BLOCK_ROWS", 128)  # 8 blocks, the last one short
    D1, I1 = idx.search(xq, 5)
    seen, gate, meet = [], threading.Barrier(2), [True]
    block = ix.Int8FlatIndex._block

    def spy(self, q, k, start):
        seen.append((threading.current_thread().name, start))
        if meet[0] and len(seen) <= 2:
            gate.wait(10)  # the first two blocks are searched at once, by two threads
        return block(self, q, k, start)

    monkeypatch.setattr(ix.Int8FlatIndex, "_block", spy)
    D, I = idx.search(xq, 5, threads=2)
    assert np.array_equal(I1, I) and np.allclose(D1, D)
    assert sorted(start for _, start in seen) == list(range(0, 1000, 128))  # each block once
    names = {name for name, _ in seen}
    assert len(names) == 2 and any(n.startswith("rasst-search") for n in names)
    seen.clear()
    meet[0] = False
    D, I = idx.search(xq, 5)  # one thread: the caller alone
    assert {name for name, _ in seen} == {threading.current_thread().name}


def test_int8_falls_back_to_float32_where_torch_cannot_multiply_int8(monkeypatch):
    import rasst.retriever.index as index_mod

    assert index_mod.int8_matmul_available()  # this torch build can
    monkeypatch.setattr(index_mod, "int8_matmul_available", lambda: False)
    idx = build_index(_unit(100, 16, 14), use_gpu=False, precision="int8")
    assert "IndexFlat" in type(idx).__name__


@pytest.mark.parametrize("n", [50, 1000, 10037, 16384])
@pytest.mark.parametrize("k", [1, 2, 10])
def test_topk_rows_equals_torch_topk(n, k):
    import torch
    from rasst.retriever.index import topk_rows

    S = torch.randn(66, n, generator=torch.Generator().manual_seed(n + k))
    D, I = topk_rows(S, k)
    D0, I0 = S.topk(k, dim=1)
    assert torch.equal(D, D0) and torch.equal(I, I0)
    # The best values hiding in one group, and in the columns after the last whole group.
    S[:, 5 : 5 + k] = 10.0 + torch.arange(k)
    S[:, -1] = 20.0
    D, I = topk_rows(S, k)
    assert I[:, 0].eq(n - 1).all() and D[:, 0].eq(20.0).all()


def test_window_agreement_lowers_entries_few_windows_agree_on():
    """Entry 0 is the best row of three windows, entry 1 of one window only (a near miss):
    with agreement over 4 windows entry 1 loses 3/4 of the penalty and falls behind entry
    0, which loses 1/4; an entry no window ranks first loses all of it. The threshold and
    top-k apply after."""
    from rasst.retriever.scoring import Agreement, score_entries

    xb = np.eye(3, dtype=np.float32)
    ti = TermIndex(xb, np.array([0, 1, 2]), use_gpu=False)
    xq = np.array(
        [[0.85, 0.2, 0.0], [0.75, 0.3, 0.0], [0.7, 0.1, 0.4], [0.1, 0.9, 0.0]], np.float32
    )
    D, I = ti.search(xq, 2)
    plain = score_entries(ti, D, I, 0.0, 5)
    assert [(h.entry, round(h.score, 6)) for h in plain] == [(1, 0.9), (0, 0.85), (2, 0.4)]
    agree = Agreement(0.2, 4)
    assert np.allclose(agree.penalties(ti, I, [0, 1, 2]), [0.05, 0.15, 0.2])
    hits = score_entries(ti, D, I, 0.0, 5, agreement=agree)
    assert [(h.entry, round(h.score, 6)) for h in hits] == [(0, 0.8), (1, 0.75), (2, 0.2)]
    assert [h.entry for h in score_entries(ti, D, I, 0.76, 5, agreement=agree)] == [0]
    assert [h.entry for h in score_entries(ti, D, I, 0.5, 1, agreement=agree)] == [0]
    assert not Agreement() and score_entries(ti, D, I, 0.0, 5, agreement=Agreement()) == plain


def test_overlap_suppression_keeps_the_better_of_two_hits_heard_in_the_same_speech():
    """Hits best first: a hit whose window lies mostly inside a better kept hit's is
    dropped; one that overlaps little, one whose form nests in the better one's, and one
    whose only overlap is with a dropped hit are kept."""
    from rasst.retriever.scoring import Suppression

    starts = [1.0, 1.2, 1.3, 2.6, 0.5, 2.1]
    ends = [2.0, 2.3, 1.8, 3.0, 1.2, 2.5]
    forms = ["stem cell transplant", "stem sell", "cell", "other", "stamps", "sellers"]
    assert Suppression(0.5).keep(starts, ends, forms) == [True, False, True, True, True, True]
    # 0.5-1.2 overlaps 1.0-2.0 by 0.29 of its own length; 1.2-2.3 overlaps it by 0.8 of
    # 1.0-2.0, the shorter.
    assert Suppression(0.25).keep(starts, ends, forms) == [True, False, True, True, False, True]
    # At 0.9 "stem sell" stands, and then "cell" (inside it, not a part of it) does not.
    assert Suppression(0.9).keep(starts, ends, forms) == [True, True, False, True, True, True]
    assert not Suppression() and Suppression().fraction == 0.0


def test_overlap_suppression_thins_hints_after_the_threshold_and_before_top_k():
    """Three windows over one stretch of speech find three entries; with suppression only
    the best of them is a hint, the entry found apart stays, and top-k counts the
    survivors. Without it (ranking for Recall@k) all are ranked."""
    from rasst.retriever.scoring import Suppression, score_entries

    xb = np.eye(4, dtype=np.float32)
    ti = TermIndex(xb, np.array([0, 1, 2, 3]), use_gpu=False)
    xq = np.array([[0.9, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 0.7, 0], [0, 0, 0, 0.6]], np.float32)
    spans = np.array([[10, 50], [12, 48], [20, 45], [60, 90]])
    forms = ["parsing", "sparing", "pairing", "later"]
    D, I = ti.search(xq, 1)
    plain = score_entries(ti, D, I, 0.0, 3, spans=spans)
    assert [h.entry for h in plain] == [0, 1, 2]
    kw = {"spans": spans, "suppression": Suppression(0.5), "row_forms": forms}
    assert [h.entry for h in score_entries(ti, D, I, 0.0, 3, **kw)] == [0, 3]
    assert [h.entry for h in score_entries(ti, D, I, 0.0, 1, **kw)] == [0]
    assert [h.entry for h in score_entries(ti, D, I, 0.85, 3, **kw)] == [0]
    # Without the best window, the next best entry of that stretch is the hint.
    assert [
        h.entry
        for h in score_entries(
            ti, D[1:], I[1:], 0.0, 3, spans=spans[1:], suppression=Suppression(0.5), row_forms=forms
        )
    ] == [1, 3]


def test_overlap_suppression_stops_at_the_limit_without_changing_the_survivors():
    from rasst.retriever.scoring import Suppression

    starts, ends = [0.0, 0.1, 2.0, 4.0, 4.1], [1.0, 0.9, 3.0, 5.0, 5.0]
    forms = ["a", "b", "c", "d", "e"]
    full = Suppression(0.5).keep(starts, ends, forms)
    assert full == [True, False, True, True, False]
    assert Suppression(0.5).keep(starts, ends, forms, limit=2) == [True, False, True, False, False]


def test_query_normalisation_shifts_every_score_of_a_query_by_its_cohort():
    """Every score of a query loses the weight times the mean score of its best
    ``size`` entries (second stage and agreement included); the threshold applies after,
    with the same entries the unshifted scores give at the threshold plus the shift, and
    the ranking does not change."""
    from rasst.retriever.scoring import RANK_ALL, Agreement, Cohort, score_entries

    rng = np.random.default_rng(20)
    xb = _unit(300, 16, 21)
    ti = TermIndex(xb, np.arange(300), use_gpu=False)
    xq = xb[[3, 3, 7, 40]] + 0.3 * _unit(4, 16, 22)
    D, I = ti.search(xq, 2)
    spans = np.array([[0, 20], [5, 30], [40, 60], [70, 90]])
    phones = [rng.integers(1, 9, 4) for _ in range(300)]

    def rescore(labels, windows, cosine):  # a second stage that only lowers scores
        return np.asarray(cosine, np.float32) - 0.01 * np.array([lab.sum() for lab in labels])

    kw = {"row_phones": phones, "spans": spans, "rescore": rescore, "pool": 16}
    agree = Agreement(0.2, 2)
    plain = score_entries(ti, D, I, RANK_ALL, 8, agreement=agree, **kw)
    cohort = Cohort(0.5, 3)
    best = plain[:3]
    assert cohort.shift(ti, D, I, rescore, phones, spans, agree) == pytest.approx(
        0.5 * np.mean([h.score for h in best]), abs=1e-6
    )
    shift = 0.5 * np.mean([h.score for h in best])
    normed = score_entries(ti, D, I, RANK_ALL, 8, agreement=agree, cohort=cohort, **kw)
    assert [h.entry for h in normed] == [h.entry for h in plain]
    assert np.allclose([h.score for h in normed], [h.score - shift for h in plain], atol=1e-6)
    for t in (-0.2, 0.0, 0.2, 0.5):
        at = score_entries(ti, D, I, t, 8, agreement=agree, cohort=cohort, **kw)
        assert [h.entry for h in at] == [h.entry for h in plain if h.score - shift >= t - 1e-7]
    # Without a second stage or penalties: the best entry's cosine, at weight 1 and size 1.
    bare = score_entries(ti, D, I, RANK_ALL, 8)
    shifted = score_entries(ti, D, I, RANK_ALL, 8, cohort=Cohort(1.0, 1))
    assert [h.entry for h in shifted] == [h.entry for h in bare]
    assert np.allclose([h.score for h in shifted], [h.score - bare[0].score for h in bare])
    assert not Cohort() and not Cohort(0.5, 0) and Cohort().shift(ti, D, I) == 0.0

    # An entry that cannot align (the second stage's -1e9 per phoneme) counts as -1.
    def unalignable(labels, windows, cosine):
        out = np.asarray(cosine, np.float32).copy()
        out[0] = -1e8
        return out

    got = Cohort(1.0, 3).shift(ti, D, I, unalignable, phones, spans)
    firsts = [h.score for h in ti.best_entries(D, I, RANK_ALL, 3, prior=True)]
    assert got == pytest.approx(np.mean([-1.0, *firsts[1:]]), abs=1e-6)


def _low_rank(n, d, rank, seed, noise=0.01):
    """Unit rows about a common mean whose spread lies mostly in ``rank`` directions, as
    the text encoder's term vectors do."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T  # (rank, d) orthonormal
    x = 0.5 * rng.standard_normal(d) + rng.standard_normal((n, rank)) @ basis
    x += noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _assert_int8_top_k(xq, xb, D, I, k):
    """``D``, ``I`` are the flat int8 search's top ``k`` (rows of equal score may come in
    either order)."""
    import torch
    from rasst.retriever.index import Int8FlatIndex, quantize_rows

    flat = Int8FlatIndex(xb.shape[1])
    flat.add(xb)
    Df, _ = flat.search(xq, k)
    assert D.shape == Df.shape and np.array_equal(D, Df)
    q8, qs = quantize_rows(torch.from_numpy(xq))
    x8, xs = quantize_rows(torch.from_numpy(xb))
    S = ((q8.float() @ x8.float().T) * xs * qs[:, None]).numpy()  # every row's int8 score
    assert np.allclose(np.take_along_axis(S, I, 1), D, atol=1e-6)
    assert all(len(set(row)) == len(row) for row in I)


def test_low_rank_rows_get_an_index_with_the_flat_int8_answers():
    from rasst.retriever.index import Int8FlatIndex, LowRankIndex

    xb = _low_rank(20_000, 64, 8, 20)
    idx = build_index(xb, use_gpu=False, precision="int8")
    assert isinstance(idx, LowRankIndex) and idx.ntotal == 20_000 and idx.rank <= 16
    # Queries near rows (as a spoken term's windows are) and anywhere on the sphere.
    near = xb[:40] + 0.1 * _unit(40, 64, 21)
    xq = np.concatenate([near / np.linalg.norm(near, axis=1, keepdims=True), _unit(26, 64, 22)])
    for k in (1, 2, 10, 300):
        D, I = idx.search(xq, k)
        assert D.dtype == np.float32 and I.dtype == np.int64
        _assert_int8_top_k(xq, xb, D, I, k)
    D, I = idx.search(xq[:3], 30_000)  # k above ntotal: every row, ranked
    assert D.shape == (3, 20_000) and sorted(I[0]) == list(range(20_000))
    # Rows spread in every direction gain nothing from it: the flat int8 index.
    assert isinstance(
        build_index(_unit(10_000, 64, 23), use_gpu=False, precision="int8"), Int8FlatIndex
    )


def test_low_rank_search_looks_again_where_the_estimate_could_be_wrong(monkeypatch):
    from rasst.retriever.index import LowRankIndex

    # Some rows stand out in a direction the low-rank estimate ignores, and queries point
    # at it: those rows win on their exact scores while their estimates rank them low.
    xb = _low_rank(20_000, 64, 8, 24, noise=0.0)
    rng = np.random.default_rng(25)
    odd = rng.choice(20_000, 50, replace=False)
    centred = xb - xb.mean(0)
    off = np.linalg.eigh(centred.T @ centred)[1][:, 0].astype(np.float32)  # least-used direction
    xb[odd] += 0.6 * off
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    idx = LowRankIndex.of(xb)
    assert idx is not None
    monkeypatch.setattr(LowRankIndex, "CANDIDATES", 1)  # few candidates: more second looks
    xq = off + 0.1 * xb[:20]
    xq = np.concatenate([xq / np.linalg.norm(xq, axis=1, keepdims=True), xb[20:30]])
    D, I = idx.search(xq, 2)
    assert idx.second_looks >= 20
    _assert_int8_top_k(xq, xb, D, I, 2)
    assert set(I[:20].ravel()) <= set(odd)


def test_low_rank_search_split_over_threads_equals_one_thread(monkeypatch):
    from rasst.retriever.index import LowRankIndex

    xb = _low_rank(20_000, 64, 8, 26)
    idx = TermIndex(xb, np.arange(20_000), precision="int8")
    assert idx.kind == "LowRankIndex"
    monkeypatch.setattr(LowRankIndex, "BLOCK_ROWS", 3000)  # 7 blocks, the last one short
    xq = _unit(66, 64, 27)
    D1, I1 = idx.search(xq, 2)
    D2, I2 = idx.search(xq, 2, threads=2)
    assert np.array_equal(I1, I2) and np.array_equal(D1, D2)
    _assert_int8_top_k(xq, xb, D1, I1, 2)
