"""The report: markdown tables and PNG plots of a bench.json."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .common import SAMPLE_RATE
from .load import LOAD_MODES
from .quality import FUZZY_THRESHOLD, HINT_TOP_K

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    L = [
        f"# rasst benchmark ({report['device']}, {report['date']})",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    if "index" in report:
        L += [
            f"## Index scaling (queries: {report.get('index_queries', '66 windows of one 0.96 s chunk')}; k=10, 256-d; {report.get('index_vectors', 'random unit vectors')})",
            "",
        ]
        gpu = any("gpu_flat_search_ms_p50" in r for r in report["index"])
        head = "| entries | flat build s | flat search ms p50 | int8 flat search ms p50 | int8 split over the cores ms p50 | int8 recall@10 vs exact | low-rank build s | low-rank search ms p50 | low-rank split ms p50 | low-rank recall@10 vs exact | HNSW build s | HNSW search ms p50 | HNSW recall@1 / @10 vs exact |"
        rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        if gpu:
            head += " GPU flat build s | GPU flat search ms p50 | GPU flat recall@10 vs exact |"
            rule += "---:|---:|---:|"
        L += [head, rule]
        for r in report["index"]:
            line = f"| {r['entries']:,} | {r.get('flat_build_s', '-')} | {r.get('flat_search_ms_p50', '-')} | {r.get('int8_flat_search_ms_p50', '-')} | {r.get('int8_flat_split_search_ms_p50', '-')} | {r.get('int8_flat_recall@10_vs_exact', '-')} | {r.get('low_rank_build_s', '-')} | {r.get('low_rank_search_ms_p50', '-')} | {r.get('low_rank_split_search_ms_p50', '-')} | {r.get('low_rank_recall@10_vs_exact', '-')} | {r['hnsw_build_s']} | {r['hnsw_search_ms_p50']} | {r.get('hnsw_recall@1_vs_exact', '-')} / {r['hnsw_recall@10_vs_exact']} |"
            if gpu:
                line += f" {r.get('gpu_flat_build_s', '-')} | {r.get('gpu_flat_search_ms_p50', '-')} | {r.get('gpu_flat_recall@10_vs_exact', '-')} |"
            L.append(line)
        L.append("")
    if "encoder" in report:
        L += [
            "## Encode step (front-end + pooling + head) for B streams' 2.88 s clips in one batch",
            "",
            "| batch | front-end | device | windows per clip | ms p50 | ms per clip |",
            "|---:|---|---|---:|---:|---:|",
        ]
        for r in report["encoder"]:
            L.append(
                f"| {r['batch']} | {r['frontend']} | {r['device']} | {r['windows_per_clip']} | {r['ms_p50']} | {r['ms_per_clip']} |"
            )
        L.append("")
    if "rpc" in report:
        r = report["rpc"]
        L += [
            "## RPC overhead (in-process engine vs gRPC from another process; median of paired differences)",
            "",
            "| path | in-process p50 ms | gRPC p50 ms | overhead p50 ms | net of the engine's variation p50 ms | of which server handler / transport ms | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| unary Retrieve, {r['clip_s']} s clip ({r['clip_s'] * SAMPLE_RATE * 2 / 1000:.0f} KB s16le) | {r['inprocess_ms_p50']} | {r['grpc_ms_p50']} | {r['overhead_ms_p50']} | {r.get('overhead_net_ms_p50', '-')} | {r.get('server_extra_ms_p50', '-')} / {r.get('transport_ms_p50', '-')} | {r['ratio']} |",
        ]
        if "stream" in r:
            st = r["stream"]
            L.append(
                f"| StreamRetrieve, one {r['chunk_s']} s chunk (server keeps the look-back) | {st['inprocess_ms_p50']} | {st['grpc_ms_p50']} | {st['overhead_ms_p50']} | {st.get('overhead_net_ms_p50', '-')} | {st.get('server_extra_ms_p50', '-')} / {st.get('transport_ms_p50', '-')} | {st['ratio']} |"
            )
        if "echo" in r:
            e = r["echo"]
            L.append(
                f"| floor: a bare gRPC echo handler, the same chunk bytes and engine call | {e['inprocess_ms_p50']} | {e['grpc_ms_p50']} | {e['overhead_ms_p50']} | {e['overhead_ms_p50']} | 0 / {e['overhead_ms_p50']} | {e['ratio']} |"
            )
        L += [
            "",
            f"n={r['n']} each; an empty unary call (Health.Check) on the same channel takes {r.get('empty_rpc_ms_p50', '-')} ms p50.",
        ]
        if "above_echo_ms_p50" in r.get("stream", {}):
            L.append(
                f"StreamRetrieve's overhead above the bare echo's, call by call: {r['stream']['above_echo_ms_p50']} ms p50."
            )
        L.append("")
    if "load" in report:
        L += [
            f"## Load: concurrent streams, 0.96 s chunks, {report['load_glossary']:,}-entry glossary, "
            f"encoder workers {report.get('load_workers', 1)} "
            f"x {report.get('load_threads', 1)} thread(s), "
            f"{report.get('load_precision', 'int8')} head and index",
            "",
            "| streams | mode | chunks | errors | client p50/p95/p99 ms | server p50/p95/p99 ms | server p99 queue / encode / search ms |",
            "|---:|---|---:|---:|---|---|---|",
        ]
        for r in report["load"]:
            L.append(
                f"| {r['streams']} | {r['mode']} | {r['chunks']} | {r['errors']} | {r['client_ms_p50']} / {r['client_ms_p95']} / {r['client_ms_p99']} | {r['server_ms_p50']} / {r['server_ms_p95']} / {r['server_ms_p99']} | {r.get('server_queue_ms_p99', '-')} / {r.get('server_encode_ms_p99', '-')} / {r.get('server_search_ms_p99', '-')} |"
            )
        L += ["", "Modes: " + "; ".join(f"`{k}` = {v}" for k, v in LOAD_MODES.items()) + ".", ""]
        for m, n in report.get("max_streams_server_p99_in_budget", {}).items():
            c = report["max_streams_client_p99_in_budget"][m]
            L.append(
                f"- `{m}`: largest N with server p99 under {report['budget_ms']} ms: **{n}**; with client p99 under budget: **{c}**"
            )
        L.append("")
    if "cluster" in report:
        c = report["cluster"]
        L += [
            f"## Ray Serve cluster beside one process ({c['streams']} streams, {c['glossary']:,}-entry "
            f"glossary, {c['cores']} cores shared by the replicas; medians of "
            f"{c['rows'][0]['single']['rounds'] if c['rows'] else 0} alternating rounds)",
            "",
            "| replicas | load | chunks/s one process / cluster | client p50 ms | client p99 ms | "
            "server p99 ms | outside encode+search p50 / p99 ms | Ray's cost p50 / p99 ms |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in c["rows"]:
            one, many = r["single"], r["cluster"]
            L.append(
                f"| {r['replicas']} | {r['mode']} | {one['chunks_per_s']} / {many['chunks_per_s']} | "
                f"{one['client_ms_p50']} / {many['client_ms_p50']} | "
                f"{one['client_ms_p99']} / {many['client_ms_p99']} | "
                f"{one['server_ms_p99']} / {many['server_ms_p99']} | "
                f"{one['outside_ms_p50']} / {one['outside_ms_p99']} → "
                f"{many['outside_ms_p50']} / {many['outside_ms_p99']} | "
                f"{r['ray_cost_ms_p50']} / {r['ray_cost_ms_p99']} |"
            )
        L += [
            "",
            "Each cell: one process / cluster. Ray's cost: the cluster's client latency minus the "
            "single process's at the same load.",
            "",
        ]
        if "ingress" in c:
            g = c["ingress"]
            L += [
                f"Ingress alone ({g['calls']} sequential unary calls with a 2.88 s clip, answered by "
                "an echo): ms p50 / p99",
                "",
                "| bare gRPC server | Ray Serve gRPC proxy → deployment | rasst front-end → handle → deployment |",
                "|---:|---:|---:|",
                f"| {g['bare_grpc']['ms_p50']} / {g['bare_grpc']['ms_p99']} | "
                f"{g['serve_grpc_proxy']['ms_p50']} / {g['serve_grpc_proxy']['ms_p99']} | "
                f"{g['front_end_and_handle']['ms_p50']} / {g['front_end_and_handle']['ms_p99']} |",
                "",
            ]
    if "quality" in report:
        q = report["quality"]
        sizes = [k for k in q["systems"]["rasst"] if k.isdigit()]
        L += [
            f"## Quality vs ASR + fuzzy glossary matching ({q['utterances']} held-out-voice utterances, {q['audio_s']} s audio)",
            "",
        ]
        L += [
            "| system | CPU s / audio s | "
            + " | ".join(f"R@1 / R@10 @{int(s):,}" for s in sizes)
            + " |",
            "|---|---:|" + "---:|" * len(sizes),
        ]
        for name, r in q["systems"].items():
            if "error" in r:
                L.append(f"| {name} | {r['error']} |")
                continue
            L.append(
                f"| {name} | {r['cpu_s_per_audio_s']} | "
                + " | ".join(f"{r[s]['recall@1']:.3f} / {r[s]['recall@10']:.3f}" for s in sizes)
                + " |"
            )
        L += [
            "",
            f"Hints per utterance (at most {HINT_TOP_K}; precision over delivered hints, recall over "
            f"spoken terms). Operating point: rasst's calibrated threshold, fuzzy ratio >= "
            f"{FUZZY_THRESHOLD} for the ASR systems; best F1: the threshold with the best F1 on "
            "this set, for each system (an oracle).",
            "",
            "| system | glossary | P / R (operating point) | P / R / F1 (best F1, threshold) |",
            "|---|---:|---|---|",
        ]
        for name, r in q["systems"].items():
            for s_ in sizes:
                h = r.get(s_, {}).get("hints") if "error" not in r else None
                if not h:
                    continue
                o, b = h["operating_point"], h["best_f1"]
                L.append(
                    f"| {name} | {int(s_):,} | {o['hint_precision']:.3f} / {o['hint_recall']:.3f} "
                    f"| {b['hint_precision']:.3f} / {b['hint_recall']:.3f} / {b['hint_f1']:.3f} ({b['threshold']}) |"
                )
        L.append("")
    return "\n".join(L)


def plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "load" in report:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for mode in dict.fromkeys(r["mode"] for r in report["load"] if r["mode"] != "max"):
            rows = [r for r in report["load"] if r["mode"] == mode]
            n = [r["streams"] for r in rows]
            ax.plot(n, [r["server_ms_p99"] for r in rows], marker="o", label=f"server p99, {mode}")
            ax.plot(n, [r["client_ms_p99"] for r in rows], marker="s", label=f"client p99, {mode}")
        ax.axhline(report["budget_ms"], color="grey", ls="--", label="budget")
        ax.set_xlabel("concurrent real-time streams")
        ax.set_ylabel("ms per chunk")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "streams_vs_p99.png", dpi=120)
        plt.close(fig)
    if report.get("latency_samples"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, xs in report["latency_samples"].items():
            xs = np.sort(xs)
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
        ax.set_xlabel("client latency per chunk, ms")
        ax.set_ylabel("CDF")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=120)
        plt.close(fig)
    if "quality" in report:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, r in report["quality"]["systems"].items():
            if "error" in r:
                continue
            sizes = sorted(int(s) for s in r if s.isdigit())
            ax.plot(sizes, [r[str(s)]["recall@10"] for s in sizes], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("glossary entries")
        ax.set_ylabel("recall@10")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "recall_vs_glossary_size.png", dpi=120)
        plt.close(fig)
