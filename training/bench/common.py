"""Helpers every benchmark shares: percentiles, the device name, bench glossaries and an in-process server."""

from __future__ import annotations

import json
import logging
import platform
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)
SAMPLE_RATE = 16000


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def device_name() -> str:
    """The CPU, and the GPU where there is one, for the report's header."""
    import os

    from rasst.retriever.index import gpu_name

    cpu = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    gpu = gpu_name()
    return f"{gpu} + {cpu}" if gpu else cpu


# --------------------------------------------------------------------------- server helpers


def _bench_terms() -> list[str]:
    """Real terms for glossaries: the corpus' training terms, else the offline word lists."""
    from ..cli import DEFAULT_CORPUS
    from ..terms import default_distractors, read_lines

    path = DEFAULT_CORPUS / "terms" / "train.txt"
    return read_lines(path) if path.exists() else default_distractors()


def _glossary_entries(n: int, lang: str = "de") -> list[dict]:
    terms = _bench_terms()
    demo = [
        json.loads(line)["term"]
        for line in (Path(__file__).resolve().parents[2] / "retriever" / "demo" / "glossary.jsonl")
        .read_text()
        .splitlines()
    ]
    pool = list(dict.fromkeys(demo + terms))[:n]
    return [{"id": f"e{i}", "term": t, "translations": {lang: t}} for i, t in enumerate(pool)]


async def _start_server(
    checkpoint: str, threads: int = 1, device: str = "auto", demo_glossary: bool = True, **kw
):
    from rasst.retriever.config import ServerConfig
    from rasst.retriever.server import create_server

    tmp = tempfile.TemporaryDirectory()
    cfg = ServerConfig(
        address="127.0.0.1:0",
        checkpoint=checkpoint,
        data_dir=tmp.name,
        admin_token="bench",
        demo_glossary=demo_glossary,
        threads=threads,
        device=device,
        **kw,
    )
    server, port, state = await create_server(cfg)
    return server, port, state, tmp
