"""``rasst translate``: the reference translator process.

Streams a WAV chunk by chunk through a :class:`~rasst.client.api.Session`; at each step it
waits at most ``--budget-ms`` for that chunk's hints, then builds the prompt it would
give its MT/LLM with whatever hints are known. A translate hook (``--hook
module:function``, called as ``hook(prompt, hints, step) -> str``) attaches a real
translator; the default hook only shows the prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from rasst.pcm import CHUNK_S, LOOKBACK_S

from .api import AudioFileError, RasstError, Session, SessionOptions, make_channel, read_audio
from .merger import HintMerger, MergerOptions, PromptBuilder, StepResult


@dataclass
class StepRecord:
    step: int
    chunk_end_s: float
    hints: list[dict]
    fresh: list[str]
    waited_ms: float
    on_time: bool
    latency_ms: float | None  # send -> response for this chunk (None: not answered yet)
    prompt: str
    output: str


def echo_hook(prompt: str, hints, step: int) -> str:
    return ""


def load_hook(spec: str | None) -> Callable:
    if not spec:
        return echo_hook
    mod, _, fn = spec.partition(":")
    if not fn:
        raise ValueError(f"--hook must be module:function, got {spec!r}")
    return getattr(importlib.import_module(mod), fn)


async def run_translator(
    channel,
    samples: np.ndarray,
    sample_rate: int,
    options: SessionOptions,
    budget_ms: float,
    realtime: bool = False,
    hook: Callable = echo_hook,
    merger_options: MergerOptions | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    responses: list | None = None,
) -> tuple[list[StepRecord], Session]:
    """Stream ``samples`` chunk by chunk; one StepRecord per chunk. Raw responses are
    appended to ``responses`` when a list is given."""
    merger = HintMerger(merger_options or MergerOptions(ttl_s=options.chunk_s + options.lookback_s))
    latencies: dict[int, float] = {}

    def on_response(resp, sent_at):
        latencies[resp.sequence] = (time.monotonic() - sent_at) * 1e3
        merger.add(resp)
        if responses is not None:
            responses.append(resp)

    session = await Session(channel, options, on_response).start()
    hop = int(round(options.chunk_s * sample_rate))
    builder = PromptBuilder()
    records = []
    t0 = time.monotonic()
    n_chunks = max(1, -(-len(samples) // hop))
    for i in range(n_chunks):
        chunk = samples[i * hop : (i + 1) * hop]
        if realtime:  # the chunk exists only once its last sample has been spoken
            delay = t0 + (i + 1) * options.chunk_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        seq = await session.send(chunk, last=i == n_chunks - 1)
        end_s = min(len(samples), (i + 1) * hop) / sample_rate
        res: StepResult = await merger.wait_step(seq, budget_ms, end_s)
        if not realtime and not res.on_time:
            # As fast as possible, but never faster than the server answers: a file played
            # faster than real time would otherwise pile chunks up in the server's queue.
            # The late hints still fold into the next step, as in real time.
            answered = asyncio.ensure_future(merger.wait_answered(seq, 60_000))
            ended = asyncio.ensure_future(session.wait_ended())
            await asyncio.wait({answered, ended}, return_when=asyncio.FIRST_COMPLETED)
            answered.cancel()
            ended.cancel()
            if session.error is not None:
                raise session.error
        prompt = builder.build(res.hints)
        rec = StepRecord(
            step=i,
            chunk_end_s=round(end_s, 3),
            hints=[
                {
                    "entry_id": h.entry_id,
                    "term": h.term,
                    "translation": h.translation,
                    "score": round(h.score, 4),
                    "start_s": round(h.start_s, 2),
                    "end_s": round(h.end_s, 2),
                }
                for h in res.hints
            ],
            fresh=[h.entry_id for h in res.fresh],
            waited_ms=round(res.waited_ms, 2),
            on_time=res.on_time,
            latency_ms=round(latencies[seq], 2) if seq in latencies else None,
            prompt=prompt,
            output=hook(prompt, res.hints, i),
        )
        records.append(rec)
        if on_step:
            on_step(rec)
    await session.close()
    # Late answers arrived after their step: fill in their latency for reporting.
    for r in records:
        if r.latency_ms is None and r.step in latencies:
            r.latency_ms = round(latencies[r.step], 2)
    return records, session


def _print_step(rec: StepRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(rec), ensure_ascii=False), flush=True)
        return
    flag = "" if rec.on_time else "  (late: hints fold into the next step)"
    print(
        f"[step {rec.step:3d} | audio to {rec.chunk_end_s:6.2f}s | waited {rec.waited_ms:5.1f} ms]{flag}"
    )
    if rec.hints:
        for h in rec.hints:
            new = "*" if h["entry_id"] in rec.fresh else " "
            print(
                f"   {new} {h['term']!r:32} -> {h['translation']!r:28} score {h['score']:.3f}  @{h['start_s']:.2f}-{h['end_s']:.2f}s"
            )
    else:
        print("     (no hints)")
    if rec.output:
        print(f"   translation: {rec.output}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rasst translate",
        description="Stream a WAV through rasst and show the hints a translator would inject at each step.",
    )
    p.add_argument(
        "wav", help="audio file: WAV (any bit depth), FLAC, OGG, MP3, ...; any rate, any channels"
    )
    p.add_argument(
        "--server", default=os.environ.get("RASST_SERVER", "127.0.0.1:50051"), help="host:port"
    )
    p.add_argument("--glossary", required=True, help="glossary id")
    p.add_argument("--lang", required=True, help="target language, e.g. de")
    p.add_argument("--chunk", type=float, default=CHUNK_S, help="chunk length in seconds")
    p.add_argument("--lookback", type=float, default=LOOKBACK_S)
    p.add_argument(
        "--budget-ms", type=float, default=80.0, help="how long each step may wait for its hints"
    )
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--realtime", action="store_true", help="pace chunks at the speed of speech")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt built at each step")
    p.add_argument(
        "--hook",
        default=None,
        help="module:function called as hook(prompt, hints, step) -> translation",
    )
    p.add_argument("--tls-ca", default=None, help="CA certificate (PEM) for a TLS server")
    p.add_argument("--json", action="store_true", help="one JSON object per step")
    args = p.parse_args(argv)
    if not 0.1 <= args.chunk <= 5:
        p.error(f"--chunk must be in [0.1, 5] seconds, got {args.chunk}")
    if args.budget_ms < 0:
        p.error(f"--budget-ms must be >= 0, got {args.budget_ms}")
    try:
        samples, rate = read_audio(args.wav)
        hook = load_hook(args.hook)
    except (AudioFileError, OSError, ValueError, ImportError, AttributeError) as e:
        print(f"rasst translate: {e}", file=sys.stderr)
        return 1
    opts = SessionOptions(
        glossary_id=args.glossary,
        target_lang=args.lang,
        top_k=args.top_k,
        score_threshold=args.threshold,
        chunk_s=args.chunk,
        lookback_s=args.lookback,
        sample_rate=rate,
        session_id="translate",
    )

    def on_step(rec: StepRecord) -> None:
        _print_step(rec, args.json)
        if args.show_prompt and not args.json:
            print("   prompt: " + rec.prompt.replace("\n", "\n           "))

    async def go():
        channel = make_channel(args.server, args.tls_ca)
        try:
            records, _ = await run_translator(
                channel, samples, rate, opts, args.budget_ms, args.realtime, hook, on_step=on_step
            )
        finally:
            await channel.close()
        return records

    try:
        records = asyncio.run(go())
    except RasstError as e:
        print(f"rasst translate: {e}", file=sys.stderr)
        for f, d in e.field_violations:
            print(f"  {f}: {d}", file=sys.stderr)
        return 1
    if not args.json:
        on_time = sum(r.on_time for r in records) / max(1, len(records))
        lat = sorted(r.latency_ms for r in records if r.latency_ms is not None)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        print(
            f"{len(records)} steps, {on_time:.0%} of hints inside the {args.budget_ms:.0f} ms budget, latency p50 {p50:.1f} ms"
        )
    return 0
