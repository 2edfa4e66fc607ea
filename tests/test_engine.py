"""The engine's encoder workers: per-worker calls, parallel work, batching, shutdown."""

import asyncio
import threading

import numpy as np
import pytest
from conftest import encoded_units
from rasst.retriever.config import EngineConfig, resolve_workers
from rasst.retriever.engine import Engine
from rasst.retriever.glossary import GlossaryStore, make_entry


def test_resolve_workers(monkeypatch):
    assert resolve_workers(3, "cpu") == 3
    assert resolve_workers(0, "cuda") == 1
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_workers(0, "cpu") == 2
    assert resolve_workers(0, "cpu", threads=2) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert resolve_workers(0, "cpu") == 4


def test_workers_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"workers must be in \[0, 64\] \(0 = auto\), got 65"):
        Engine(GlossaryStore(tmp_path), EngineConfig(workers=65))


@pytest.fixture
def engine(tmp_path, tiny_checkpoint, request):
    e = Engine(GlossaryStore(tmp_path), EngineConfig(workers=request.param))
    e.load_model(tiny_checkpoint)
    g = e.store.prepare_put(
        "g",
        [
            make_entry({"term": t, "translations": {"de": t.upper()}}, f"entries[{i}]")
            for i, t in enumerate(["attention mechanism", "semantic parsing"])
        ],
    )
    e.commit_glossary(g)
    yield e
    e.close()


def _submit_all(e: Engine, clips: list[np.ndarray]):
    async def go():
        futs = [e.submit(c, "g", 5, 0.0, 30.0) for c in clips]
        return await asyncio.gather(*futs)

    return asyncio.run(go())


def _clips(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("engine", [2], indirect=True)
def test_each_worker_runs_a_call_once_on_its_own_thread(engine):
    names = engine.on_workers(lambda: threading.current_thread().name)
    assert sorted(names) == ["rasst-encoder-0", "rasst-encoder-1"]


def _wait_idle(e: Engine, n: int) -> None:
    for _ in range(1000):
        if e._queue.idle() == n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{n} workers never became idle")


@pytest.mark.parametrize("engine", [2], indirect=True)
def test_idle_workers_take_requests_side_by_side(engine):
    # Both workers wait: the two requests go one to each, in two batches, in parallel.
    _wait_idle(engine, 2)
    before = engine.stats["batches"]
    started, release = threading.Barrier(3), threading.Event()
    # Hold both workers inside a batch each by making their first front-end call wait.
    frontend = engine.snapshot.frontend
    real = frontend.frame_tensors

    def held(clips):
        started.wait(10)
        release.wait(10)
        return real(clips)

    frontend.frame_tensors = held
    try:
        results = {}

        def run():
            results["r"] = _submit_all(engine, _clips(2))

        t = threading.Thread(target=run)
        t.start()
        # Two requests reach two workers at once: neither waits for the other's batch.
        started.wait(10)
        release.set()
        t.join(30)
    finally:
        frontend.frame_tensors = real
    assert len(results["r"]) == 2 and all(r.glossary_version == 1 for r in results["r"])
    assert engine.stats["batches"] - before == 2
    assert engine.stats["requests"] >= 2


@pytest.mark.parametrize("engine", [1], indirect=True)
def test_one_busy_worker_batches_what_queued_meanwhile(engine):
    before = engine.stats["batches"]
    release = threading.Event()
    blocker = threading.Thread(target=engine.on_workers, args=(lambda: release.wait(10),))
    blocker.start()
    results = {}
    t = threading.Thread(target=lambda: results.update(r=_submit_all(engine, _clips(3))))
    t.start()
    while engine.queue_depth() < 3:
        threading.Event().wait(0.01)
    release.set()
    t.join(30)
    blocker.join(30)
    assert len(results["r"]) == 3
    assert engine.stats["batches"] - before == 1  # the three queued requests, one batch
    assert max(r.batch_windows for r in results["r"]) == sum(
        len(engine.snapshot.model.windows(50)) for _ in range(3)
    )


@pytest.mark.parametrize("engine", [3], indirect=True)
def test_close_stops_every_worker(engine):
    threads = list(engine._threads)
    assert all(t.is_alive() for t in threads)
    engine.close()
    assert not any(t.is_alive() for t in threads)


def test_gpu_warm_up_covers_every_batch_a_full_batch_can_hold(default_checkpoint):
    from rasst.retriever.engine import WARM_UP_CLIPS_S, _clip_windows, _warm_up_shapes
    from rasst.retriever.index import pow2_bucket
    from rasst.retriever.model import DualEncoder

    model = DualEncoder.from_pretrained(default_checkpoint)

    class GpuFrontend:
        device = "cuda"
        frame_rate = 50

    for max_windows in (64, 2048, 5000):
        warmed = set(_warm_up_shapes(model, GpuFrontend(), max_windows))
        for s in WARM_UP_CLIPS_S:
            per_clip = _clip_windows(int(s * 16000), model.config)
            # A batch takes clips while it holds fewer than max_windows.
            most = 1
            while most * per_clip < max_windows:
                most += 1
            assert all((pow2_bucket(n), s) in warmed for n in range(1, min(most, 256) + 1))


@pytest.mark.parametrize("engine", [2], indirect=True)
def test_light_load_stays_on_one_worker(engine):
    # One request at a time: the worker that finished last takes the next (warm caches),
    # instead of the two taking turns.
    frontend = engine.snapshot.frontend
    real, names = frontend.frame_tensors, []

    def recording(clips):
        names.append(threading.current_thread().name)
        return real(clips)

    frontend.frame_tensors = recording
    try:
        for clip in _clips(6):
            _wait_idle(engine, 2)
            _submit_all(engine, [clip])
    finally:
        frontend.frame_tensors = real
    assert len(names) == 6 and len(set(names)) == 1, names


@pytest.mark.parametrize("split", [True, False])
def test_a_lone_chunk_searches_on_the_idle_workers_cores(tmp_path, tiny_checkpoint, split):
    e = Engine(GlossaryStore(tmp_path), EngineConfig(workers=2, split_search=split))
    try:
        e.load_model(tiny_checkpoint)
        entry = make_entry({"term": "semantic parsing", "translations": {"de": "x"}}, "e")
        e.commit_glossary(e.store.prepare_put("g", [entry]))
        index, seen = e.snapshot.glossaries["g"].index, []
        real = index.search

        def recording(xq, k, threads=1):
            seen.append(threads)
            return real(xq, k, threads)

        index.search = recording
        _wait_idle(e, 2)
        _submit_all(e, _clips(1))
        assert seen == ([2] if split else [1])
    finally:
        e.close()


def test_dispatch_hands_work_to_the_last_idle_worker_and_times_out():
    import queue

    from rasst.retriever.engine import _Dispatch, _Slot

    d, got = _Dispatch(), {}
    with pytest.raises(queue.Empty):
        d.get(_Slot(), timeout=0.01)
    assert d.idle() == 0

    def wait(name):
        got[name] = d.get(_Slot())

    first = threading.Thread(target=wait, args=("first",), daemon=True)
    first.start()
    while d.idle() < 1:
        threading.Event().wait(0.001)
    second = threading.Thread(target=wait, args=("second",), daemon=True)
    second.start()
    while d.idle() < 2:
        threading.Event().wait(0.001)
    d.put("a")
    second.join(5)
    assert got == {"second": "a"}
    d.put("b")
    first.join(5)
    assert got["first"] == "b"
    d.put("c")  # nobody waits: it queues
    assert d.qsize() == 1 and d.get_nowait() == "c"


@pytest.mark.parametrize("engine", [1], indirect=True)
def test_swaps_freeze_the_heap(engine):
    import gc

    # load_model froze what it built: a full collection no longer walks the model.
    frozen = gc.get_freeze_count()
    assert frozen > 10_000
    entries = [make_entry({"term": f"term {i}", "translations": {}}, "e") for i in range(500)]
    engine.commit_glossary(engine.store.prepare_put("more", entries))
    assert gc.get_freeze_count() > frozen  # the new glossary's objects joined them


def test_a_patch_embeds_only_new_forms_and_a_restart_none(tmp_path, tiny_checkpoint, monkeypatch):
    from rasst.retriever.engine import embed_glossary

    encoded = encoded_units(monkeypatch)
    entries = [
        make_entry({"id": f"e{i}", "term": f"word number {i}", "translations": {"de": "x"}}, "e")
        for i in range(300)
    ]
    e = Engine(GlossaryStore(tmp_path), EngineConfig(workers=1))
    e.load_model(tiny_checkpoint)
    e.commit_glossary(e.store.prepare_put("g", entries))
    assert sum(map(len, encoded)) == 300
    encoded.clear()
    new = make_entry({"id": "n", "term": "brand new term", "translations": {"de": "y"}}, "e")
    e.commit_glossary(e.store.prepare_patch("g", [new], ["e0"]))
    assert sum(map(len, encoded)) == 1  # only the new form
    served = e.snapshot.glossaries["g"]
    fresh = embed_glossary(e.snapshot.model, served.glossary, precision="int8")
    np.testing.assert_allclose(served.rows.vectors, fresh.rows.vectors, atol=1e-6)
    assert served.rows.prior is None and fresh.rows.prior is None  # no prior in this model
    e.close()

    encoded.clear()
    again = Engine(GlossaryStore(tmp_path), EngineConfig(workers=1))
    again.load_model(tiny_checkpoint)  # a restart: the rows saved by this model are loaded
    assert sum(map(len, encoded)) == 0
    assert again.snapshot.glossaries["g"].glossary.version == 2
    np.testing.assert_array_equal(again.snapshot.glossaries["g"].rows.vectors, served.rows.vectors)
    assert again.delete_glossary("g") and not (tmp_path / "embeddings" / "g.npz").exists()
    again.close()


def test_another_model_embeds_again(tmp_path, tiny_checkpoint, default_checkpoint, monkeypatch):
    from rasst.retriever.engine import embed_glossary

    e = Engine(GlossaryStore(tmp_path), EngineConfig(workers=1))
    e.load_model(tiny_checkpoint)
    e.commit_glossary(e.store.prepare_put("g", [make_entry({"term": "attention mechanism"}, "e")]))
    encoded = encoded_units(monkeypatch)
    e.load_model(default_checkpoint)
    assert sum(map(len, encoded)) == 1
    # A model with a prior keeps each row's penalty beside its vector, reused by a patch.
    e.commit_glossary(e.store.prepare_patch("g", [make_entry({"term": "bleu score"}, "e")], []))
    served = e.snapshot.glossaries["g"]
    fresh = embed_glossary(e.snapshot.model, served.glossary)
    np.testing.assert_allclose(served.rows.prior, fresh.rows.prior, atol=1e-6)
    e.close()


def test_a_term_embeds_the_same_whatever_else_is_in_the_batch(tiny_checkpoint):
    from rasst.retriever.model import DualEncoder

    m = DualEncoder.from_pretrained(tiny_checkpoint)
    terms = ["a", "attention mechanism", "semantic parsing for task oriented dialogue", "bleu"]
    together = m.encode_terms(terms)
    alone = np.concatenate([m.encode_terms([t]) for t in terms])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_a_recalibrated_checkpoint_embeds_again(tmp_path, tiny_checkpoint, monkeypatch):
    """Saved rows carry their penalties: a checkpoint with the same weights and another
    length penalty must not reuse them."""
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["length_penalty"] = 0.2
    (other / "config.json").write_text(json.dumps(cfg))
    e = Engine(GlossaryStore(tmp_path / "data"), EngineConfig(workers=1))
    e.load_model(tiny_checkpoint)
    e.commit_glossary(e.store.prepare_put("g", [make_entry({"term": "bleu"}, "e")]))
    assert e.snapshot.glossaries["g"].rows.prior is None
    encoded = encoded_units(monkeypatch)
    e.load_model(other)
    assert sum(map(len, encoded)) == 1
    assert e.snapshot.glossaries["g"].rows.prior[0] > 0
    e.close()


def test_a_snapshot_reuses_its_base_model_only_for_the_same_weights_and_config(
    tmp_path, tiny_checkpoint
):
    """A recalibrated checkpoint (same weights, new thresholds) is loaded, not mistaken for
    the model already served: replicas must answer with the thresholds it names."""
    import json
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    e = Engine(None, EngineConfig(workers=1), embeddings_dir=tmp_path / "emb")
    try:
        first = e.build_snapshot(ckpt, [])
        assert e.build_snapshot(ckpt, [], first).model is first.model
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["threshold"] = 0.123
        (ckpt / "config.json").write_text(json.dumps(cfg))
        again = e.build_snapshot(ckpt, [], first)
        assert again.model_id == first.model_id  # the weights did not change
        assert again.model is not first.model and again.model.config.threshold == 0.123
    finally:
        e.close()
