"""``rasst bench``: run the benchmarks, write bench.json, bench.md and the plots."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from rasst.retriever.config import PRECISIONS, EngineConfig

from .common import _bench_terms, device_name
from .encoder import bench_encoder
from .index import bench_index
from .load import LOAD_MODES, bench_load
from .quality import bench_quality
from .report import markdown, plots
from .rpc import bench_rpc_overhead

logger = logging.getLogger(__name__)


def _int_list(text: str, lo: int, hi: int) -> list[int] | None:
    """Comma-separated integers, each in [lo, hi]; None when ``text`` is not that."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        return None
    return values if values and min(values) >= lo and max(values) <= hi else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst bench",
        description="Benchmarks: index scaling, RPC overhead, load, quality vs ASR baselines.",
    )
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--quick", action="store_true", help="a few minutes: smaller sweeps")
    p.add_argument(
        "--only",
        default="index,encoder,rpc,load,quality",
        help="comma-separated parts to run (index, encoder, rpc, load, quality, cluster)",
    )
    p.add_argument(
        "--replicas",
        default="1,2,4",
        help="comma-separated replica counts of the cluster part (Ray Serve)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the cluster part, alternating cluster and single process (medians)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the speech front-end runs in the encoder, rpc and load parts",
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=EngineConfig.precision,
        help="CPU arithmetic of the speech head and exact search (encoder, rpc and load parts)",
    )
    p.add_argument(
        "--streams",
        default=None,
        help="comma-separated stream counts (default 1,2,4,8 quick / 1,2,4,8,16,32; the "
        "cluster part runs the last, default 8)",
    )
    p.add_argument("--seconds", type=float, default=None, help="audio per stream in the load test")
    p.add_argument(
        "--index-sizes",
        default=None,
        help="comma-separated glossary sizes of the index part (default 1K,10K,100K quick / +1M)",
    )
    p.add_argument(
        "--load-modes",
        default=",".join(LOAD_MODES),
        help="comma-separated load modes: "
        + "; ".join(f"{k} = {v}" for k, v in LOAD_MODES.items()),
    )
    p.add_argument("--budget-ms", type=float, default=25.0, help="p99 budget per chunk")
    p.add_argument(
        "--load-entries",
        type=int,
        default=10_000,
        help="glossary entries in the load test (default 10000)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch / CTranslate2 threads of each encoder worker of the load-test server",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="encoder workers of the load-test server (0 = the server's auto choice)",
    )
    p.add_argument("--manifest", type=Path, default=Path("data/corpus/test_heldout/manifest.jsonl"))
    p.add_argument("--limit", type=int, default=None, help="utterances for the quality comparison")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    modes = tuple(m for m in args.load_modes.split(",") if m)
    if "load" in parts:  # checked before any part runs, not after minutes of them
        unknown = [m for m in modes if m not in LOAD_MODES]
        if unknown:
            print(
                f"rasst bench: --load-modes: unknown {unknown}; allowed: {', '.join(LOAD_MODES)}",
                file=sys.stderr,
            )
            return 2
        from rasst.retriever.config import ServerConfig, validate_config

        try:  # the load-test server's own bounds (its messages start with the field name)
            validate_config(ServerConfig(threads=args.threads, workers=args.workers))
        except ValueError as e:
            print(f"rasst bench: --{e}", file=sys.stderr)
            return 2
        if not 1 <= args.load_entries <= 2_000_000:
            print(
                f"rasst bench: --load-entries must be in [1, 2000000], got {args.load_entries}",
                file=sys.stderr,
            )
            return 2
    if "cluster" in parts:
        replicas = _int_list(args.replicas, 1, 64)
        if replicas is None:
            print(
                f"rasst bench: --replicas must be integers in [1, 64], got {args.replicas!r}",
                file=sys.stderr,
            )
            return 2
        if not 1 <= args.rounds <= 20:
            print(f"rasst bench: --rounds must be in [1, 20], got {args.rounds}", file=sys.stderr)
            return 2
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print(
                "rasst bench: the cluster part needs Ray Serve: pip install 'rasst[cluster]'",
                file=sys.stderr,
            )
            return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import os

    os.environ.setdefault("RASST_FAISS_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from rasst.retriever.model import default_checkpoint_dir

    ckpt = str(default_checkpoint_dir()) if args.checkpoint == "default" else args.checkpoint
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "device": device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "rasst bench " + " ".join(argv or sys.argv[2:]),
        "budget_ms": args.budget_ms,
    }
    demo_wav = Path(__file__).resolve().parents[2] / "retriever" / "demo" / "talk.wav"
    from rasst.retriever.audio import load_audio

    talk = load_audio(demo_wav)
    if "index" in parts:
        if args.index_sizes:
            sizes = _int_list(args.index_sizes, 1, 10_000_000)
            if sizes is None:
                print(
                    f"rasst bench: --index-sizes must be integers in [1, 10000000], got {args.index_sizes!r}",
                    file=sys.stderr,
                )
                return 2
        else:
            sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
        from rasst.retriever.model import DualEncoder

        terms = _bench_terms()[: max(sizes)]
        model = DualEncoder.from_pretrained(ckpt)
        vecs = model.encode_terms(terms, progress=True)
        report["index_vectors"] = (
            f"{len(vecs):,} real term embeddings (WordNet/FOLDOC/wamerican), random unit vectors beyond"
        )
        # One streaming chunk's queries: the windows of chunk + look-back that reach the
        # chunk, from the demo talk (the 0.96 s from 2.88 s on, 1.92 s of look-back).
        from rasst.retriever.model import build_frontend

        from rasst.pcm import SAMPLE_RATE

        rate = model.config.frontend.frame_rate
        clip = talk[int(0.96 * SAMPLE_RATE) : int(3.84 * SAMPLE_RATE)]
        frames = build_frontend(model.config.frontend).frames([clip])[0]
        windows, spans = model.encode_audio(frames)
        queries = windows[spans[:, 1] > int(1.92 * rate)]
        report["index_queries"] = f"{len(queries)} windows of one chunk of the demo talk"
        report["index"] = bench_index(sizes, vecs, queries=queries)
    from rasst.retriever.config import resolve_device, resolve_workers

    device = resolve_device(args.device)
    report["frontend_device"] = device
    if "encoder" in parts:
        batches = [1, 8, 32] if device == "cpu" else [1, 8, 32, 128]
        report["encoder"] = bench_encoder(ckpt, talk, batches, device, precision=args.precision)
    if "rpc" in parts:
        report["rpc"] = asyncio.run(
            bench_rpc_overhead(
                ckpt, talk, n=30 if args.quick else 100, device=device, precision=args.precision
            )
        )
    if "load" in parts:
        streams = [
            int(s)
            for s in (args.streams or ("1,4,8" if args.quick else "1,2,4,8,16,32")).split(",")
        ]
        seconds = args.seconds or (8.0 if args.quick else 30.0)
        report["load_glossary"] = args.load_entries
        report["load_threads"] = args.threads
        report["load_workers"] = resolve_workers(args.workers, device, args.threads)
        report["load_precision"] = args.precision
        report["load"] = asyncio.run(
            bench_load(
                ckpt,
                talk,
                streams,
                seconds,
                args.load_entries,
                args.budget_ms,
                modes,
                args.threads,
                device,
                args.precision,
                report["load_workers"],
            )
        )
        report["latency_samples"] = {
            f"{r['streams']} streams, {r['mode']}": r.pop("_client_ms")
            for r in report["load"]
            if r["mode"] != "max"
        }
        for r in report["load"]:
            r.pop("_client_ms", None)
        for side in ("server", "client"):
            report[f"max_streams_{side}_p99_in_budget"] = {
                m: max(
                    [
                        r["streams"]
                        for r in report["load"]
                        if r["mode"] == m
                        and r[f"{side}_ms_p99"] <= args.budget_ms
                        and r["errors"] == 0
                    ],
                    default=0,
                )
                for m in modes
                if m != "max"
            }
    if "cluster" in parts:
        from .cluster import bench_cluster

        streams = int((args.streams or "8").split(",")[-1])
        report["cluster"] = asyncio.run(
            bench_cluster(
                ckpt,
                talk,
                replicas,
                streams,
                args.seconds or (5.0 if args.quick else 10.0),
                args.load_entries,
                1 if args.quick else args.rounds,
            )
        )
        from .cluster import bench_ingress

        report["cluster"]["ingress"] = asyncio.run(bench_ingress(100 if args.quick else 300))
    if "quality" in parts:
        if args.manifest.exists():
            from ..terms import default_distractors

            sizes = [1000, 10000]
            report["quality"] = bench_quality(
                ckpt,
                args.manifest,
                sizes,
                args.limit or (100 if args.quick else 400),
                default_distractors(),
            )
        else:
            logger.warning(
                "no manifest at %s (run `make data`): skipping the quality comparison",
                args.manifest,
            )
    plots(report, args.out)
    report.pop("latency_samples", None)  # plotted; too long for the JSON
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out / "bench.md").write_text(md)
    print(md)
    return 0
