"""Hint merging under a latency budget: the translator never waits on retrieval.

Responses are added as they arrive (from the session's callback). At each decoding
step the translator calls :meth:`HintMerger.step` (or ``await wait_step``): it gets
the hints known *now*, deduplicated by entry (best score, latest time), above the
threshold, without those whose evidence is older than the TTL, at most ``max_hints``.
A response that arrives after the budget is simply there at the next step: never
lost, never blocking.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class Hint:
    entry_id: str
    term: str
    translation: str
    score: float  # best score seen for this entry while it was live
    start_s: float  # stream time of the latest evidence
    end_s: float
    first_seq: int  # chunk whose response first produced it
    last_seq: int  # latest chunk that produced it
    fresh: bool = False  # new evidence since the previous step


@dataclass
class MergerOptions:
    # Hints whose latest evidence ended more than this before the newest audio expire (stream s).
    ttl_s: float = 3.0
    # Most hints returned per step (best scores first).
    max_hints: int = 10
    # Drop hits below this score (on top of the server's own threshold).
    min_score: float = -1.0


@dataclass
class StepResult:
    hints: list[Hint]  # live hints, best first
    fresh: list[Hint]  # subset with evidence that arrived since the previous step
    waited_ms: float  # time the caller spent waiting inside the budget
    on_time: bool  # the response for the awaited chunk arrived inside the budget
    answered_seq: int  # highest chunk sequence answered so far (-1: none)


class HintMerger:
    def __init__(self, options: MergerOptions | None = None):
        self.o = options or MergerOptions()
        self._live: dict[str, Hint] = {}
        self._fresh: set[str] = set()
        self._answered: set[int] = set()
        self._max_seq = -1
        self._stream_now = 0.0
        self._cond: asyncio.Condition | None = None
        self.arrivals: dict[int, float] = {}  # seq -> monotonic arrival time

    def add(self, response) -> None:
        """Fold one StreamRetrieveResponse in (any order, any time)."""
        seq = int(response.sequence)
        self._answered.add(seq)
        self.arrivals[seq] = time.monotonic()
        self._max_seq = max(self._max_seq, seq)
        self._stream_now = max(self._stream_now, response.chunk_end_s)
        for h in response.hits:
            if h.score < self.o.min_score:
                continue
            cur = self._live.get(h.entry_id)
            if cur is None:
                self._live[h.entry_id] = Hint(
                    h.entry_id, h.term, h.translation, h.score, h.start_s, h.end_s, seq, seq
                )
            else:
                cur.score = max(cur.score, h.score)
                if h.end_s >= cur.end_s:
                    cur.start_s, cur.end_s = h.start_s, h.end_s
                cur.last_seq = max(cur.last_seq, seq)
            self._fresh.add(h.entry_id)
        if self._cond is not None:
            cond = self._cond

            async def _notify():
                async with cond:
                    cond.notify_all()

            try:
                asyncio.get_running_loop().create_task(_notify())
            except RuntimeError:
                pass

    def answered(self, seq: int) -> bool:
        return seq in self._answered

    def step(
        self, stream_now_s: float | None = None, waited_ms: float = 0.0, on_time: bool = True
    ) -> StepResult:
        """The hints to inject now. ``stream_now_s``: end of the newest audio the translator has."""
        now = self._stream_now if stream_now_s is None else max(stream_now_s, self._stream_now)
        for eid in [e for e, h in self._live.items() if now - h.end_s > self.o.ttl_s]:
            del self._live[eid]
            self._fresh.discard(eid)
        live = sorted(self._live.values(), key=lambda h: -h.score)[: self.o.max_hints]
        for h in live:
            h.fresh = h.entry_id in self._fresh
        self._fresh.clear()
        return StepResult(live, [h for h in live if h.fresh], waited_ms, on_time, self._max_seq)

    async def wait_answered(self, seq: int, timeout_ms: float) -> bool:
        """Wait at most ``timeout_ms`` for chunk ``seq``'s response; True when it is here."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        if seq not in self._answered and timeout_ms > 0:
            try:
                async with self._cond:
                    await asyncio.wait_for(
                        self._cond.wait_for(lambda: seq in self._answered), timeout_ms / 1e3
                    )
            except TimeoutError:
                pass
        return seq in self._answered

    async def wait_step(
        self, seq: int, budget_ms: float, stream_now_s: float | None = None
    ) -> StepResult:
        """Wait at most ``budget_ms`` for chunk ``seq``'s response, then :meth:`step`."""
        t0 = time.monotonic()
        on_time = await self.wait_answered(seq, budget_ms)
        return self.step(stream_now_s, (time.monotonic() - t0) * 1e3, on_time)


@dataclass
class PromptBuilder:
    """Turns hints into the glossary block a translator's prompt carries."""

    header: str = "Glossary (use these translations if the terms occur):"

    def build(self, hints: list[Hint], source_text: str = "") -> str:
        lines = [self.header] + [
            f"- {h.term} => {h.translation or '(no translation)'}" for h in hints
        ]
        if source_text:
            lines += ["", f"Source: {source_text}"]
        return "\n".join(lines) if hints else "(no glossary hints)"
