"""The benchmark: hint precision/recall, the report table, and the RPC overhead run."""

from __future__ import annotations

import asyncio
import math
import os

import numpy as np
import pytest
from rasst.retriever.model import default_checkpoint_dir
from rasst.training.bench.encoder import bench_encoder
from rasst.training.bench.index import bench_index
from rasst.training.bench.load import LOAD_MODES, bench_load
from rasst.training.bench.quality import _hint_quality, _hint_report
from rasst.training.bench.report import markdown
from rasst.training.bench.rpc import bench_rpc_overhead


def test_hint_quality_counts_delivered_hints_and_spoken_terms():
    hints = [{1: 0.9, 2: 0.8, 3: 0.2}, {4: 0.95}, {}]
    spoken = [{1}, {5}, {6}]
    q = _hint_quality(hints, spoken, 0.5)
    # Delivered: {1, 2} and {4}; correct: 1. Spoken: 3 occurrences, 1 found.
    assert q["hint_precision"] == round(1 / 3, 4) and q["hint_recall"] == round(1 / 3, 4)
    strict = _hint_quality(hints, spoken, 0.85)  # delivered {1}, {4}
    assert strict["hint_precision"] == 0.5 and strict["hint_recall"] == round(1 / 3, 4)


def test_best_f1_is_at_least_the_operating_point():
    hints = [{1: 0.9, 2: 0.6}, {3: 0.7, 4: 0.5}]
    spoken = [{1}, {3}]
    r = _hint_report(hints, spoken, 0.95)
    assert r["operating_point"]["hint_recall"] == 0.0
    assert r["best_f1"]["hint_f1"] >= r["operating_point"]["hint_f1"]
    assert r["best_f1"]["hint_f1"] == 1.0 and r["best_f1"]["threshold"] == 0.7


def test_markdown_reports_every_load_mode():
    row = dict.fromkeys(
        ("client_ms_p50", "client_ms_p95", "client_ms_p99", "server_ms_p50", "server_ms_p95"), 1.0
    )
    rows = [
        {**row, "streams": 8, "mode": m, "chunks": 10, "errors": 0, "server_ms_p99": p99}
        for m, p99 in zip(LOAD_MODES, (20.0, 30.0, 90.0), strict=True)
    ]
    report = {
        "device": "cpu",
        "date": "now",
        "command": "rasst bench",
        "budget_ms": 25.0,
        "load_glossary": 10_000,
        "load": rows,
        "max_streams_server_p99_in_budget": {"realtime": 8, "realtime-random": 0},
        "max_streams_client_p99_in_budget": {"realtime": 8, "realtime-random": 0},
    }
    md = markdown(report)
    for m in LOAD_MODES:
        assert f"| 8 | {m} |" in md
    assert "`realtime`: largest N with server p99 under 25.0 ms: **8**" in md
    assert "`realtime-random`: largest N with server p99 under 25.0 ms: **0**" in md


def test_rpc_overhead_times_unary_and_stream_paths_from_another_process():
    talk = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.05).astype(np.float32)
    r = asyncio.run(bench_rpc_overhead(str(default_checkpoint_dir()), talk, n=3))
    assert r["n"] == 3 and r["clip_s"] == 2.88 and r["chunk_s"] == 0.96
    for path in (r, r["stream"]):
        assert 0 < path["inprocess_ms_p50"] < 5000 and 0 < path["grpc_ms_p50"] < 5000
        assert math.isfinite(path["overhead_ms_p50"]) and path["ratio"] > 0
        # The server's own timings split the overhead: transport is what it did not see.
        assert 0 < path["transport_ms_p50"] < path["grpc_ms_p50"]
        assert math.isfinite(path["server_extra_ms_p50"])
        assert math.isfinite(path["overhead_net_ms_p50"])
    assert r["empty_rpc_ms_p50"] > 0
    # The bare echo did the same engine work (its own time, like the in-process call's, is
    # tens of ms, not the microseconds of an empty handler) and cost more than nothing.
    echo = r["echo"]
    assert echo["inprocess_ms_p50"] > 1 and echo["overhead_ms_p50"] > 0
    assert echo["grpc_ms_p50"] > echo["inprocess_ms_p50"]
    assert math.isfinite(r["stream"]["above_echo_ms_p50"])
    md = markdown({"device": "cpu", "date": "now", "command": "rasst bench", "rpc": r})
    assert "| unary Retrieve, 2.88 s clip" in md and "| StreamRetrieve, one 0.96 s chunk" in md
    assert "| floor: a bare gRPC echo handler" in md and "above the bare echo's" in md


def test_load_runs_sessions_from_another_process_and_counts_every_chunk():
    talk = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.05).astype(np.float32)
    rows = asyncio.run(
        bench_load(str(default_checkpoint_dir()), talk, [1, 2], 1.92, 50, 25.0, ("max",))
    )
    assert [(r["streams"], r["chunks"], r["errors"]) for r in rows] == [(1, 2, 0), (2, 4, 0)]
    for r in rows:
        assert 0 < r["server_ms_p50"] <= r["server_ms_p99"] <= r["client_ms_p99"] + 1e-6
        assert len(r["_client_ms"]) == r["chunks"]
        # Where each chunk's time went, and the slowest chunks in detail.
        assert 0 <= r["server_encode_ms_p99"] <= r["server_ms_p99"]
        slow = r["slowest_chunks"]
        assert 1 <= len(slow) <= 3 and slow[0]["total_ms"] == max(s["total_ms"] for s in slow)
        assert {"stream", "sequence", "queue_ms", "encode_ms", "search_ms"} <= set(slow[0])


def test_index_part_compares_flat_int8_and_hnsw():
    vecs = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = bench_index([300, 800], vecs, dim=32, nq=8, repeats=2)
    assert [r["entries"] for r in rows] == [300, 800]
    for r in rows:
        for kind in ("flat", "int8_flat", "hnsw"):
            assert r[f"{kind}_search_ms_p50"] > 0
        assert 0.9 <= r["int8_flat_recall@10_vs_exact"] <= 1.0
        if (os.cpu_count() or 1) > 1:
            assert r["int8_flat_split_search_ms_p50"] > 0
    md = markdown({"device": "cpu", "date": "now", "command": "rasst bench", "index": rows})
    assert "| 800 |" in md and "int8 split over the cores ms p50" in md


def test_encoder_part_times_batches_on_the_serving_device():
    talk = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.05).astype(np.float32)
    rows = bench_encoder(str(default_checkpoint_dir()), talk, [1, 2], "cpu", repeats=2)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["device"] == "cpu" and r["windows_per_clip"] > 0
        assert abs(r["ms_per_clip"] * r["batch"] - r["ms_p50"]) < 0.01 * r["batch"]
    md = markdown({"device": "cpu", "date": "now", "command": "rasst bench", "encoder": rows})
    assert "## Encode step" in md and "| 2 |" in md


@pytest.mark.parametrize(
    "flag",
    [
        ["--workers", "99"],
        ["--threads", "0"],
        ["--load-modes", "sometimes"],
        ["--load-entries", "0"],
    ],
)
def test_bench_rejects_bad_load_flags(tmp_path, capsys, flag):
    from rasst.training.bench.cli import main

    assert main(["--only", "load", "--out", str(tmp_path), *flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rasst bench: ") and flag[0] in err


@pytest.mark.parametrize("flag", [["--replicas", "0"], ["--replicas", "two"], ["--rounds", "0"]])
def test_bench_rejects_bad_cluster_flags(tmp_path, capsys, flag):
    from rasst.training.bench.cli import main

    assert main(["--only", "cluster", "--out", str(tmp_path), *flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rasst bench: ") and flag[0] in err
