"""The retrieval engine: model + served glossaries as one immutable snapshot, and the
batching worker that owns the encoder.

Every request captures the snapshot current at its arrival and is answered from it,
so a glossary change or a model reload (a new snapshot swapped in by one reference
assignment) never mixes versions inside a request and never fails one.

Worker threads run the speech encoder and the searches: a worker takes requests from
all sessions, batches them (max windows, max wait), drops those whose deadline has
passed, and hands results back to the asyncio loop. The loop never blocks on torch
or faiss. A GPU is best fed by one worker with large batches; on a CPU, one worker per
core (each with its own CTranslate2 replica) encodes chunks that arrive together side
by side instead of one after the other.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from rasst.pcm import CHUNK_S, LOOKBACK_S

from .audio import SAMPLE_RATE
from .config import EngineConfig, resolve_device, resolve_workers, validate_config
from .embeddings import EmbeddingStore, Rows
from .glossary import Entry, Glossary, GlossaryStore
from .index import (
    EXACT_MAX_DEFAULT,
    GPU_WARM_QUERIES,
    TermIndex,
    int8_matmul_available,
    pow2_bucket,
)
from .model import (
    DualEncoder,
    build_frontend,
    checkpoint_id,
    embed_windows,
    int8_speech_head,
    window_hop,
)
from .scoring import score_entries

logger = logging.getLogger(__name__)
# The clip lengths of a default session: its first chunk, then with one chunk and then
# the whole look-back before it. Each new length is a new input shape, whose first run on
# a GPU selects kernels (~100 ms on an H200): no live chunk should pay for that.
WARM_UP_CLIPS_S = (CHUNK_S, CHUNK_S + CHUNK_S, CHUNK_S + LOOKBACK_S)  # 0.96, 1.92, 2.88 s
# The largest GPU batch (clips of one length) warmed up before serving.
WARM_UP_MAX_BATCH = 256


@dataclass(frozen=True)
class ServedGlossary:
    glossary: Glossary
    index: TermIndex
    row_form: tuple[str, ...]  # spoken form (term or alias) of each index row
    # Each row's phonemes as the phone head's labels (empty when the model has none).
    row_phones: tuple[np.ndarray, ...] = ()
    # What embedding made of each row, kept to be saved and reused by the next version.
    rows: Rows | None = None


@dataclass(frozen=True)
class Snapshot:
    model: DualEncoder | None
    frontend: object | None
    model_id: str
    glossaries: dict[str, ServedGlossary]
    # The speech head on the front-end's device (the model's own head on a CPU), so
    # frames computed on a GPU are pooled and embedded there without a round trip.
    head: torch.nn.Module | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None


@dataclass
class HitOut:
    entry: Entry
    form: str
    score: float
    start_s: float
    end_s: float


@dataclass
class Result:
    hits: list[HitOut]
    glossary_version: int
    queue_ms: float = 0.0
    encode_ms: float = 0.0
    search_ms: float = 0.0
    batch_windows: int = 0
    dropped: bool = False
    model_id: str = ""  # the model that answered


class EngineNotReady(RuntimeError):
    def __init__(
        self,
        message: str = "no model is loaded; load one with the admin ReloadModel call or start "
        "with --checkpoint",
    ):
        super().__init__(message)


class DeadlineExpired(TimeoutError):
    """A change whose caller's deadline passed before its commit point: nothing changed."""


class UnknownGlossary(LookupError):
    pass


class SwitchFailed(RuntimeError):
    """A change that every replica of a cluster must load was called off (a replica could
    not load it, or time ran out): nothing changed."""


@dataclass
class _Job:
    clip: np.ndarray
    snapshot: Snapshot
    served: ServedGlossary
    top_k: int
    threshold: float
    deadline: float  # time.monotonic()
    clip_start_s: float
    new_from_s: float  # clip-relative time of the new audio; windows ending before it are skipped
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.monotonic)


class _Slot:
    """One worker's hand-off point in ``_Dispatch``."""

    def __init__(self):
        self.event = threading.Event()
        self.item = None


class _Dispatch:
    """Work for the encoder workers. A worker that waits gets the next item handed to it,
    the one that went idle last first: with light load one worker does all the work, on
    warm caches, instead of the workers taking turns (a plain queue wakes the longest
    waiter). With every worker busy, items wait in order in the backlog."""

    def __init__(self):
        self._lock = threading.Lock()
        self._backlog: deque = deque()
        self._idle: list[_Slot] = []  # a stack: the last to go idle is served first

    def put(self, item) -> None:
        with self._lock:
            if self._idle:
                slot = self._idle.pop()
                slot.item = item
                slot.event.set()
            else:
                self._backlog.append(item)

    def get(self, slot: _Slot, timeout: float | None = None):
        """The next item; raises ``queue.Empty`` after ``timeout`` seconds without one."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            slot.event.clear()
            slot.item = None
            self._idle.append(slot)
        if not slot.event.wait(timeout):
            with self._lock:
                if slot in self._idle:  # still waiting: nothing came
                    self._idle.remove(slot)
                    raise queue.Empty
            slot.event.wait()  # put() handed an item over just as the wait timed out
        return slot.item

    def get_nowait(self):
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
        raise queue.Empty

    def qsize(self) -> int:
        return len(self._backlog)

    def idle(self) -> int:
        return len(self._idle)


class _Call:
    """A function for every worker's thread (``Engine.on_workers``): queued once per
    worker; a worker that has run its copy waits at the barrier until all have, so no
    worker runs two copies."""

    def __init__(self, fn, workers: int):
        self.fn = fn
        self.barrier = threading.Barrier(workers)
        self.left = workers
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.results: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            result = self.fn()
            with self.lock:
                self.results.append(result)
        except BaseException as e:  # handed to the caller, never kills the worker
            self.error = e
        try:
            self.barrier.wait(timeout=600)
        except threading.BrokenBarrierError:
            pass
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()


def embed_rows(
    model: DualEncoder,
    forms: list[str],
    model_key: str = "",
    reuse: Rows | None = None,
    progress: bool = False,
) -> tuple[Rows, np.ndarray]:
    """The index rows of ``forms`` (``DualEncoder.glossary_rows``: each row's form, unit
    string, vector and prior) and the number of the form each row spells. Forms that
    ``reuse`` (rows made by the same model) holds keep its unit strings, and its vectors
    are taken as they are: only the other strings are embedded."""
    # A form that ``reuse`` holds keeps its rows' unit strings: no G2P again on a patch.
    spelled: dict[str, list[str]] = {}
    if reuse is not None:
        for f, u in zip(reuse.forms, reuse.units, strict=True):
            spelled.setdefault(f, []).append(u)
    fresh = [f for f in dict.fromkeys(forms) if f not in spelled]
    if fresh:
        fresh_units, fresh_row_form = model.glossary_rows(fresh)
        for u, i in zip(fresh_units, fresh_row_form, strict=True):
            spelled.setdefault(fresh[i], []).append(u)
    units, row_form = [], []
    for i, f in enumerate(forms):
        units += spelled[f]
        row_form += [i] * len(spelled[f])
    row_form = np.asarray(row_form, np.int64)
    known = reuse.by_units() if reuse is not None else {}
    new = [u for u in dict.fromkeys(units) if u not in known]
    new_vecs = (
        model.encode_units(new, progress=progress)
        if new
        else np.zeros((0, model.config.embed_dim), np.float32)
    )
    new_prior = model.row_penalty(new_vecs, new) if new else None
    at_new = {u: i for i, u in enumerate(new)}
    vecs = np.zeros((len(units), model.config.embed_dim), np.float32)
    prior = []
    has_prior = model.penalises_rows
    for r, u in enumerate(units):
        src, i = (new_vecs, at_new[u]) if u in at_new else (reuse.vectors, known[u])
        vecs[r] = src[i]
        if has_prior:
            prior.append(new_prior[i] if u in at_new else reuse.prior[i])
    rows = Rows(
        model_key,
        tuple(forms[f] for f in row_form),
        tuple(units),
        vecs,
        np.asarray(prior, np.float32) if has_prior else None,
    )
    return rows, row_form


def embed_glossary(
    model: DualEncoder,
    g: Glossary,
    exact_max: int = EXACT_MAX_DEFAULT,
    progress: bool = False,
    precision: str = "float32",
    model_key: str = "",
    reuse: Rows | None = None,
) -> ServedGlossary:
    """Embed every spoken form of every entry (reusing ``reuse``'s rows) and index them."""
    forms, form_entry = [], []
    for i, e in enumerate(g.entries):
        for f in e.forms():
            forms.append(f)
            form_entry.append(i)
    rows, row_form = embed_rows(model, forms, model_key, reuse, progress)
    phones = tuple(model.phone_labels(list(rows.units))) if model.phone is not None else ()
    index = TermIndex(
        rows.vectors,
        np.asarray(form_entry, np.int64)[row_form],
        exact_max,
        precision=precision,
        row_prior=rows.prior,
    )
    return ServedGlossary(g, index, rows.forms, phones, rows)


class Engine:
    """The model, the served glossaries and the encoder workers of one process.

    With a ``store`` the engine owns the glossaries (load, commit, delete persist there);
    without one (a cluster replica) it only builds snapshots for the versions it is given
    (:meth:`build_snapshot`) and answers from whichever snapshot a request names, keeping
    embedded rows under ``embeddings_dir``.
    """

    def __init__(
        self,
        store: GlossaryStore | None,
        cfg: EngineConfig | None = None,
        embeddings_dir: str | Path | None = None,
    ):
        # Validated, with "auto" resolved: the device the front-end runs on and the number
        # of workers, as the engine runs them.
        cfg = validate_config(cfg or EngineConfig())
        device = resolve_device(cfg.device)
        self.cfg = replace(
            cfg, device=device, workers=resolve_workers(cfg.workers, device, cfg.threads)
        )
        self.store = store
        # Every version's embedded rows, beside the glossaries (``{data_dir}/embeddings``).
        if embeddings_dir is None:
            if store is None:
                raise ValueError("an engine without a store needs an embeddings_dir")
            embeddings_dir = store.dir.parent / "embeddings"
        self.embeddings = EmbeddingStore(embeddings_dir)
        self._snap = Snapshot(None, None, "", {})
        self._queue = _Dispatch()
        self._running = True
        self._swap_lock = threading.Lock()  # serialises writers; readers just read self._snap
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "dropped": 0, "batches": 0}
        self.observe_batch = None  # optional callback(n_windows) for metrics
        self._threads = [
            threading.Thread(target=self._worker, name=f"rasst-encoder-{i}", daemon=True)
            for i in range(self.cfg.workers)
        ]
        for t in self._threads:
            t.start()

    # -- snapshot
    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def build_snapshot(
        self, checkpoint: str | Path, glossaries: list[Glossary], base: Snapshot | None = None
    ) -> Snapshot:
        """A snapshot of ``checkpoint`` serving ``glossaries``, not swapped in. The model of
        ``base`` is reused when it is the same checkpoint (weights and config: a
        recalibrated one keeps its weights), and so is every glossary ``base`` serves at
        the same version. Blocking (call off the loop)."""
        mid = checkpoint_id(checkpoint)
        if (
            base is not None
            and base.ready
            and base.model_id == mid
            and base.model.config == DualEncoder.load_config(checkpoint)
        ):
            model, frontend, head = base.model, base.frontend, base.head
        else:
            model, frontend, head = self._load(checkpoint)
        served = {}
        for g in glossaries:
            old = base.glossaries.get(g.glossary_id) if base is not None else None
            same = old is not None and old.glossary.version == g.version and model is base.model
            served[g.glossary_id] = old if same else self._embed(model, mid, g)
        return Snapshot(model, frontend, mid, served, head)

    def _load(self, checkpoint: str | Path):
        """The model, its front-end and its speech head, warmed up on every worker."""
        torch.set_num_threads(self.cfg.threads)
        model = DualEncoder.from_pretrained(checkpoint)
        frontend = build_frontend(
            model.config.frontend, self.cfg.device, self.cfg.threads, replicas=self.cfg.workers
        )
        head = _head_on(model, frontend, self.cfg.precision)
        # On each worker's own thread: PyTorch keeps cuBLAS / cuDNN handles per thread, and
        # a warm-up elsewhere left the worker's first live chunks ~100 ms slow on a GPU.
        self.on_workers(lambda: _warm_up(model, frontend, head, self.cfg.max_batch_windows))
        return model, frontend, head

    def load_model(self, checkpoint: str | Path) -> tuple[str, int]:
        """Load a checkpoint, re-embed every stored glossary, swap. Blocking (call off the loop)."""
        # Rows saved by this model (the same weights) are loaded, not embedded again.
        snap = self.build_snapshot(checkpoint, self.store.list())
        served = dict(snap.glossaries)
        with self._swap_lock:
            # Glossaries changed while we embedded are re-embedded under the lock.
            for g in self.store.list():
                if (
                    g.glossary_id not in served
                    or served[g.glossary_id].glossary.version != g.version
                ):
                    served[g.glossary_id] = self._embed(snap.model, snap.model_id, g)
            self._snap = replace(snap, glossaries=served)
        _settle_heap(collect=True)
        logger.info("model %s serving %d glossaries", snap.model_id, len(served))
        return snap.model_id, len(served)

    def _embed(self, model: DualEncoder, model_id: str, g: Glossary) -> ServedGlossary:
        """Embed a version, reusing the rows its model saved for the glossary's last one,
        and save the new rows."""
        # The weights and every setting that shapes a row (its penalties): a copied
        # checkpoint matches, a recalibrated one does not.
        key = hashlib.sha256(
            (
                model_id.rsplit("@", 1)[-1] + json.dumps(model.config.to_dict(), sort_keys=True)
            ).encode()
        ).hexdigest()[:16]
        reuse = self.embeddings.load(g.glossary_id, key)
        served = embed_glossary(
            model, g, self.cfg.exact_max, precision=self.cfg.precision, model_key=key, reuse=reuse
        )
        if reuse is None or (served.rows.forms, served.rows.units) != (reuse.forms, reuse.units):
            self.embeddings.save(g.glossary_id, served.rows)
        return served

    def commit_glossary(self, g: Glossary, deadline: float | None = None) -> None:
        """Embed (if a model is loaded) and persist a new version, then swap it in.

        ``deadline`` (``time.monotonic``): past it, before the version is persisted,
        raise :class:`DeadlineExpired` and change nothing.
        """
        snap = self._snap
        served = self._embed(snap.model, snap.model_id, g) if snap.model is not None else None
        with self._swap_lock:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExpired(f"glossary {g.glossary_id} version {g.version}")
            self.store.commit(g)
            if self._snap.model is not snap.model and self._snap.model is not None:
                # The model changed meanwhile.
                served = self._embed(self._snap.model, self._snap.model_id, g)
            gl = dict(self._snap.glossaries)
            if served is not None:
                gl[g.glossary_id] = served
            self._snap = replace(self._snap, glossaries=gl)
        _settle_heap()

    def delete_glossary(self, gid: str) -> bool:
        with self._swap_lock:
            ok = self.store.delete(gid)
            self.embeddings.delete(gid)
            gl = dict(self._snap.glossaries)
            gl.pop(gid, None)
            self._snap = replace(self._snap, glossaries=gl)
        return ok

    # -- requests
    def submit(
        self,
        clip: np.ndarray,
        glossary_id: str,
        top_k: int,
        threshold: float | None,
        deadline_s: float,
        clip_start_s: float = 0.0,
        new_from_s: float = 0.0,
        snapshot: Snapshot | None = None,
    ) -> asyncio.Future:
        """Queue one clip; the future resolves to a Result. Call from the event loop.

        ``new_from_s``: where the audio not seen before starts inside the clip. Windows
        that end before it lie wholly in the look-back and were searched with the previous
        chunk, so they are skipped (encode once, search once). ``snapshot``: answer from
        this one instead of the current one.
        """
        snap = snapshot or self._snap
        if not snap.ready:
            raise EngineNotReady()
        served = snap.glossaries.get(glossary_id)
        if served is None:
            raise UnknownGlossary(glossary_id)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        thr = (
            snap.model.config.threshold_for(served.index.ntotal) if threshold is None else threshold
        )
        self._queue.put(
            _Job(
                clip,
                snap,
                served,
                top_k,
                thr,
                time.monotonic() + deadline_s,
                clip_start_s,
                new_from_s,
                fut,
                loop,
            )
        )
        return fut

    def on_workers(self, fn, timeout: float = 600.0) -> list:
        """Run ``fn()`` once on each worker's thread, between batches; return the results."""
        call = _Call(fn, len(self._threads))
        for _ in self._threads:
            self._queue.put(call)
        if not call.done.wait(timeout):
            raise TimeoutError(f"the encoder workers did not run a call within {timeout} s")
        if call.error is not None:
            raise call.error
        return call.results

    def close(self) -> None:
        self._running = False
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)

    # -- worker
    def _worker(self) -> None:
        torch.set_num_threads(self.cfg.threads)
        slot = _Slot()
        while self._running:
            job = self._queue.get(slot)
            if job is None:
                break
            if isinstance(job, _Call):
                job.run()
                continue
            batch = [job]
            windows = _n_windows(job)
            until = time.monotonic() + self.cfg.max_wait_ms / 1e3
            # Gather more only while every other worker is busy: an idle one starts on
            # the next request at once, in parallel, instead of it waiting in this batch.
            while windows < self.cfg.max_batch_windows and self._queue.idle() == 0:
                remaining = until - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(slot, timeout=max(0.0, remaining))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    self._running = False
                    break
                if isinstance(nxt, _Call):
                    self._queue.put(nxt)  # a worker runs its copy between batches
                    break
                batch.append(nxt)
                windows += _n_windows(nxt)
            try:
                self._process(batch)
            except Exception as e:  # never let one bad batch kill the worker
                logger.exception("batch of %d failed", len(batch))
                for j in batch:
                    _resolve(j, exc=e)

    @torch.inference_mode()
    def _process(self, batch: list[_Job]) -> None:
        """Encode, search and rescore one batch. Under inference mode: no autograd
        bookkeeping on any tensor (the phone head alone runs ~0.4 ms faster per clip)."""
        t0 = time.monotonic()
        live = []
        for j in batch:
            if j.future.cancelled():
                continue
            if t0 > j.deadline:
                with self._stats_lock:
                    self.stats["dropped"] += 1
                _resolve(
                    j,
                    Result(
                        [],
                        j.served.glossary.version,
                        queue_ms=(t0 - j.submitted) * 1e3,
                        dropped=True,
                    ),
                )
            else:
                live.append(j)
        if not live:
            return
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["requests"] += len(live)
        # Encode: one front-end call for all clips of one model, then one head forward.
        by_model: dict[int, list[_Job]] = {}
        for j in live:
            by_model.setdefault(id(j.snapshot.model), []).append(j)
        vectors: dict[int, tuple[np.ndarray, np.ndarray, int, torch.Tensor]] = {}
        for jobs in by_model.values():
            snap = jobs[0].snapshot
            model, frontend = snap.model, snap.frontend
            frames = frontend.frame_tensors([j.clip for j in jobs])
            span_list = []
            for j, fr in zip(jobs, frames, strict=True):
                spans = model.windows(len(fr))
                fresh = spans[:, 1] > int(j.new_from_s * frontend.frame_rate)
                span_list.append(spans[fresh] if fresh.any() else spans)
            vec = embed_windows(snap.head, frames, span_list, model.config.pool_segments)
            bounds = np.cumsum([0] + [len(s) for s in span_list])
            for k, j in enumerate(jobs):
                vectors[id(j)] = (
                    vec[bounds[k] : bounds[k + 1]],
                    span_list[k],
                    frontend.frame_rate,
                    frames[k],
                )
        t1 = time.monotonic()
        n_windows = sum(len(v[0]) for v in vectors.values())
        if self.observe_batch:
            self.observe_batch(n_windows)
        # Search: one call per glossary index over all its jobs' windows.
        by_index: dict[int, list[_Job]] = {}
        for j in live:
            by_index.setdefault(id(j.served), []).append(j)
        results: dict[int, list[HitOut]] = {}
        for jobs in by_index.values():
            served = jobs[0].served
            xq = np.concatenate([vectors[id(j)][0] for j in jobs])
            # Workers idle now lend their cores to this search (an exact int8 search
            # splits its rows): under real-time load one chunk is usually alone.
            spare = self._queue.idle() if self.cfg.split_search else 0
            D, I = served.index.search(xq, self.cfg.window_top, threads=1 + spare)
            off = 0
            for j in jobs:
                v, spans, rate, frames = vectors[id(j)]
                n = len(v)
                model = j.snapshot.model
                second = self.cfg.rescore and model.phone is not None
                scored = score_entries(
                    served.index,
                    D[off : off + n],
                    I[off : off + n],
                    j.threshold,
                    j.top_k,
                    row_phones=served.row_phones if second else (),
                    spans=spans,
                    rescore=model.clip_rescorer(frames) if second else None,
                    pool=min(model.config.rescore_top, self.cfg.rescore_candidates),
                    agreement=model.agreement,
                    suppression=model.suppression,
                    row_forms=served.row_form,
                    cohort=model.cohort,
                )
                off += n
                results[id(j)] = [
                    HitOut(
                        served.glossary.entries[h.entry],
                        served.row_form[h.row],
                        h.score,
                        j.clip_start_s + spans[h.window][0] / rate,
                        j.clip_start_s + spans[h.window][1] / rate,
                    )
                    for h in scored
                ]
        t2 = time.monotonic()
        share = 1.0 / len(live)
        for j in live:
            _resolve(
                j,
                Result(
                    results[id(j)],
                    j.served.glossary.version,
                    queue_ms=(t0 - j.submitted) * 1e3,
                    encode_ms=(t1 - t0) * 1e3 * share,
                    search_ms=(t2 - t1) * 1e3 * share,
                    batch_windows=n_windows,
                ),
            )


def _settle_heap(collect: bool = False) -> None:
    """Move every object alive now (model, glossaries, indexes) out of the cyclic garbage
    collector's view. A full collection of a serving process with a 10K glossary walks
    ~240K objects: ~100 ms with the GIL held, which stalls every session at once; after
    this it walks only what was allocated since.

    Frozen objects that later become cyclic garbage are not collected until the next
    ``collect``: after a model load (start-up, or a reload, which costs seconds anyway),
    everything is unfrozen and collected once (~100 ms) before freezing again; a glossary
    change only freezes."""
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def _head_on(model: DualEncoder, frontend, precision: str = "float32") -> torch.nn.Module:
    """The speech head where the front-end's frames are: the model's own on a CPU (an
    int8 copy with ``precision="int8"``), a copy on a GPU (the model itself stays on the
    CPU for the text side)."""
    device = torch.device(getattr(frontend, "device", "cpu"))
    if device.type == "cpu":
        if precision == "int8" and int8_matmul_available():
            return int8_speech_head(model.speech)
        return model.speech
    return copy.deepcopy(model.speech).to(device).eval()


def _warm_up(
    model: DualEncoder, frontend, head: torch.nn.Module, max_batch_windows: int = 2048
) -> None:
    """A default session's clips through the front-end and the head before the model
    serves, alone and in batches: the first CTranslate2 call packs its weights (~0.5 s
    here), and on a GPU the first call of each input shape loads and selects its kernels
    (50-100 ms). A GPU front-end runs batches padded to powers of two, so every batch
    size a full batch can hold is warmed, for each clip length."""
    t0 = time.monotonic()
    shapes = _warm_up_shapes(model, frontend, max_batch_windows)
    for batch, seconds in shapes:
        clips = [np.zeros(int(seconds * SAMPLE_RATE), np.float32)] * batch
        frames = frontend.frame_tensors(clips)
        spans = [model.windows(len(frames[0]))] * batch
        embed_windows(head, frames, spans, model.config.pool_segments)
    if model.phone is not None:  # the second stage's compiled alignment loads on first use
        frames = frontend.frame_tensors([np.zeros(SAMPLE_RATE, np.float32)])
        model.rescore_clip(frames[0], [np.ones(2, np.int64)], np.array([[0, 10]]), np.zeros(1))
    if _on_gpu(frontend):
        # The head's row counts, padded to powers of two: windows from one to a full batch.
        frames = frontend.frame_tensors([np.zeros(SAMPLE_RATE, np.float32)])
        for k in range(GPU_WARM_QUERIES.bit_length()):
            spans = np.tile([[0, len(frames[0])]], (1 << k, 1))
            embed_windows(head, frames, [spans], model.config.pool_segments)
    logger.info(
        "model warmed up in %.0f ms (%d shapes)", (time.monotonic() - t0) * 1e3, len(shapes)
    )


def _on_gpu(frontend) -> bool:
    return str(getattr(frontend, "device", "cpu")).startswith("cuda")


def _warm_up_shapes(
    model: DualEncoder, frontend, max_batch_windows: int
) -> list[tuple[int, float]]:
    """(clips, seconds) pairs to warm up with."""
    if not _on_gpu(frontend):
        return [(1, s) for s in WARM_UP_CLIPS_S] + [(b, WARM_UP_CLIPS_S[-1]) for b in (2, 8)]
    shapes = []
    for s in WARM_UP_CLIPS_S:
        # A batch takes clips while it holds fewer than max_batch_windows (estimated).
        per_clip = _clip_windows(int(s * SAMPLE_RATE), model.config)
        most = min(WARM_UP_MAX_BATCH, pow2_bucket(-(-max_batch_windows // per_clip)))
        shapes += [(1 << k, s) for k in range(most.bit_length())]
    return shapes


def _n_windows(j: _Job) -> int:
    return _clip_windows(len(j.clip), j.snapshot.model.config)


def _clip_windows(n_samples: int, c) -> int:
    # Rough count before encoding, for batch sizing only.
    frames = max(1, n_samples // 320)
    return max(
        1,
        sum(
            max(1, (frames - w) // window_hop(w, c.window_stride, c.window_hop_fraction) + 1)
            for w in c.window_frames
        ),
    )


def _resolve(j: _Job, result: Result | None = None, exc: BaseException | None = None) -> None:
    if result is not None:
        result.model_id = j.snapshot.model_id

    def _set():
        if j.future.done():
            return
        if exc is not None:
            j.future.set_exception(exc)
        else:
            j.future.set_result(result)

    try:
        j.loop.call_soon_threadsafe(_set)
    except RuntimeError:  # loop closed: the caller is gone
        pass
